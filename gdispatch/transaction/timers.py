"""Timer values and a sans-IO timer scheduler for the transaction layer.

What lives here:

- `TimerConfig`: T1, T2, T4 and the timers RFC 3261 §17 (table 4) and RFC 6026 derive from
  them.
- `Scheduler`: callbacks keyed by deadline, in a list per fixed delay and a min-heap for
  the rest. It never sleeps and never reads a real clock on its own: the caller injects
  a clock, and whoever owns the event loop (the transport layer, or a test) calls
  `run_due()` when `next_deadline()` has passed. No sockets, no gevent.
- `FakeClock`: a clock that moves only when told to, for this layer's tests and for the
  tests of every layer that drives transactions.

What does not live here: what a timer *does*. The state machines in `client.py` and
`server.py` decide that.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FakeClock", "Scheduler", "TimerConfig", "TimerHandle"]

logger = logging.getLogger("gdispatch.transaction")

# Timer D's floor on unreliable transports (RFC 3261 §17.1.1.2: "at least 32 seconds").
_TIMER_D_FLOOR = 32.0

# How the owner of the event loop wakes for the timers (`Scheduler.sleep_time`): at most
# every RESOLUTION, so a timer of RESOLUTION or more runs up to that late (Kamailio's
# timers tick 16 times a second), and at least every IDLE_TICK, so a timer started while
# the owner sleeps is seen within IDLE_TICK. Under load a deadline falls due every few
# hundred microseconds; waking for each would wake the whole process for each.
RESOLUTION = 0.01  # seconds
IDLE_TICK = 0.02  # seconds

# Compaction of lazily cancelled entries is considered every this many cancels: rebuilding
# a tiny heap costs more than carrying a few dead entries until they are popped.
_COMPACT_MIN_CANCELLED = 32


@dataclass(frozen=True)
class TimerConfig:
    """RFC 3261 §17 timer base values, in seconds, and the timers derived from them.

    The derived timers are the values for *unreliable* transports. Timers D, I, J and K
    are zero on reliable transports (RFC 3261 table 4); the transactions apply that
    rule, since only they know their transport. Timers A, E and G start at T1.
    """

    t1: float = 0.5  # RTT estimate
    t2: float = 4.0  # cap on the retransmission interval of non-INVITE requests and INVITE responses
    t4: float = 5.0  # maximum time a message stays in the network
    # A cap on how long a transaction that has its final response lingers to absorb
    # retransmissions (Timers D, J, L and M); None keeps RFC 3261's values. A proxy
    # carrying thousands of calls a second holds every finished transaction that long,
    # so operators cap it, as Kamailio's tm does with its wait timer (wt_timer, 5 s).
    linger: float | None = None

    def __post_init__(self) -> None:
        if not self.t1 > 0:
            raise ValueError(f"T1 must be positive, not {self.t1!r}")
        if not self.t2 >= self.t1:
            raise ValueError(f"T2 ({self.t2!r}) must not be below T1 ({self.t1!r})")
        if not self.t4 >= 0:
            raise ValueError(f"T4 must not be negative, not {self.t4!r}")
        if self.linger is not None and not self.linger > 0:
            raise ValueError(f"the linger cap must be positive, not {self.linger!r}")

    def _lingering(self, rfc_value: float) -> float:
        return rfc_value if self.linger is None else min(rfc_value, self.linger)

    @property
    def delays(self) -> tuple[float, ...]:
        """Every delay a transaction schedules a timer with on an unreliable transport:
        T1 doubled up to T2 (Timers A, E, G), T2, and the timers derived above. The
        doubling also stops at 64*T1, where Timers B, F and H end every retransmission
        (so a T2 of inf, or a tiny T1, gives at most six doublings, not a thousand)."""
        intervals = []
        interval = self.t1
        while interval < self.t2 and interval < self.timer_b:
            intervals.append(interval)
            interval *= 2
        derived = (self.t2, self.timer_b, self.timer_d, self.timer_f, self.timer_h, self.timer_i,
                   self.timer_j, self.timer_k, self.timer_l, self.timer_m)
        return tuple(dict.fromkeys((*intervals, *derived)))

    @property
    def timer_b(self) -> float:
        """INVITE client: give up waiting for any response (RFC 3261 §17.1.1.2)."""
        return 64 * self.t1

    @property
    def timer_d(self) -> float:
        """INVITE client: absorb retransmitted 300-699 finals (RFC 3261 §17.1.1.2).

        At least 32 s, and no less than the 64*T1 the server keeps retransmitting (its
        Timer H) when T1 is raised above its default.
        """
        return self._lingering(max(_TIMER_D_FLOOR, 64 * self.t1))

    @property
    def timer_f(self) -> float:
        """Non-INVITE client: give up waiting for a final response (RFC 3261 §17.1.2.2)."""
        return 64 * self.t1

    @property
    def timer_h(self) -> float:
        """INVITE server: give up waiting for the ACK (RFC 3261 §17.2.1)."""
        return 64 * self.t1

    @property
    def timer_i(self) -> float:
        """INVITE server: absorb ACK retransmissions (RFC 3261 §17.2.1)."""
        return self.t4

    @property
    def timer_j(self) -> float:
        """Non-INVITE server: absorb request retransmissions (RFC 3261 §17.2.2)."""
        return self._lingering(64 * self.t1)

    @property
    def timer_k(self) -> float:
        """Non-INVITE client: absorb response retransmissions (RFC 3261 §17.1.2.2)."""
        return self.t4

    @property
    def timer_l(self) -> float:
        """INVITE server: stay in Accepted (RFC 6026 §7.1), on every transport."""
        return self._lingering(64 * self.t1)

    @property
    def timer_m(self) -> float:
        """INVITE client: stay in Accepted (RFC 6026 §7.2), on every transport."""
        return self._lingering(64 * self.t1)


class TimerHandle(list):
    """One scheduled callback; `cancel()` it to keep it from running.

    The handle is itself the scheduler's entry: `[deadline, sequence, fn, scheduler,
    *args]`. A transaction lingering after its final response holds one timer, and a tuple
    for the heap, a handle and an argument tuple would be three objects where one does
    (every lingering object is work for the cyclic garbage collector). Entries compare by
    the deadline, then the sequence number, which is unique, so `fn` is never compared.
    """

    __slots__ = ()

    @property
    def when(self) -> float:
        return self[0]

    @property
    def active(self) -> bool:
        """True while the timer is waiting to run."""
        return self[3] is not None

    def cancel(self) -> None:
        scheduler = self[3]
        if scheduler is None:
            return  # already ran or cancelled: cancel() is idempotent
        # Drop the references now: a cancelled entry may sit in the heap for a while, and
        # it must not keep a finished transaction alive.
        self[2] = self[3] = None
        del self[4:]
        scheduler._cancelled += 1
        scheduler._cancels += 1
        # Counting the entries walks every list: it is asked once per _COMPACT_MIN_CANCELLED
        # cancels, not at every cancel (a transaction cancels timers with every response).
        if scheduler._cancels % _COMPACT_MIN_CANCELLED == 0 and 2 * scheduler._cancelled > scheduler._held():
            scheduler._compact()

    def __repr__(self) -> str:
        state = "active" if self[3] is not None else "done"
        return f"<TimerHandle when={self[0]!r} {state}>"


class Scheduler:
    """Timers driven from outside: first-in-first-out lists for the fixed delays, a
    min-heap for the rest.

    `call_later()` computes deadlines from the injected clock. `run_due()` runs every
    timer whose deadline has come, in deadline order (ties in the order they were
    scheduled). A callback may schedule further timers; those already due run in the
    same `run_due()` call, so a callback must not reschedule itself with a zero delay
    against a clock that does not move.

    Most timers of a proxy have one of a few delays (RFC 3261 table 4: T1 and its
    doublings, 64*T1, T4, the linger; fr_timer, fr_inv_timer), and timers of one delay
    are due in the order they were scheduled. `fixed_delays()` gives each such delay a
    list of its own, appended to and taken from the front in O(1), as the timer lists
    of SER's and Kamailio's tm keep one list per timer; the heap, O(log n) with
    thousands of transactions lingering, keeps what is left (a ping's retry, a sweep).
    Which container a timer sits in changes nothing of when it runs.

    Cancellation is lazy: a cancelled entry stays where it is and is skipped when taken.
    When more than half the entries are cancelled, every container is rebuilt without
    them, which keeps the memory proportional to the live timers at an amortised O(1)
    per cancel.
    """

    __slots__ = ("_by_delay", "_cancelled", "_cancels", "_clock", "_heap", "_seq")

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._heap: list[TimerHandle] = []
        self._by_delay: dict[float, deque[TimerHandle]] = {}  # a list per fixed delay
        self._seq = 0
        self._cancelled = 0  # cancelled entries not taken out yet
        self._cancels = 0  # cancels ever: when to ask whether to compact

    def now(self) -> float:
        return self._clock()

    def fixed_delays(self, *delays: float) -> None:
        """Delays the owner schedules many timers with: each gets its own list."""
        for delay in delays:
            self._by_delay.setdefault(delay, deque())

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> TimerHandle:
        """Run `fn(*args)` once, `delay` seconds from now."""
        self._seq += 1
        handle = TimerHandle((self._clock() + delay, self._seq, fn, self, *args))
        fifo = self._by_delay.get(delay)
        # A list stays sorted only while the clock does not go back; if it did, the
        # timer goes to the heap.
        if fifo is not None and (not fifo or fifo[-1][0] <= handle[0]):
            fifo.append(handle)
        else:
            heapq.heappush(self._heap, handle)
        return handle

    def _take_earliest(self, now: float) -> TimerHandle | None:
        """Take out the earliest entry due at `now` (by deadline, then sequence), or None."""
        heap = self._heap
        first = heap[0] if heap and heap[0][0] <= now else None
        source = None
        for fifo in self._by_delay.values():
            if fifo:
                head = fifo[0]
                if head[0] <= now and (first is None or head < first):
                    first = head
                    source = fifo
        if first is not None:
            if source is None:
                heapq.heappop(heap)
            else:
                source.popleft()
        return first

    def run_due(self, now: float | None = None) -> int:
        """Run every timer due at `now` (default: the clock); return how many ran.

        An exception from a callback is logged and does not stop the others.
        """
        if now is None:
            now = self._clock()
        take = self._take_earliest
        ran = 0
        while (handle := take(now)) is not None:
            fn = handle[2]
            if fn is None:
                self._cancelled -= 1
                continue
            args = handle[4:]
            handle[2] = handle[3] = None
            del handle[4:]
            ran += 1
            try:
                fn(*args)
            except Exception:
                logger.exception("timer callback %r failed", fn)
        return ran

    def next_deadline(self) -> float | None:
        """The deadline of the earliest live timer, or None when there is none."""
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._cancelled -= 1
        earliest = heap[0][0] if heap else None
        for fifo in self._by_delay.values():
            while fifo and fifo[0][2] is None:
                fifo.popleft()
                self._cancelled -= 1
            if fifo and (earliest is None or fifo[0][0] < earliest):
                earliest = fifo[0][0]
        return earliest

    def sleep_time(self, now: float, *, resolution: float = RESOLUTION, idle: float = IDLE_TICK) -> float:
        """How long whoever runs `run_due()` may sleep from `now`: until the next
        deadline, but no less than `resolution` (the timers due meanwhile run together,
        up to `resolution` late) and no more than `idle` (a timer started during the
        sleep is seen when it ends)."""
        deadline = self.next_deadline()
        if deadline is None:
            return idle
        return min(max(deadline - now, resolution), idle)

    def __len__(self) -> int:
        return self._held() - self._cancelled

    def _held(self) -> int:
        """Entries in the heap and the lists, live and cancelled."""
        return len(self._heap) + sum(map(len, self._by_delay.values()))

    def _compact(self) -> None:
        """Rebuild the heap and the lists without their cancelled entries
        (TimerHandle.cancel calls this when they are more than half of the entries)."""
        heap = self._heap
        heap[:] = [entry for entry in heap if entry[2] is not None]
        heapq.heapify(heap)
        for fifo in self._by_delay.values():
            live = [entry for entry in fifo if entry[2] is not None]
            fifo.clear()
            fifo.extend(live)
        self._cancelled = 0

    def __repr__(self) -> str:
        return f"<Scheduler live={len(self)} next={self.next_deadline()!r}>"


class FakeClock:
    """A clock that moves only when told to.

    `clock()` and `clock.now()` return the current fake time. Given a scheduler,
    `advance()` and `advance_to()` stop at every deadline on the way and run what is due
    there, so each timer runs with the clock reading its own deadline, as it would in
    production, and timers it schedules get exact deadlines too.
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0):
        self._now = float(start)

    def now(self) -> float:
        return self._now

    __call__ = now

    def advance(self, dt: float, scheduler: Scheduler | None = None) -> int:
        """Move forward by `dt` seconds; return how many of `scheduler`'s timers ran."""
        if dt < 0:
            raise ValueError(f"a clock does not go back (dt={dt!r})")
        return self.advance_to(self._now + dt, scheduler)

    def advance_to(self, when: float, scheduler: Scheduler | None = None) -> int:
        """Move forward to time `when`; return how many of `scheduler`'s timers ran."""
        if when < self._now:
            raise ValueError(f"a clock does not go back ({when!r} < {self._now!r})")
        ran = 0
        if scheduler is not None:
            while True:
                deadline = scheduler.next_deadline()
                if deadline is None or deadline > when:
                    break
                self._now = max(self._now, deadline)
                ran += scheduler.run_due(self._now)
        self._now = float(when)
        return ran

    def __repr__(self) -> str:
        return f"<FakeClock {self._now!r}>"
