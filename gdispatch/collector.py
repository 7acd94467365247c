"""When CPython's cyclic garbage collector runs in a proxy process: `CollectorPolicy`.

The proxy's objects are freed by reference counting: finished transactions break their
cycles (tests/unit/test_proxy_memory.py shows a call leaves nothing for the collector).
What the collector does under load is scan, again and again, the objects of calls that
are alive anyway: each transaction lingers `wt_timer` (5 s) after its final response.
CPython's automatic collection also misjudges this steady state: its young generation is
counted as allocations minus deallocations of any age, so at a constant call rate the
count hardly grows while the young generation holds every call of the last seconds, and
the pass that finally comes scans hundreds of thousands of objects at once (measured: 195
ms at 3,000 calls/s, long enough for the overload guard to see a backlog, and ~10 us of
CPU per call in total).

So the automatic collection is off, and a full collection runs when the tracked objects
have grown by as many as were live after the last pass, and at least by `floor`. A call
leaves ~17 tracked objects for its linger (transactions, their timers, where to reply),
so a worker at 4,000 calls/s holds ~340,000: the floor, 500,000, is above what a ramp-up
to full load adds, because a pass costs ~0.5-1 us per live object (a 150 ms pause at
2,000 calls/s). At a steady rate nothing grows and nothing is scanned; cyclic garbage,
if some path makes it, is still collected, with memory held to twice the live set.
Measured with CPython's automatic collection at 3,000 calls/s instead: 12 passes in 15 s,
the longest 133 ms. What was loaded at start is frozen out of reach first.

Sans-IO in the sense of this project: the `gc` module and the clock are injected, and
the caller (the timer greenlet) decides how often to ask.
"""

from __future__ import annotations

import gc as _gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("gdispatch.collector")

FLOOR = 500_000  # objects of growth below which no pass runs
GROWTH = 1.0  # a pass when the tracked objects grew by this share of the last live count


class CollectorPolicy:
    """Runs full collections on growth; `maybe_collect()` is cheap enough to call on
    every timer tick."""

    def __init__(self, gc=_gc, *, floor: int = FLOOR, growth: float = GROWTH,
                 clock: Callable[[], float] = time.perf_counter):
        self.gc = gc
        self.floor = floor
        self.growth = growth
        self.clock = clock
        self.limit = floor  # growth (young generation count) that triggers a pass
        self.passes = 0
        self.found = 0  # unreachable objects the passes found
        self.longest = 0.0  # seconds

    def start(self) -> None:
        """Collect and freeze what was loaded at start, then turn automatic passes off."""
        gc = self.gc
        gc.collect()
        gc.freeze()
        gc.disable()

    def maybe_collect(self) -> bool:
        """Run a full pass if the tracked objects grew past the limit; True if it ran."""
        gc = self.gc
        # With automatic collection off, the young count keeps counting allocations minus
        # deallocations of tracked objects: the growth since the last pass.
        if gc.get_count()[0] <= self.limit:
            return False
        started = self.clock()
        found = gc.collect()
        took = self.clock() - started
        live = len(gc.get_objects(2))  # every survivor is in the oldest generation now
        self.limit = max(self.floor, int(live * self.growth))
        self.passes += 1
        self.found += found
        self.longest = max(self.longest, took)
        # Unreachable objects mean some path makes reference cycles: worth knowing.
        log.log(logging.INFO if found else logging.DEBUG, "garbage collection: %.1f ms, %d unreachable, %d live",
                took * 1e3, found, live)
        return True
