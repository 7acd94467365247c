"""Server transactions: RFC 3261 §17.2 as amended by RFC 6026.

Rule 1: everything that moves a server transaction from one state to another lives in
this file. The transitions driven by responses and ACKs are tables; what happens on
entering a state (starting and stopping timers) is `_enter()`.

Rule 2: this file does no I/O and parses nothing. A transaction receives complete
response bytes from the proxy in `respond()`, hands them to the `send` callable it was
given, and learns of retransmitted requests and ACKs from the proxy, which matched them
(RFC 3261 §17.2.3) before calling in. Time comes from a `Scheduler`.

Theory of operation
===================

The proxy creates one `ServerTransaction` per new request (not for ACK) and keeps it in
its table under `key` until `on_terminated` fires. Everything it sends upstream for that
request goes through `respond()`; the table below decides whether the response is sent
(and the state moves) or is ignored because the transaction is past the point where
that response could be sent.

    INVITE (RFC 3261 §17.2.1, RFC 6026 §7.1)

    state        1xx          2xx             300-699       ACK          request again
    proceeding   proceeding   accepted (L)    completed     absorb       resend last
                                              (G, H)
    accepted     ignore       accepted, sent  ignore        absorb       absorb
    completed    ignore       ignore          ignore        confirmed    resend last
                                                            (I)
    confirmed    ignore       ignore          ignore        absorb       absorb

    non-INVITE (RFC 3261 §17.2.2)

    state        1xx          200-699         request again
    trying       proceeding   completed (J)   absorb
    proceeding   proceeding   completed (J)   resend last
    completed    ignore       ignore          resend last

Timers (unreliable / reliable transport):

    G  completed: resend the final response, T1 doubling up to T2 / not used
    H  completed: 64*T1 on both -> terminated, `timed_out_waiting_ack` set
    I  confirmed: T4 / 0 -> terminated
    J  completed (non-INVITE): 64*T1 / 0 -> terminated
    L  accepted: 64*T1 on both -> terminated (RFC 6026: the proxy forwards 2xx
       retransmissions through `respond()` meanwhile; retransmitted INVITEs are absorbed)

A timer of 0 terminates the transaction at once, before `respond()` or `on_ack()` returns.

A `send` that raises OSError is a transport error (RFC 3261 §17.2.4): the transaction
reports it through `on_transport_error` when given, and terminates. The transport layer
raises only for failures worth giving up on; a datagram it could not queue is loss, for
retransmission to cover.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .states import (
    ACCEPTED,
    COMPLETED,
    CONFIRMED,
    FAILURE,
    PROCEEDING,
    PROVISIONAL,
    SUCCESS,
    TERMINATED,
    TRYING,
    response_class,
)
from .timers import Scheduler, TimerConfig, TimerHandle

__all__ = ["ServerTransaction"]

# state -> response class -> next state. A response whose class is missing for the
# current state is ignored: nothing is sent and nothing changes.
INVITE_RESPONSE_TRANSITIONS: dict[str, dict[int, str]] = {
    PROCEEDING: {PROVISIONAL: PROCEEDING, SUCCESS: ACCEPTED, FAILURE: COMPLETED},
    # RFC 6026 §7.1: 2xx retransmissions (and 2xx from other forks) passed down by the
    # proxy while Accepted MUST be sent.
    ACCEPTED: {SUCCESS: ACCEPTED},
    COMPLETED: {},
    CONFIRMED: {},
    TERMINATED: {},
}

NON_INVITE_RESPONSE_TRANSITIONS: dict[str, dict[int, str]] = {
    TRYING: {PROVISIONAL: PROCEEDING, SUCCESS: COMPLETED, FAILURE: COMPLETED},
    PROCEEDING: {PROVISIONAL: PROCEEDING, SUCCESS: COMPLETED, FAILURE: COMPLETED},
    COMPLETED: {},
    TERMINATED: {},
}

# state -> next state when an ACK matches (INVITE only; RFC 3261 §17.2.1). ACKs in any
# other state are absorbed; an ACK for a 2xx never matches (it has its own branch).
INVITE_ACK_TRANSITIONS: dict[str, str] = {COMPLETED: CONFIRMED}

# States that answer a retransmitted request with the last response sent, for INVITE and
# non-INVITE alike (RFC 3261 §17.2.1, §17.2.2). Trying has nothing to resend yet;
# Accepted absorbs (RFC 6026 §7.1); Confirmed absorbs (the ACK came, so the INVITE is old).
RESEND_ON_REQUEST = frozenset((PROCEEDING, COMPLETED))


class ServerTransaction:
    """One RFC 3261 §17.2 server transaction; see the module docstring for the tables."""

    __slots__ = (
        "_interval",
        "_on_terminated",
        "_on_transport_error",
        "_retransmit_timer",
        "_scheduler",
        "_send_fn",
        "_state_timer",
        "_timers",
        "_transitions",
        "context",
        "is_invite",
        "key",
        "last_response",
        "last_status",
        "method",
        "reliable",
        "state",
        "timed_out_waiting_ack",
    )

    def __init__(
        self,
        key: object,
        method: str,
        *,
        reliable: bool,
        send: Callable[[bytes], None],
        scheduler: Scheduler,
        timers: TimerConfig,
        on_terminated: Callable[[ServerTransaction], None] | None = None,
        on_transport_error: Callable[[ServerTransaction], None] | None = None,
    ):
        if method == "ACK":
            # RFC 3261 §17: an ACK is part of the INVITE transaction, never one of its own.
            raise ValueError("ACK does not create a server transaction")
        self.key = key
        self.method = method
        self.is_invite = method == "INVITE"
        self.reliable = reliable
        # RFC 3261 §17.2.1: an INVITE server transaction starts in Proceeding (the proxy
        # sends its own 100 Trying through respond()); §17.2.2: non-INVITE in Trying.
        self.state = PROCEEDING if self.is_invite else TRYING
        self.last_status = 0
        self.last_response: bytes | None = None
        self.timed_out_waiting_ack = False
        # The owner's own data (the proxy's response context): whatever it keeps here.
        self.context: Any = None
        self._transitions = (
            INVITE_RESPONSE_TRANSITIONS if self.is_invite else NON_INVITE_RESPONSE_TRANSITIONS
        )
        self._send_fn = send
        self._scheduler = scheduler
        self._timers = timers
        self._on_terminated = on_terminated
        self._on_transport_error = on_transport_error
        self._retransmit_timer: TimerHandle | None = None  # G
        self._state_timer: TimerHandle | None = None  # H, I, J or L
        self._interval = 0.0  # Timer G's current interval

    # -- events from the proxy ------------------------------------------------------

    def respond(self, status: int, data: bytes) -> None:
        """Send a response upstream, if the state allows it, and move the state."""
        cls = response_class(status)
        if not cls:
            raise ValueError(f"not a response status: {status!r}")
        new_state = self._transitions[self.state].get(cls)
        if new_state is None:
            return
        self.last_status = status
        # Accepted never resends (it absorbs retransmitted INVITEs): no need to keep
        # the 2xx for the length of Timer L.
        self.last_response = data if new_state is not ACCEPTED else None
        if not self._send(data):
            return
        if new_state is not self.state:
            self._enter(new_state)

    def on_request_retransmission(self) -> None:
        """The request arrived again: resend the last response or absorb it."""
        if self.state in RESEND_ON_REQUEST and self.last_response is not None:
            self._send(self.last_response)

    def on_ack(self) -> None:
        """An ACK matched this transaction (RFC 3261 §17.2.3): confirm or absorb."""
        if not self.is_invite:
            return
        new_state = INVITE_ACK_TRANSITIONS.get(self.state)
        if new_state is not None:
            self._enter(new_state)

    def terminate(self) -> None:
        """Stop every timer and end the transaction; `on_terminated` runs once."""
        if self.state is TERMINATED:
            return
        self._cancel_timers()
        self.state = TERMINATED
        if self._on_terminated is not None:
            self._on_terminated(self)

    # -- state entry ----------------------------------------------------------------

    def _enter(self, state: str) -> None:
        self.state = state
        timers = self._timers
        if state is COMPLETED:
            if self.is_invite:
                # RFC 3261 §17.2.1: Timer G retransmits the final response over
                # unreliable transports; Timer H bounds the wait for the ACK.
                if not self.reliable:
                    self._interval = timers.t1
                    self._retransmit_timer = self._scheduler.call_later(
                        self._interval, self._on_timer_g
                    )
                self._state_timer = self._scheduler.call_later(timers.timer_h, self._on_timer_h)
            else:
                # RFC 3261 §17.2.2: Timer J absorbs request retransmissions.
                self._wait_then_terminate(0.0 if self.reliable else timers.timer_j)
        elif state is CONFIRMED:
            # RFC 3261 §17.2.1: the ACK stops G and H; Timer I absorbs ACK retransmissions.
            self._cancel_timers()
            self._wait_then_terminate(0.0 if self.reliable else timers.timer_i)
        elif state is ACCEPTED:
            # RFC 6026 §7.1: Timer L, whatever the transport.
            self._wait_then_terminate(timers.timer_l)
        # Proceeding starts no timer.

    def _wait_then_terminate(self, delay: float) -> None:
        if delay > 0:
            # The function and the transaction, not a bound method: one object less to
            # keep for the whole linger (see TimerHandle).
            self._state_timer = self._scheduler.call_later(delay, ServerTransaction.terminate, self)
        else:
            self.terminate()

    # -- timers ---------------------------------------------------------------------

    def _on_timer_g(self) -> None:
        # RFC 3261 §17.2.1: resend, then wait twice as long, but never more than T2.
        if self.last_response is None or not self._send(self.last_response):
            return
        self._interval = min(2 * self._interval, self._timers.t2)
        self._retransmit_timer = self._scheduler.call_later(self._interval, self._on_timer_g)

    def _on_timer_h(self) -> None:
        # RFC 3261 §17.2.1: no ACK came.
        self.timed_out_waiting_ack = True
        self.terminate()

    # -- helpers --------------------------------------------------------------------

    def _send(self, data: bytes) -> bool:
        """Send `data`; on a transport error report it, terminate, and return False."""
        try:
            self._send_fn(data)
        except OSError:
            # RFC 3261 §17.2.4
            try:
                if self._on_transport_error is not None:
                    self._on_transport_error(self)
            finally:
                self.terminate()
            return False
        return True

    def _cancel_timers(self) -> None:
        if self._retransmit_timer is not None:
            self._retransmit_timer.cancel()
            self._retransmit_timer = None
        if self._state_timer is not None:
            self._state_timer.cancel()
            self._state_timer = None

    def __repr__(self) -> str:
        return f"<ServerTransaction {self.method} {self.key!r} {self.state}>"
