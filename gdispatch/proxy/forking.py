"""The attempts of a forwarded request, and which response goes upstream (RFC 3261
§16.5-16.10).

A dispatched request is tried on its destinations one after another (serial forking,
Kamailio's failover) or on all at once (the parallel algorithm): a `Branch` per attempt,
all held by the request's `ResponseContext`. `Forker` is the walk over the destinations
written as a state machine fed each attempt's outcome: `dispatch` starts the first
attempt, and `attempt_over` (called when a branch gets its final response, times out or
cannot be sent) starts the next one, switches set, or ends the walk and sends the best
response upstream (`finish`, §16.7 step 6). Nothing waits, so no greenlet is needed,
except for what may block: a destination name resolved at call time (flag 16) and the
plugins' `gdispatch_prepare_attempt` and `gdispatch_after_failure` hooks run in a
greenlet of their own (`_soon`), as any code that may wait on the network must not hold
up the receiver.

Responses to a branch (`branch_response`): provisionals go upstream at once, the first
2xx goes upstream and cancels the other branches (§16.7 step 5, §16.10), a final
>= 300 is kept if it is the best so far (`better`, §16.7 step 6). The final-response
timers (§16.8: fr_timer before a provisional, fr_inv_timer after) and CANCEL (§16.10,
§9.1: never before a provisional) live here too. A request inside a dialog has one
branch and no walk.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import gevent

from gdispatch import logsafe
from gdispatch.config import Route
from gdispatch.dispatcher.algorithms import ALG_PARALLEL, select
from gdispatch.dispatcher.destination import Destination
from gdispatch.message_api import FailureAction, RequestView
from gdispatch.net import Source, TlsPeer
from gdispatch.sip import SipMessage, build_ack, parse_message, strip_top_via
from gdispatch.transaction.client import ClientTransaction
from gdispatch.transaction.server import ServerTransaction
from gdispatch.transaction.states import COMPLETED, TERMINATED
from gdispatch.transaction.timers import TimerHandle

from .counters import ANSWERED, FAILED

if TYPE_CHECKING:
    from .core import Proxy

log = logging.getLogger("gdispatch.proxy")

LOCAL_TIMEOUT = 408


class Branch:
    """One attempt of a forwarded request: a destination and its client transaction.

    Its client transaction sends through `send` and builds ACKs with `make_ack`: bound
    methods of an object that exists anyway, rather than closures, which would add a
    function and a cell per captured variable to every transaction (objects the cyclic
    garbage collector scans while the transaction lingers)."""

    __slots__ = (
        "cancel_state",
        "ct",
        "bound",
        "ctx",
        "dest",
        "final",
        "key",
        "listener",
        "next_hop",
        "peer",
        "provisional",
        "request",
        "timer",
    )

    def __init__(self, ctx: ResponseContext, dest: Destination | None, next_hop):
        self.ctx = ctx
        self.dest = dest
        self.next_hop = next_hop  # (transport, (ip, port))
        self.ct: ClientTransaction | None = None
        self.request: bytes = b""
        self.provisional = False
        self.final = 0  # final status once the branch is over (408: local timeout)
        self.timer: TimerHandle | None = None
        # "" nothing, "pending" (send CANCEL on the first provisional), "sent"
        self.cancel_state = ""
        self.key: tuple[str, str] | None = None
        self.listener = None  # the socket the request leaves from
        self.bound = False  # `listener` was chosen for it (Transports.sender)
        self.peer: TlsPeer | None = None  # over TLS, who the connection must reach

    def send(self, data: bytes) -> None:
        transport, addr = self.next_hop
        self.ctx.proxy.transports.send(transport, addr, data, on_error=self._transport_failed,
                                       listener=self.listener, bind=self.bound, peer=self.peer)

    def _transport_failed(self) -> None:
        ct = self.ct
        if ct is not None and ct.state != "terminated":
            ct.on_transport_error()

    def make_ack(self, response: SipMessage) -> bytes:
        """The ACK of a non-2xx final (RFC 3261 §17.1.1.3), built from the request the
        transaction still holds at that point."""
        assert self.ct is not None
        return build_ack(parse_message(self.ct.request), response)


class Walk:
    """Where the walk over a dispatched request's destinations is: the candidates in
    order, the index of the one being tried, and what each attempt is sent with."""

    __slots__ = ("candidates", "n", "popped", "record", "source", "top_via")

    def __init__(self, candidates: list[Destination], source: Source, top_via: bytes | None, popped: int,
                 record: bool):
        self.candidates = candidates
        self.n = 0
        self.source = source
        self.top_via = top_via
        self.popped = popped
        self.record = record


class ResponseContext:
    """The proxy's state for one server transaction it forwards (RFC 3261 §16.7)."""

    __slots__ = (
        "best",
        "branches",
        "cancelled",
        "counts_load",
        "final_sent",
        "last_outcome",
        "last_status",
        "outstanding",
        "proxy",
        "reply_override",
        "request",
        "route",
        "source",
        "st",
        "started",
        "to_tag",
        "top_via",
        "walk",
    )

    def __init__(self, proxy: Proxy, st: ServerTransaction, request: SipMessage, route: Route | None):
        self.proxy = proxy
        self.st = st
        self.request: SipMessage | None = request
        self.branches: list[Branch] = []
        self.best: SipMessage | None = None
        self.final_sent = False
        self.cancelled = False
        # Branches started and not over yet; the final status of the last that ended.
        self.outstanding = 0
        self.last_status = 0
        self.last_outcome = ""  # what became of the last branch, for the log ("answered 486")
        self.route = route
        self.to_tag = ""
        # A dispatched INVITE: its destination's active-call count follows it, and the
        # time to its final response is measured (Proxy.invite_times) from now.
        self.counts_load = route is not None and request.method == "INVITE"
        self.started = proxy.scheduler.now() if self.counts_load else 0.0
        # (code, reason) a plugin chose to answer with instead of the best response.
        self.reply_override: tuple[int, str] | None = None
        self.source: tuple[str, str, int] | None = None  # (transport, ip, port) for plugins
        # The request's top Via with received/rport, for the answers made here (RFC 3581 §4).
        self.top_via: bytes | None = None
        # A dispatched request while its walk goes on; None for a request inside a dialog
        # and once the walk is over.
        self.walk: Walk | None = None


