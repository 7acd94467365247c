"""When gdispatch is past its capacity: which new calls it turns away (sans-IO).

A proxy that takes every call past its capacity collapses: datagrams wait longer and
longer in the socket's receive buffer, callers retransmit (RFC 3261 §17.1.1.2, every
T1 doubling), the retransmissions are more work, and soon no call gets through. Instead,
gdispatch answers new calls with 503 and a Retry-After (RFC 3261 §21.5.4; RFC 6357 §5
on why a 503 is only a blunt tool, but the one every UA understands) while it is
saturated, and keeps serving what it accepted: retransmissions, ACK, CANCEL, BYE and
responses go through as before.

Two bounds, both checked for each new dialog-creating request:

- backlog: how long requests wait in the kernel before they are read. The receivers
  of the listen sockets (and of the relay between workers) ask the kernel for each
  datagram's arrival time (SO_TIMESTAMPNS) and sample it on the first datagram after
  each wait and every 32 datagrams (`UdpListener.queue_delay`). A proxy that keeps up,
  even at 90 % of a core, reads requests within milliseconds; past `max_backlog` the
  callers are about to retransmit (T1 = 500 ms).
- calls in setup: more than `max_calls_in_setup` dispatched requests are waiting for
  their final response (each holds a transaction, a greenlet and its messages).

New calls are refused while the backlog lasts, and `hold` seconds more when set (a
caller told Retry-After then does not meet a proxy that has only just caught up). The
default bound, 0.25 s, is above the pauses a busy process sees (up to ~160 ms measured: a
garbage collection of a large heap, page faults while it grows), which must not turn away
calls the proxy can carry, and below T1 (500 ms), when callers start to retransmit: past
it every retransmission is more work for a proxy already behind.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["LoadGuard"]


class LoadGuard:
    """Decides whether a new call may be taken; time comes from `clock`."""

    __slots__ = ("_clock", "_refuse_until", "hold", "max_backlog", "max_calls_in_setup", "refused", "retry_after")

    def __init__(self, clock: Callable[[], float], *, max_backlog: float = 0.25, max_calls_in_setup: int = 0,
                 hold: float = 0.0, retry_after: int = 2):
        self._clock = clock
        self.max_backlog = max_backlog  # seconds; 0: no backlog bound
        self.max_calls_in_setup = max_calls_in_setup  # 0: no bound
        self.hold = hold
        self.retry_after = retry_after  # seconds, for the Retry-After header
        self._refuse_until = 0.0
        self.refused = 0

    def admit(self, backlog: float, calls_in_setup: int) -> bool:
        """May a new call be taken now, `backlog` seconds behind and with
        `calls_in_setup` calls waiting for their answer? Counts the refusals."""
        now = self._clock()
        if now < self._refuse_until:
            self.refused += 1
            return False
        if self.max_backlog > 0 and backlog > self.max_backlog:
            self._refuse_until = now + self.hold
            self.refused += 1
            return False
        if self.max_calls_in_setup > 0 and calls_in_setup >= self.max_calls_in_setup:
            self.refused += 1
            return False
        return True
