"""Client transactions: RFC 3261 §17.1 as amended by RFC 6026.

Rule 1: everything that moves a client transaction from one state to another lives in
this file. The transitions driven by responses are tables; what happens on entering a
state (starting and stopping timers) is `_enter()`.

Rule 2: this file does no I/O and parses nothing. A transaction holds the request as
bytes and hands them to the `send` callable it was given; the proxy parses responses,
matches them to the transaction (RFC 3261 §17.1.3) and calls `receive_response()` with
the status code and its parsed message, which is opaque here: it only travels back to
the proxy in `on_response` and to `make_ack`. Time comes from a `Scheduler`.

Theory of operation
===================

The proxy creates one `ClientTransaction` per request it forwards (a branch) and calls
`start()`, or sends the request first and then calls `start(sent=True)`. Every
response that is not an absorbed retransmission reaches the proxy once through
`on_response`; the tables below say which ones those are.

    INVITE (RFC 3261 §17.1.1.2, RFC 6026 §7.2)

    state        1xx               2xx                 300-699
    calling      proceeding, up    accepted (M), up    completed (D), ACK, up
    proceeding   proceeding, up    accepted (M), up    completed (D), ACK, up
    accepted     absorb            accepted, up        absorb
    completed    absorb            absorb              resend the ACK

    non-INVITE (RFC 3261 §17.1.2.2)

    state        1xx               200-699
    trying       proceeding, up    completed (K), up
    proceeding   proceeding, up    completed (K), up
    completed    absorb            absorb

Timers (unreliable / reliable transport):

    A  calling: resend the INVITE, T1 doubling without a cap / not used
    B  calling: 64*T1 on both -> `on_timeout`, terminated. Proceeding stops it: from
       then on the proxy's own timer (Timer C, Kamailio's fr_inv_timer) decides.
    D  completed (INVITE): max(32 s, 64*T1) / 0 -> terminated
    E  trying: resend, T1 doubling up to T2; proceeding: every T2 / not used
    F  trying, proceeding: 64*T1 on both -> `on_timeout`, terminated
    K  completed (non-INVITE): T4 / 0 -> terminated
    M  accepted: 64*T1 on both -> terminated (RFC 6026)

A timer of 0 terminates the transaction right after `on_response` returns.

Transport errors (RFC 3261 §17.1.1.2, §17.1.2.2): a `send` that raises OSError while
sending the request (at `start()` or on a retransmission) is reported through
`on_transport_error` (or `on_timeout` when none was given) and the transaction
terminates. An ACK that fails to send is not reported: the proxy already has its final
response, and a lost ACK is answered by the server retransmitting that response, to
which the transaction sends the ACK again.

`stop_retransmissions()` is for the proxy that has given up on a branch on its own
timer: A or E stop, but the transaction keeps listening until B or F, so a late
response still reaches the proxy. B or F then ends the transaction without calling
`on_timeout`, since the proxy has already acted on its own timeout (`timed_out` is
still set).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .states import (
    ACCEPTED,
    CALLING,
    COMPLETED,
    FAILURE,
    PROCEEDING,
    PROVISIONAL,
    SUCCESS,
    TERMINATED,
    TRYING,
    response_class,
)
from .timers import Scheduler, TimerConfig, TimerHandle

__all__ = ["ClientTransaction"]

# state -> response class -> next state. A response whose class is missing for the
# current state is absorbed: it is not passed up (except that a 300-699 in Completed
# makes an INVITE transaction resend its ACK).
INVITE_RESPONSE_TRANSITIONS: dict[str, dict[int, str]] = {
    CALLING: {PROVISIONAL: PROCEEDING, SUCCESS: ACCEPTED, FAILURE: COMPLETED},
    PROCEEDING: {PROVISIONAL: PROCEEDING, SUCCESS: ACCEPTED, FAILURE: COMPLETED},
    # RFC 6026 §7.2: every 2xx received while Accepted is passed up; a stateful proxy
    # forwards them (retransmissions, or 2xx from other forks downstream).
    ACCEPTED: {SUCCESS: ACCEPTED},
    COMPLETED: {},
    TERMINATED: {},
}

NON_INVITE_RESPONSE_TRANSITIONS: dict[str, dict[int, str]] = {
    TRYING: {PROVISIONAL: PROCEEDING, SUCCESS: COMPLETED, FAILURE: COMPLETED},
    PROCEEDING: {PROVISIONAL: PROCEEDING, SUCCESS: COMPLETED, FAILURE: COMPLETED},
    COMPLETED: {},
    TERMINATED: {},
}


class ClientTransaction:
    """One RFC 3261 §17.1 client transaction; see the module docstring for the tables."""

    __slots__ = (
        "_ack",
        "_interval",
        "_make_ack",
        "_on_response",
        "_on_terminated",
        "_on_timeout",
        "_on_transport_error",
        "_retransmissions_stopped",
        "_retransmit_timer",
        "_scheduler",
        "_send_fn",
        "_state_timer",
        "_timers",
        "_transitions",
        "context",
        "is_invite",
        "key",
        "last_status",
        "method",
        "reliable",
        "request",
        "state",
        "timed_out",
    )

    def __init__(
        self,
        key: object,
        method: str,
        request: bytes,
        *,
        reliable: bool,
        send: Callable[[bytes], None],
        scheduler: Scheduler,
        timers: TimerConfig,
        on_response: Callable[[ClientTransaction, int, Any], None],
        on_timeout: Callable[[ClientTransaction], None],
        make_ack: Callable[[Any], bytes] | None = None,
        on_terminated: Callable[[ClientTransaction], None] | None = None,
        on_transport_error: Callable[[ClientTransaction], None] | None = None,
    ):
        if method == "ACK":
            # RFC 3261 §17: an ACK is sent by a transaction or statelessly, never as one.
            raise ValueError("ACK does not create a client transaction")
        is_invite = method == "INVITE"
        if is_invite and make_ack is None:
            raise ValueError("an INVITE client transaction needs make_ack")
        self.key = key
        self.method = method
        self.is_invite = is_invite
        self.reliable = reliable
        self.request = request
        self.state = CALLING if is_invite else TRYING
        self.last_status = 0
        self.timed_out = False
        # The owner's own data (the proxy's branch): whatever it keeps here.
        self.context: Any = None
        self._transitions = (
            INVITE_RESPONSE_TRANSITIONS if is_invite else NON_INVITE_RESPONSE_TRANSITIONS
        )
        self._send_fn: Callable[[bytes], None] | None = send
        self._scheduler = scheduler
        self._timers = timers
        self._on_response = on_response
        self._on_timeout = on_timeout
        self._on_transport_error = on_transport_error
        self._on_terminated = on_terminated
        self._make_ack = make_ack
        self._ack: bytes | None = None  # the ACK for a 300-699, kept for retransmitted finals
        self._retransmit_timer: TimerHandle | None = None  # A or E
        self._state_timer: TimerHandle | None = None  # B, D, F, K or M
        self._interval = 0.0  # Timer A's or E's current interval
        self._retransmissions_stopped = False

    # -- events from the proxy ------------------------------------------------------

    def start(self, sent: bool = False) -> None:
        """Send the request and start the timers of Calling or Trying.

        A transport error is reported from inside this call. `sent`: the caller has
        already sent the request itself (so that it leaves before the transaction is
        built); only the timers start.
        """
        if self._state_timer is not None or self.state is not (
            CALLING if self.is_invite else TRYING
        ):
            raise RuntimeError(f"{self!r} was already started")
        if not sent and not self._send_request():
            return
        timers = self._timers
        scheduler = self._scheduler
        # RFC 3261 §17.1.1.2 (A, B) and §17.1.2.2 (E, F): retransmission only over
        # unreliable transports; the overall deadline on every transport.
        if not self.reliable:
            self._interval = timers.t1
            self._retransmit_timer = scheduler.call_later(timers.t1, self._on_retransmit_timer)
        self._state_timer = scheduler.call_later(
            timers.timer_b if self.is_invite else timers.timer_f, self._on_timeout_timer
        )

    def receive_response(self, status: int, response: object) -> None:
        """A response matched this transaction: pass it up or absorb it.

        A status outside 100-699 is dropped (the message layer should not let one by).
        """
        cls = response_class(status)
        new_state = self._transitions[self.state].get(cls)
        if new_state is None:
            if cls == FAILURE and self.state is COMPLETED and self._ack is not None:
                # RFC 3261 §17.1.1.2: a retransmitted final is answered with the ACK again.
                self._send_ack()
            return
        self.last_status = status
        if new_state is self.state:
            self._on_response(self, status, response)
            return
        if new_state is COMPLETED and self.is_invite:
            # RFC 3261 §17.1.1.3: the ACK for a 300-699 is built from the response and
            # goes where the INVITE went, i.e. through our `send`. Built before the state
            # moves, so that a make_ack that raises leaves the transaction as it was.
            assert self._make_ack is not None
            self._ack = self._make_ack(response)
        self.state = new_state
        # The response goes up before the timers change: at low load what the timer work
        # costs with cold caches would delay it. Nothing in between yields.
        try:
            self._on_response(self, status, response)
        finally:
            # Unless on_response ended the transaction (or moved it on).
            if self.state is new_state and not self._enter(new_state):
                self.terminate()

    def on_transport_error(self) -> None:
        """The transport failed for this branch (e.g. the TCP connection broke).

        Reported through `on_transport_error` (or `on_timeout`), then terminated, unless
        a final response has already been passed up, in which case the transaction
        just terminates.
        """
        if self.state in (CALLING, TRYING, PROCEEDING):
            self._fail(self._on_transport_error or self._on_timeout)
        else:
            self.terminate()

    def stop_retransmissions(self) -> None:
        """Stop Timer A or E; keep listening for a late response until Timer B or F."""
        self._retransmissions_stopped = True
        if self._retransmit_timer is not None:
            self._retransmit_timer.cancel()
            self._retransmit_timer = None

    def terminate(self) -> None:
        """Stop every timer and end the transaction; `on_terminated` runs once."""
        if self.state is TERMINATED:
            return
        self._cancel_timers()
        self.state = TERMINATED
        if self._on_terminated is not None:
            self._on_terminated(self)

    # -- state entry ----------------------------------------------------------------

    def _enter(self, state: str) -> bool:
        """What entering `state`, a new one, does (the state is already set, and the ACK
        of a 300-699 built); return False if it ends at once (a zero timer)."""
        timers = self._timers
        if state is PROCEEDING:
            if self.is_invite:
                # RFC 3261 §17.1.1.2: A and B belong to Calling only.
                self._cancel_timers()
            # Non-INVITE: E keeps going (every T2 from its next firing) and F keeps
            # running (RFC 3261 §17.1.2.2).
            return True
        self._cancel_timers()
        # A final response came: the request is never sent again, and the ACK (if any)
        # is built. Dropping both now keeps a lingering transaction small.
        self.request = b""
        self._make_ack = None
        if state is ACCEPTED or not self.is_invite:
            # Nothing is sent from here on (only a non-2xx final's ACK is resent): let go
            # of the sender, and of whatever it holds, for the linger.
            self._send_fn = None
        if state is ACCEPTED:
            # RFC 6026 §7.2: Timer M, whatever the transport.
            delay = timers.timer_m
        elif self.is_invite:
            self._send_ack()
            delay = 0.0 if self.reliable else timers.timer_d
        else:
            delay = 0.0 if self.reliable else timers.timer_k
        if delay > 0:
            # The function and the transaction, not a bound method: one object less to
            # keep for the whole linger (see TimerHandle).
            self._state_timer = self._scheduler.call_later(delay, ClientTransaction.terminate, self)
            return True
        return False

    # -- timers ---------------------------------------------------------------------

    def _on_retransmit_timer(self) -> None:
        # Timer A (INVITE) or E (non-INVITE).
        if not self._send_request():
            return
        if self.is_invite:
            # RFC 3261 §17.1.1.2: intervals double, with no cap.
            self._interval *= 2
        elif self.state is PROCEEDING:
            # RFC 3261 §17.1.2.2: in Proceeding, E fires every T2.
            self._interval = self._timers.t2
        else:
            self._interval = min(2 * self._interval, self._timers.t2)
        self._retransmit_timer = self._scheduler.call_later(
            self._interval, self._on_retransmit_timer
        )

    def _on_timeout_timer(self) -> None:
        # Timer B (Calling) or F (Trying, Proceeding): no answer in time.
        self.timed_out = True
        if self._retransmissions_stopped:
            self.terminate()
        else:
            self._fail(self._on_timeout)

    # -- helpers --------------------------------------------------------------------

    def _send_request(self) -> bool:
        """Send the request; on a transport error report it, terminate, return False."""
        send = self._send_fn
        assert send is not None  # let go of only once nothing is sent any more
        try:
            send(self.request)
        except OSError:
            self._fail(self._on_transport_error or self._on_timeout)
            return False
        return True

    def _send_ack(self) -> None:
        send, ack = self._send_fn, self._ack
        assert send is not None and ack is not None  # a 300-699 came: its ACK is kept
        try:
            send(ack)
        except OSError:
            # Lost like a datagram: see the module docstring.
            pass

    def _fail(self, notify: Callable[[ClientTransaction], None]) -> None:
        self._cancel_timers()
        try:
            notify(self)
        finally:
            self.terminate()

    def _cancel_timers(self) -> None:
        if self._retransmit_timer is not None:
            self._retransmit_timer.cancel()
            self._retransmit_timer = None
        if self._state_timer is not None:
            self._state_timer.cancel()
            self._state_timer = None

    def __repr__(self) -> str:
        return f"<ClientTransaction {self.method} {self.key!r} {self.state}>"