class Forker:
    """The walks of the proxy's dispatched requests, and the §16.7 response choice."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.plugins = proxy.plugins
        self.stats = proxy.stats

    # -- the walk ------------------------------------------------------------------------

    def dispatch(self, ctx: ResponseContext, walk: Walk) -> None:
        """Start the walk of a dispatched request: its first destination, or all of them
        for the parallel algorithm."""
        ctx.walk = walk
        self.proxy.calls_in_setup += 1  # until the walk is over
        assert ctx.route is not None
        if ctx.route.algorithm == ALG_PARALLEL:
            ctx.outstanding = len(walk.candidates)
            for dest in list(walk.candidates):
                if ctx.walk is None:
                    break
                self._attempt(ctx, dest)
        else:
            ctx.outstanding = 1
            self._attempt(ctx, walk.candidates[0])

    def _attempt(self, ctx: ResponseContext, dest: Destination) -> None:
        """Try `dest`: now, or in a greenlet when it may wait (a name to resolve, a
        plugin's edit)."""
        if dest.address is None or self.plugins.user_implemented("gdispatch_prepare_attempt"):
            self._soon(ctx, self._attempt_now, ctx, dest)
        else:
            self._attempt_now(ctx, dest)

    def _attempt_now(self, ctx: ResponseContext, dest: Destination) -> None:
        if ctx.walk is None:
            return  # cancelled or answered while a name was resolved
        try:
            self.proxy.branches.start(ctx, dest)
        except Exception:
            # The caller gets its 500, the call leaves the count.
            log.exception("error while dispatching call-id %s", logsafe.text(ctx.request.call_id)
                          if ctx.request is not None else "-")
            self._walk_over(ctx, error=True)

    def _soon(self, ctx: ResponseContext, func, *args) -> None:
        """Run `func(*args)` in a greenlet of its own: what may wait must not hold up the
        receiver. An error there ends the walk with a 500, as one inline does."""

        def run() -> None:
            try:
                func(*args)
            except Exception:
                log.exception("error while dispatching call-id %s", logsafe.text(ctx.request.call_id)
                              if ctx.request is not None else "-")
                if ctx.walk is not None:
                    self._walk_over(ctx, error=True)

        gevent.spawn(run)

    def attempt_over(self, branch: Branch, status: int, resp: SipMessage | None, why: str = "") -> None:
        """`branch` is over with `status`: the response `resp`, or `why` there is none.
        The walk goes on from here."""
        branch.final = status
        ctx = branch.ctx
        if status >= 300 and branch.dest is not None and ctx.counts_load:
            self.proxy.call_counts.of(branch.dest)[FAILED] += 1
        if branch.timer is not None:
            branch.timer.cancel()
            branch.timer = None
        if resp is not None and status >= 300 and not ctx.final_sent:
            ctx.best = better(ctx.best, resp)
        ctx.last_status = status
        ctx.last_outcome = why or f"answered {status}"
        ctx.outstanding -= 1
        walk = ctx.walk
        if walk is None:
            if ctx.route is None:
                # Inside a dialog: a single branch, no walk.
                if not ctx.final_sent:
                    self.finish(ctx)
                release(ctx)
            return
        assert ctx.route is not None
        if ctx.route.algorithm == ALG_PARALLEL:
            if ctx.outstanding <= 0 or 200 <= status < 300:
                self._walk_over(ctx)
        elif 200 <= status < 300 or ctx.cancelled or ctx.final_sent:
            self._walk_over(ctx)
        else:
            dest = branch.dest
            assert dest is not None  # a dispatched request's branches have one
            if self.plugins.user_implemented("gdispatch_after_failure"):
                self._soon(ctx, self._next, ctx, dest, status)
            else:
                self._next(ctx, dest, status)

    def _next(self, ctx: ResponseContext, dest: Destination, status: int) -> None:
        """The serial walk after a failed attempt on `dest` (Kamailio's failure_route with
        ds_next_dst): the route's failover codes, or a plugin, say what comes next."""
        walk = ctx.walk
        request = ctx.request
        if walk is None or request is None:
            return
        n = walk.n
        action = self._after_failure(ctx, dest, status, n + 1)
        candidates = walk.candidates
        call_id = logsafe.text(request.call_id)
        if action.kind == "reply":
            ctx.best = None
            ctx.reply_override = (action.code, action.reason)
            self._walk_over(ctx)
            return
        if action.kind == "switch":
            dset = self.proxy.dlist.get(action.set)
            more = select(dset, action.algorithm, request, 0, self.proxy.default_options) if dset else []
            log.warning("%s %s for call-id %s; switching to set %d (%d destinations)",
                        dest.label, ctx.last_outcome, call_id, action.set, len(more))
            walk.candidates = candidates = candidates[:n + 1] + more
        elif action.kind != "next":
            self._walk_over(ctx)
            return
        elif n + 1 < len(candidates):
            log.warning("failover: %s %s for call-id %s, trying %s", dest.label, ctx.last_outcome,
                        call_id, candidates[n + 1].label)
        else:
            log.warning("%s %s for call-id %s; no destination left", dest.label, ctx.last_outcome, call_id)
        if n + 1 >= len(candidates) or ctx.cancelled or ctx.final_sent:
            self._walk_over(ctx)
            return
        walk.n = n + 1
        self.stats["failovers"] += 1
        ctx.outstanding = 1
        self._attempt(ctx, candidates[n + 1])

    def _after_failure(self, ctx: ResponseContext, dest: Destination, status: int, number: int) -> FailureAction:
        plugins = self.plugins
        if plugins.user_implemented("gdispatch_after_failure") and ctx.request is not None:
            action = plugins.call_first("gdispatch_after_failure", request=RequestView(ctx.request, ctx.source),
                                        destination=dest, status=status, attempt_number=number, route=ctx.route)
            if isinstance(action, FailureAction):
                return action
        return self.proxy.builtin.gdispatch_after_failure(None, dest, status, number, ctx.route)

    def _walk_over(self, ctx: ResponseContext, error: bool = False) -> None:
        """The walk is over: the best response goes upstream if no final went yet, and
        the request leaves the count of calls in setup."""
        if ctx.walk is None:
            return
        ctx.walk = None
        self.proxy.calls_in_setup -= 1
        if error:
            if not ctx.final_sent:
                ctx.final_sent = True
                final_timed(ctx)
                if ctx.request is not None:
                    self.proxy.local_reply(ctx.st, ctx.request, 500, "Internal Server Error")
        else:
            self.finish(ctx)
        release(ctx)

    # -- responses (RFC 3261 §16.7) ------------------------------------------------------

    def branch_response(self, ct: ClientTransaction, status: int, resp: SipMessage) -> None:
        branch: Branch | None = ct.context
        if branch is None:
            return  # a transaction the proxy is done with (see `release`)
        ctx = branch.ctx
        proxy = self.proxy
        if ctx.route is not None and ctx.request is not None and self.plugins.user_implemented("gdispatch_response"):
            self.plugins.call("gdispatch_response", request=RequestView(ctx.request, ctx.source),
                              response_status=status, destination=branch.dest)
        # What goes upstream goes first, the timers after (see ClientTransaction).
        if status < 200:
            if status > 100 and not ctx.final_sent and not branch.final:
                # RFC 3261 §16.7 step 5: provisional responses (but 100) go upstream at once.
                proxy.replies_relayed[1] += 1
                ctx.st.respond(status, strip_top_via(resp))
            if not branch.provisional:
                branch.provisional = True
                if branch.timer is not None:
                    branch.timer.cancel()
                    branch.timer = None
                if not branch.final:
                    branch.timer = proxy.scheduler.call_later(proxy.fr_inv_timer, self.fr_timeout, branch)
                if branch.cancel_state == "pending":
                    proxy.branches.cancel(branch)
            return
        if 200 <= status < 300:
            # Every 2xx goes upstream, retransmissions included (§16.7 step 5, RFC 6026).
            first = not ctx.final_sent
            ctx.final_sent = True
            proxy.replies_relayed[2] += 1
            ctx.st.respond(status, strip_top_via(resp))
            final_came(branch)
            if first:
                final_timed(ctx)
            if first and ctx.counts_load and ctx.request is not None and branch.dest is not None:
                proxy.calls.attempt(ctx.request.call_id, branch.dest)  # the branch that won
                proxy.calls.answered(ctx.request.call_id)
                proxy.call_counts.of(branch.dest)[ANSWERED] += 1
            if first:
                for other in ctx.branches:
                    if other is not branch and not other.final:
                        proxy.branches.cancel(other)
            if not branch.final:
                self.attempt_over(branch, status, resp)
            return
        final_came(branch)
        if branch.final:
            return  # a late final after we gave up on this branch
        if status in proxy.mark_codes:
            proxy.branches.traffic_failure(branch, f"answered {status}")
        self.attempt_over(branch, status, resp)

    def fr_timeout(self, branch: Branch) -> None:
        """No final response in time: give up on this destination (RFC 3261 §16.8)."""
        branch.timer = None
        if branch.final:
            return
        ct = branch.ct
        if branch.provisional:
            # It rang too long (fr_inv_timer): cancel it (§16.8, §9.1).
            self.proxy.branches.cancel(branch)
            why = "rang past fr_inv_timer"
        else:
            why = "did not answer within fr_timer"
            if ct is not None:
                ct.stop_retransmissions()
                self.proxy.branches.traffic_failure(branch, "no response within fr_timer")
        self.attempt_over(branch, LOCAL_TIMEOUT, None, why)

    def finish(self, ctx: ResponseContext) -> None:
        """Send the best final response upstream when no 2xx went (RFC 3261 §16.7 step 6)."""
        if ctx.final_sent:
            return
        ctx.final_sent = True
        final_timed(ctx)
        proxy = self.proxy
        request = ctx.request
        assert request is not None
        if ctx.counts_load:
            proxy.calls.ended(request.call_id)
        st = ctx.st
        best = ctx.best
        if ctx.reply_override is not None:
            code, reason = ctx.reply_override
            proxy.local_reply(st, request, code, reason, to_tag=ctx.to_tag)
            return
        if best is not None:
            data = strip_top_via(best)
            status = best.status
            if status == 503:
                # §16.7 step 6: a 503 is not passed upstream as such, or the caller would
                # take the whole proxy as overloaded.
                status = 500
                data = b"SIP/2.0 500 " + best.reason + data[data.index(b"\r\n"):]
            proxy.replies_relayed[status // 100] += 1
            st.respond(status, data)
            return
        if ctx.cancelled:
            proxy.local_reply(st, request, 487, "Request Terminated", to_tag=ctx.to_tag)
        elif ctx.route is not None:
            proxy.local_reply(st, request, 503, "Service Unavailable", to_tag=ctx.to_tag)
        elif ctx.last_status == 503:
            # It could not be sent: as if a 503 came (RFC 3261 §16.9), which goes upstream
            # as a 500 (§16.7 step 6).
            proxy.local_reply(st, request, 500, "Server Internal Error", to_tag=ctx.to_tag)
        else:
            proxy.local_reply(st, request, 408, "Request Timeout", to_tag=ctx.to_tag)

    # -- CANCEL (RFC 3261 §16.10) --------------------------------------------------------

    def cancel(self, ctx: ResponseContext) -> None:
        """The caller cancelled: every pending branch is cancelled, and the walk ends when
        they are over."""
        ctx.cancelled = True
        waiting = False
        for branch in list(ctx.branches):
            if branch.final:
                continue
            if branch.provisional:
                self.proxy.branches.cancel(branch)
                waiting = True
            else:
                # RFC 3261 §9.1: no CANCEL before a provisional response; stop sending
                # the INVITE and cancel if a provisional still comes.
                branch.cancel_state = "pending"
                if branch.ct is not None:
                    branch.ct.stop_retransmissions()
                self.attempt_over(branch, 487, None, "was cancelled")
        if not waiting and not ctx.final_sent:
            if ctx.walk is not None:
                self._walk_over(ctx)  # e.g. a name still being resolved
            elif ctx.route is None:
                self.finish(ctx)  # inside a dialog: no walk


def release(ctx: ResponseContext) -> None:
    """The final response went upstream and no walk reads the request any more: drop the
    parsed request and the responses kept for it. What stays (the context, its branches
    and transactions) is what relays 2xx retransmissions and answers a late CANCEL until
    the transactions end. A non-INVITE has neither: its transactions absorb
    retransmissions on their own (RFC 3261 §17.1.2.2, §17.2.2), so the context and the
    branches whose transaction has its final go now rather than after the linger."""
    if ctx.walk is not None:
        return
    ctx.request = None
    ctx.best = None
    st = ctx.st
    if st.is_invite or not ctx.final_sent:
        return
    keep = []
    for branch in ctx.branches:
        ct = branch.ct
        if ct is None or ct.state in (COMPLETED, TERMINATED):
            if ct is not None:
                ct.context = None
                branch.ct = None
        else:
            keep.append(branch)  # still waiting for its final: it must find its context
    ctx.branches = keep
    if not keep:
        st.context = None


def final_timed(ctx: ResponseContext) -> None:
    """The final response of `ctx`'s request goes upstream: a dispatched INVITE's wait
    for it joins the proxy's histogram."""
    if ctx.counts_load:
        proxy = ctx.proxy
        proxy.invite_times.observe(proxy.scheduler.now() - ctx.started)


def final_came(branch: Branch) -> None:
    """A final response came for `branch`: its fr timer stops, and no CANCEL goes for it
    any more (RFC 3261 §9.1)."""
    if branch.timer is not None:
        branch.timer.cancel()
        branch.timer = None
    branch.request = b""


def better(current: SipMessage | None, new: SipMessage) -> SipMessage:
    """RFC 3261 §16.7 step 6: a 6xx wins, else the lowest class; the first of a class stays."""
    if current is None:
        return new
    c, n = current.status, new.status
    if c >= 600:
        return current
    if n >= 600:
        return new
    return new if n // 100 < c // 100 else current
