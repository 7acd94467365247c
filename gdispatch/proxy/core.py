"""The stateful proxy's entry, and its transaction tables (RFC 3261 §16, §17).

Requests and responses arrive in `Proxy.on_message` from the transport shell, inline in
the receiver greenlet, and are handled there in arrival order (so a BYE never overtakes
the REFER sent before it): a retransmission is absorbed by its server transaction, a
response is matched to its client transaction, a new request is checked and routed
(gdispatch.proxy.routing decides, this module carries it out), an ACK of a 2xx and a
stray response go on without a transaction (gdispatch.proxy.stateless), a dispatched
request is walked over its destinations (gdispatch.proxy.forking).

Every message takes one path, whatever its shape: `parse_message` reads it lazily and
the proxy reads the few fields it decides on. Our own Record-Route entries are
recognised by their bytes when they come back as a Route (identity.route_entry), and a
response's top Via by comparison with the one we wrote (`_sent_with_this_via`), so the
messages of the dialogs we route cost no parse of what we wrote ourselves.

With several workers (gdispatch.cluster) every datagram of a call reaches the worker
that owns it before it reaches a proxy: the proxy knows nothing of workers.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

import gevent

from gdispatch import logsafe
from gdispatch.builtin import Builtin
from gdispatch.calls import CallLoad
from gdispatch.config import Config, Listen
from gdispatch.dispatcher.algorithms import ALG_CALL_LOAD, SelectOptions, compile_template, select
from gdispatch.dispatcher.destination import Destination, DispatcherList
from gdispatch.dispatcher.sockets import SocketTable
from gdispatch.dns import NextHopResolver, Resolver
from gdispatch.measures import INVITE_BUCKETS, Histogram
from gdispatch.net import Source, TlsPeer, Transports
from gdispatch.overload import LoadGuard
from gdispatch.plugins import PluginHost
from gdispatch.recordroute import Keyring, check
from gdispatch.sip import (
    ParseError,
    SipMessage,
    SipUri,
    Via,
    build_response,
    parse_message,
)
from gdispatch.sip.message import KNOWN_METHODS
from gdispatch.transaction.client import ClientTransaction
from gdispatch.transaction.server import ServerTransaction
from gdispatch.transaction.timers import Scheduler, TimerConfig

from . import nexthop, routing
from .branches import Branches
from .counters import CallCounters
from .forking import Branch, Forker, ResponseContext, Walk
from .identity import MAGIC_COOKIE, STATELESS_TAG, Identity, reply_addr, with_received
from .stateless import Stateless

if TYPE_CHECKING:
    from gdispatch.ha.leases import Leases

log = logging.getLogger("gdispatch.proxy")

# Requests that may create a dialog get our Record-Route (RFC 3261 §16.6 step 4).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
_STATELESS_TAG = STATELESS_TAG.encode()


class _Replier:
    """Sends a server transaction's responses back where its request came from (RFC 3261
    §18.2.2); one small object per transaction instead of a closure."""

    __slots__ = ("addr", "source", "transports")

    def __init__(self, transports: Transports, source: Source, addr: tuple[str, int]):
        self.transports = transports
        self.source = source
        self.addr = addr

    def __call__(self, data: bytes) -> None:
        self.transports.reply(self.source, self.addr, data)


class Proxy:
    def __init__(self, config: Config, transports: Transports, scheduler: Scheduler,
                 dispatcher_list: DispatcherList,
                 resolve_now: Callable[[Destination], list[tuple[str, int]]] | None = None,
                 plugins: PluginHost | None = None, keyring: Keyring | None = None,
                 next_hops: NextHopResolver | None = None,
                 on_traffic_failure: Callable[[Destination, str], None] | None = None):
        self.config = config
        # Resolves the host name of a next hop inside a dialog (`_next_hop`).
        self.next_hops = next_hops if next_hops is not None else NextHopResolver(Resolver())
        # The keys of our Record-Route signatures (gdispatch.recordroute); a reload may
        # give new ones.
        self.keyring = keyring or Keyring.ephemeral()
        self.bind_next_hop = config.security.dialog_next_hop == "destination"
        self.transports = transports
        self.scheduler = scheduler
        self.dlist = dispatcher_list
        # Resolves a destination marked "no DNS resolution at load" (flag 16) when a
        # request is sent to it; called from a greenlet of its own (forking).
        self.resolve_now = resolve_now
        # Plugins: the built-in behaviour (route tables, failover policy) is registered as
        # the plugin "builtin"; other plugins' hooks are only called when some exist.
        self.plugins = plugins if plugins is not None else PluginHost()
        self.builtin = Builtin(config.routes)
        self.plugins.register_builtin(self.builtin)
        self.routes = routing.RouteMatcher(config.routes, self.plugins, self.builtin)
        self.routes.set_list(dispatcher_list)
        # Told when a request to a destination timed out or could not be sent, or got one
        # of `mark_codes` (the prober then counts it against the destination): the one
        # seam of the proxy to the rest of the process (gdispatch.cluster.roles).
        self.on_traffic_failure = on_traffic_failure
        self.mark_codes: frozenset[int] = config.probing.mark_codes
        # Set on SIGTERM: new dialogs are refused (503 with Retry-After), requests inside
        # dialogs and transactions in progress carry on.
        self.draining = False
        # With [cluster] redis and one worker: the call slots leased for maxload
        # destinations (gdispatch.ha.leases); None otherwise.
        self.leases: Leases | None = None
        self._slot_waits: set = set()  # keys of the INVITEs waiting for a slot
        self.last_message_at = 0.0  # while draining: when the last message arrived
        t = config.timers
        self.timers = TimerConfig(t1=t.t1, t2=t.t2, t4=t.t4, linger=t.wt_timer or None)
        self.fr_timer = t.fr_timer
        self.fr_inv_timer = t.fr_inv_timer
        # Every transaction schedules with these (gdispatch.transaction.timers.Scheduler).
        scheduler.fixed_delays(*self.timers.delays, self.fr_timer, self.fr_inv_timer)
        self.server_txns: dict = {}
        self.client_txns: dict = {}
        self.stats: dict[str, int] = dict.fromkeys((
            "requests", "responses", "retransmissions_absorbed", "bad_messages_dropped",
            "bad_requests_answered", "dispatched", "failovers", "no_destination", "local_replies",
            "stray_responses", "overload_rejected", "in_dialog_refused",
        ), 0)
        # For the metrics (gdispatch.measures): requests received by method (a method
        # outside RFC 3261 and its extensions counts as "other": a peer's made-up names
        # add no series), responses sent upstream by class (index status // 100), made
        # here or relayed from downstream, each once (a transaction's retransmissions of
        # it are not counted), and how long a dispatched INVITE waited for its final.
        self.requests_by_method: dict[str, int] = dict.fromkeys((*sorted(KNOWN_METHODS), "other"), 0)
        self.replies_local = [0] * 7
        self.replies_relayed = [0] * 7
        self.invite_times = Histogram(INVITE_BUCKETS)
        self.identity = Identity(config.domains, transports.listeners, config.advertise)
        # The socket of the destinations without one of their own (Kamailio's
        # ds_default_socket; checked when the configuration loaded).
        self.default_socket: Listen | None = SocketTable(config.listen).default(config.default_socket,
                                                                                config.default_sockname)
        self.stateless = Stateless(self.identity, transports, self.stats, self.replies_local, self.replies_relayed)
        self.forker = Forker(self)
        self._options_headers = (
            b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, REFER, NOTIFY, SUBSCRIBE, MESSAGE",
            b"Accept: application/sdp",
        ) + ((b"Server: " + config.server_header.encode(),) if config.server_header else ())
        # Bound once: a bound method made per transaction would be one more object for
        # each to hold while it lingers.
        self._on_server_terminated = self._server_terminated
        self._debug = log.isEnabledFor(logging.DEBUG)
        self.calls = CallLoad(scheduler, expire=config.call_expire, init_expire=config.call_init_expire)
        self.branches = Branches(self)
        self._select_options = {
            id(r): SelectOptions(
                hash_user_only=config.hash_user_only,
                hash_template=compile_template(r.hash_template) if r.hash_template else None,
                kamailio_compat=config.kamailio_compat,
            )
            for r in config.routes
        }
        self.default_options = SelectOptions(hash_user_only=config.hash_user_only,
                                             kamailio_compat=config.kamailio_compat)
        self.call_counts = CallCounters()  # INVITEs per destination, and how they ended
        ov = config.overload
        self.guard = LoadGuard(scheduler.now, max_backlog=ov.max_backlog, max_calls_in_setup=ov.max_calls_in_setup,
                               hold=ov.hold, retry_after=ov.retry_after)
        self._retry_after = (b"Retry-After: %d" % ov.retry_after,)
        self.calls_in_setup = 0  # dispatched requests whose walk goes on
        self._no_destination_log: dict[int, tuple[float, int]] = {}  # set -> (last warning, skipped)

    def calls_in_progress(self) -> int:
        """Forwarded requests still waiting for their final response."""
        return sum(1 for st in self.server_txns.values()
                   if st.context is not None and not st.context.final_sent)

    def set_list(self, dispatcher_list: DispatcherList) -> None:
        """Swap in a newly loaded list (the old one keeps serving what it started)."""
        self.dlist = dispatcher_list
        self.routes.set_list(dispatcher_list)

    # ----------------------------------------------------------------- entry

    def on_message(self, data: bytes, source: Source) -> None:
        if data[:1] in b"\r\n" and not data.strip(b"\r\n"):
            return  # keep-alive (RFC 5626 §3.5.1)
        if self.draining:
            self.last_message_at = time.monotonic()
        try:
            msg = parse_message(data, stream=source.transport != "udp")
        except ParseError as e:
            self.stats["bad_messages_dropped"] += 1
            if self._debug:
                log.debug("dropped an unparsable message from %r: %s", source, e.reason)
            return
        if msg.is_request:
            self.stats["requests"] += 1
            try:
                self.requests_by_method[msg.method] += 1
            except KeyError:
                self.requests_by_method["other"] += 1
            self.on_request(msg, source)
        else:
            self.stats["responses"] += 1
            self.on_response(msg, source)

    # ----------------------------------------------------------------- requests

    def on_request(self, msg: SipMessage, source: Source) -> None:
        try:
            msg.validate_request()
            via = msg.top_via
        except ParseError as e:
            if msg.method != "ACK":
                self.stats["bad_requests_answered"] += 1
                self.stateless.reply(msg, source, e.status, e.reason)
            else:
                self.stats["bad_messages_dropped"] += 1
            return
        method = msg.method
        if method == "ACK":
            self._on_ack(msg, via, source)
            return
        if method == "CANCEL":
            self._on_cancel(msg, via, source)
            return
        key = _server_key(msg, via, method)
        if not self._absorbed(key):
            self._new_request(msg, via, source, key)

    def _refuse(self, msg: SipMessage, source: Source, status: int, reason: str, headers=(),
                top_via: bytes | None = None) -> None:
        """A new request answered here, before it became a transaction: statelessly
        (RFC 3261 §16.3 lets a proxy answer a request it will not forward, and a
        transaction would resend a final to the source 10 times, §17.2.1)."""
        self.stats["local_replies"] += 1
        self.stateless.reply(msg, source, status, reason, headers, top_via)

    def _refuse_in_dialog(self, msg: SipMessage, source: Source, why: str, top_via: bytes | None) -> None:
        """A request inside a dialog that is not ours to follow: 403, counted, and it
        goes nowhere (an ACK gets no answer, RFC 3261 §17.2.3)."""
        self.stats["in_dialog_refused"] += 1
        if self._debug:
            log.debug("refused %s call-id=%s from %r: %s", msg.method, logsafe.text(msg.call_id), source, why)
        if msg.method != "ACK":
            self._refuse(msg, source, 403, "Forbidden", top_via=top_via)

    def _dialog_refused(self, token: bytes | None, msg: SipMessage, source: Source, next_hop_ip: str) -> str:
        """'' when a request inside a dialog may go on to `next_hop_ip`, else why not
        (gdispatch.recordroute: our Route entry's signature, the dialog's destination)."""
        return check(self.keyring, token, msg.call_id, msg.from_tag, msg.to_tag, source.addr[0], next_hop_ip,
                     self.bind_next_hop)

    def _is_ours(self, token: bytes) -> bool:
        return self.keyring.signer(token) is not None

    def _absorbed(self, key) -> bool:
        """A retransmission of a request whose server transaction exists: it resends its
        last response or absorbs it (RFC 3261 §17.2.1, §17.2.2)."""
        st = self.server_txns.get(key)
        if st is None:
            return False
        self.stats["retransmissions_absorbed"] += 1
        st.on_request_retransmission()
        return True

    def _new_server_txn(self, msg: SipMessage, via: Via, source: Source, key) -> ServerTransaction:
        st = ServerTransaction(key, msg.method, reliable=source.transport != "udp",
                               send=_Replier(self.transports, source, reply_addr(source, via)),
                               scheduler=self.scheduler, timers=self.timers,
                               on_terminated=self._on_server_terminated)
        self.server_txns[key] = st
        return st

    def _server_terminated(self, st: ServerTransaction) -> None:
        if self.server_txns.get(st.key) is st:
            del self.server_txns[st.key]
        ctx = st.context
        st.context = None
        if ctx is not None:
            # The context <-> branch cycle: a late response to a branch still finds its
            # context, which no longer lists its branches.
            ctx.branches = []

    def local_reply(self, st: ServerTransaction, msg: SipMessage, status: int, reason: str,
                    to_tag: str = "", headers=(), top_via: bytes | None = None) -> None:
        """Answer through server transaction `st` (its request went on, or is a CANCEL)."""
        self.stats["local_replies"] += 1
        self.replies_local[status // 100] += 1
        ctx = st.context
        if top_via is None and isinstance(ctx, ResponseContext):
            top_via = ctx.top_via
        st.respond(status, build_response(msg, status, reason, to_tag=to_tag or self.identity.new_tag(),
                                          headers=headers, top_via=top_via))

    def _new_request(self, msg: SipMessage, via: Via, source: Source, key) -> None:
        method = msg.method
        top_via = with_received(via, source)
        if method in DIALOG_CREATING and msg.to_tag is None and not self.guard.admit(
                self.transports.backlog(), self.calls_in_setup):
            # Past capacity (gdispatch.overload): a new call is turned away before it
            # costs a transaction; what was accepted carries on.
            self.stats["overload_rejected"] += 1
            self._refuse(msg, source, 503, "Overloaded", self._retry_after, top_via)
            return
        st = self._proxy_new(msg, via, source, key, top_via)
        if st is not None and method == "INVITE" and st.last_status == 0:
            # RFC 3261 §16.2, §17.2.1: a 100 quenches the caller's retransmissions. It
            # goes once the INVITE is on its way, so that the forwarding does not wait
            # for it; an INVITE answered here gets its final alone, as from Kamailio's
            # sl_send_reply.
            self.replies_local[1] += 1
            st.respond(100, build_response(msg, 100, "Trying", top_via=top_via))

    def _proxy_new(self, msg: SipMessage, via: Via, source: Source, key, top_via: bytes | None
                   ) -> ServerTransaction | None:
        """Carry out what `routing.route_request` decides for a new request (RFC 3261
        §16.3-16.6). Only a request that goes on gets a server transaction (returned);
        one answered here is answered statelessly (`_refuse`)."""
        try:
            ruri = msg.uri
        except ParseError as e:
            self._refuse(msg, source, e.status, e.reason, top_via=top_via)
            return None
        decision = routing.route_request(
            msg, ruri, source, self.identity, self._is_ours, self.routes,
            draining=self.draining, no_route_reply=self.config.no_route_reply)
        if isinstance(decision, routing.Dispatch):
            return self._dispatch(msg, via, source, key, top_via, decision)
        if isinstance(decision, routing.InDialog):
            return self._in_dialog(msg, via, source, key, top_via, decision)
        if isinstance(decision, routing.Refuse):
            self._refuse(msg, source, decision.status, decision.reason, decision.headers, top_via)
        elif isinstance(decision, routing.RefuseInDialog):
            self._refuse_in_dialog(msg, source, decision.why, top_via)
        else:
            # An OPTIONS for the proxy itself (RFC 3261 §11), answered statelessly: a
            # scanner sweeping addresses with OPTIONS leaves no transaction behind.
            self._refuse(msg, source, 200, "OK", self._options_headers, top_via)
        return None

    def _dispatch_after_wait(self, short: list[Destination], msg: SipMessage, via: Via, source: Source, key,
                             top_via: bytes | None, decision: routing.Dispatch) -> None:
        assert self.leases is not None
        try:
            self.leases.wait(short)
        finally:
            self._slot_waits.discard(key)
        if key in self.server_txns or self.draining:
            return  # answered meanwhile; or draining: the caller's retransmission is refused
        try:
            st = self._dispatch(msg, via, source, key, top_via, decision, waited=True)
        except Exception:  # logged, as in the forker's own greenlets (forking._soon)
            log.exception("dispatching %s after waiting for a call slot", logsafe.text(msg.call_id))
            return
        if st is not None and st.last_status == 0:
            self.replies_local[1] += 1  # RFC 3261 §16.2, as in _new_request
            st.respond(100, build_response(msg, 100, "Trying", top_via=top_via))

    def _dispatch(self, msg: SipMessage, via: Via, source: Source, key, top_via: bytes | None,
                  decision: routing.Dispatch, waited: bool = False) -> ServerTransaction | None:
        """A new request for a route: choose its destinations (gdispatch.dispatcher) and
        walk them (gdispatch.proxy.forking)."""
        route = decision.route
        dset = self.dlist.get(route.set)
        options = self._select_options.get(id(route)) or self.default_options
        sips = msg.sips
        limit = route.limit
        # For a SIPS Request-URI the limit counts the destinations it may go to: the
        # whole order first, cut after those are kept.
        candidates = select(dset, route.algorithm, msg, 0 if sips else limit, options) if dset is not None else []
        method = msg.method
        if self.leases is not None and not waited and route.algorithm == ALG_CALL_LOAD and dset is not None \
                and method == "INVITE":
            short = self.leases.short(dset)
            if short:
                # A maxload destination is full by this node's slots, not by maxload:
                # the call waits for more in its own greenlet (bounded), the rest goes on.
                if key not in self._slot_waits:
                    self._slot_waits.add(key)
                    gevent.spawn(self._dispatch_after_wait, short, msg, via, source, key, top_via, decision)
                return None  # a retransmission meanwhile: the first copy waits already
        reason = "No Destination Available"
        if candidates and sips:
            # A SIPS Request-URI is carried over TLS on every hop (RFC 3261 §26.2.2,
            # RFC 5630: no last-hop exception): a destination reached over another
            # transport would downgrade it, so it is not tried for this request.
            candidates = [d for d in candidates if d.transport == "tls"]
            if limit:
                candidates = candidates[:limit]
            reason = "No TLS Destination Available"
        if not candidates:
            self.stats["no_destination"] += 1
            self._warn_no_destination(route.set, method, msg, "TLS " if sips else "active ")
            self._refuse(msg, source, route.no_destination_reply, reason, top_via=top_via)
            return None
        if self._debug:
            log.debug("dispatch %s call-id=%s route=%s set=%d alg=%d -> %s", method,
                      logsafe.text(msg.call_id), route.name or "-", route.set, route.algorithm,
                      " ".join(d.uri for d in candidates))
        self.stats["dispatched"] += 1
        st = self._new_server_txn(msg, via, source, key)
        ctx = ResponseContext(self, st, msg, route)
        ctx.to_tag = self.identity.new_tag()
        ctx.source = (source.transport, source.addr[0], source.addr[1])
        ctx.top_via = top_via
        st.context = ctx
        self.forker.dispatch(ctx, Walk(candidates, source, top_via, decision.popped, method in DIALOG_CREATING))
        return st

    def _warn_no_destination(self, setid: int, method: str, msg: SipMessage, what: str = "active ") -> None:
        """At most one warning a second per set: a whole set down at thousands of calls a
        second must not flood the log (nor spend the CPU writing it); `stats` counts them
        all."""
        now = self.scheduler.now()
        last, skipped = self._no_destination_log.get(setid, (-1e9, 0))
        if now - last < 1.0:
            self._no_destination_log[setid] = (last, skipped + 1)
            return
        self._no_destination_log[setid] = (now, 0)
        more = f" ({skipped} more since the last warning)" if skipped else ""
        log.warning("no %sdestination in set %d for %s %s%s", what, setid, method,
                    logsafe.text(msg.call_id), more)

    def _next_hop(self, uri: SipUri) -> tuple[str, tuple[str, int]] | None:
        return nexthop.next_hop(uri, self.next_hops, self.transports.can_reach)

    def _tls_peer(self, host: str, addr: tuple[str, int]) -> TlsPeer:
        return nexthop.tls_peer(self.dlist, host, addr)

    def _in_dialog(self, msg: SipMessage, via: Via, source: Source, key, top_via: bytes | None,
                   decision: routing.InDialog) -> ServerTransaction | None:
        """A request inside a dialog we record-routed, on to its next hop (RFC 3261 §16.4,
        §16.6) if the dialog's signature lets it go there (gdispatch.recordroute)."""
        hop = self._next_hop(decision.target)
        if hop is None:
            self._refuse(msg, source, 476, "Unresolvable Destination", top_via=top_via)
            return None
        why = self._dialog_refused(decision.token, msg, source, hop[1][0])
        if why:
            self._refuse_in_dialog(msg, source, why, top_via)
            return None
        copy = self.branches.send_first(msg, hop, source, top_via, decision.popped, decision.new_ruri,
                                        decision.add_headers, decision.remove, decision.socket)
        st = self._new_server_txn(msg, via, source, key)
        if msg.method == "BYE":
            self.calls.ended(msg.call_id)
        ctx = ResponseContext(self, st, msg, None)
        ctx.top_via = top_via
        st.context = ctx
        branch = Branch(ctx, None, hop)
        if hop[0] == "tls":
            branch.peer = self._tls_peer(decision.target.host, hop[1])
        ctx.branches.append(branch)
        ctx.outstanding = 1
        if copy is None:
            self.branches.no_listener(branch)
        else:
            self.branches.start_client_txn(branch, *copy)
        return st

    def _on_ack(self, msg: SipMessage, via: Via, source: Source) -> None:
        key = _server_key(msg, via, "INVITE")
        st = self.server_txns.get(key)
        if st is not None and not 200 <= st.last_status < 300:
            st.on_ack()  # the ACK of a non-2xx final: it ends here (RFC 3261 §17.2.1)
            return
        if st is None:
            tag = msg.to_tag
            if tag is not None and tag.startswith(_STATELESS_TAG):
                return  # the ACK of a stateless answer of ours: it ends here
        # The ACK of a 2xx is its own end-to-end request: route it statelessly (§16.11).
        try:
            ruri = msg.uri
        except ParseError:
            self.stats["bad_messages_dropped"] += 1
            return
        popped, signed, target, socket = routing.ack_target(msg, ruri, self.identity)
        if popped == 0:
            # Not for a dialog we record-routed: the ACK of a final whose transaction is
            # gone, or a stray.
            self.stats["bad_messages_dropped"] += 1
            return
        if target is None:
            self.stats["bad_messages_dropped"] += 1
            return
        if signed is None or (not routing.is_ip(target.host) and not self._is_ours(signed)):
            self._refuse_in_dialog(msg, source, "no signature of ours in the Route entry", None)
            return  # before any name in it is looked up
        hop = self._next_hop(target)
        if hop is None:
            return
        why = self._dialog_refused(signed, msg, source, hop[1][0])
        if why:
            self._refuse_in_dialog(msg, source, why, None)
            return
        self.stateless.forward_ack(msg, via, source, hop, popped, socket,
                                   self._tls_peer(target.host, hop[1]) if hop[0] == "tls" else None)

    def _on_cancel(self, msg: SipMessage, via: Via, source: Source) -> None:
        key = _server_key(msg, via, "CANCEL")
        cst = self.server_txns.get(key)
        if cst is not None:
            cst.on_request_retransmission()
            return
        st = self.server_txns.get(_server_key(msg, via, "INVITE"))
        top_via = with_received(via, source)
        if st is None:
            # Nothing to cancel: answered statelessly, as any request refused here.
            self._refuse(msg, source, 481, "Call/Transaction Does Not Exist", top_via=top_via)
            return
        # RFC 3261 §16.10: answer the CANCEL ourselves, then cancel every pending branch.
        cst = self._new_server_txn(msg, via, source, key)
        self.local_reply(cst, msg, 200, "OK", to_tag=(st.context.to_tag if st.context else ""), top_via=top_via)
        ctx = st.context
        if ctx is not None:
            self.forker.cancel(ctx)
        elif st.last_status < 200:
            self.local_reply(st, msg, 487, "Request Terminated", top_via=top_via)

    # ----------------------------------------------------------------- our own requests

    def originate(self, transport: str, addr: tuple[str, int], method: str, build: Callable[[bytes], bytes],
                  on_final: Callable[[int, SipMessage | None], None],
                  socket: Listen | None = None, peer: TlsPeer | None = None) -> ClientTransaction | None:
        """Send a request of our own (a keepalive ping): see `Branches.originate`."""
        return self.branches.originate(transport, addr, method, build, on_final, socket, peer)

    def unreachable(self, addr: tuple[str, int]) -> None:
        """An ICMP error named `addr`: see `Branches.unreachable`."""
        self.branches.unreachable(addr)

    # ----------------------------------------------------------------- responses

    def on_response(self, msg: SipMessage, source: Source) -> None:
        try:
            method = msg.cseq[1]
            ct = self._sent_with_this_via(msg)
            via = None if ct is not None else msg.top_via
        except ParseError:
            self.stats["bad_messages_dropped"] += 1
            return
        if via is not None:
            ct = self.client_txns.get((via.branch, method))
        if ct is not None:
            ct.receive_response(msg.status, msg)
        elif via is not None:
            self.stateless.stray_response(msg, via)

    def _sent_with_this_via(self, msg: SipMessage) -> ClientTransaction | None:
        """The client transaction of a branch whose Via is, byte for byte, the top Via of
        response `msg`: matched on its branch and CSeq method (RFC 3261 §17.1.3) without
        parsing a Via we wrote ourselves. None for anything else (a Via the next hop
        edited, a keepalive's transaction): `on_response` then parses and matches."""
        names = msg._names
        if "via" not in names:
            return None
        value = msg._value(names.index("via"))
        # The first value of the line: some peers join all the Vias on one line.
        comma = value.find(b",")
        if comma >= 0:
            value = value[:comma].rstrip()
        at = value.find(b";branch=")
        if at < 0:
            return None
        ct = self.client_txns.get((value[at + 8:].decode("latin-1"), msg.method))
        if ct is None:
            return None
        branch = ct.context
        if (type(branch) is not Branch or branch.listener is None
                or value != self.identity.via_for(branch.listener, ct.key[0])):
            return None
        return ct


def _server_key(msg: SipMessage, via: Via, method: str):
    branch = via.branch
    if branch and branch.startswith(MAGIC_COOKIE):
        # RFC 3261 §17.2.3: branch, sent-by and method (ACK/CANCEL match INVITE).
        return (branch, via.host, via.port, method)
    # RFC 2543 peers: match on the request's identifying fields instead.
    return ("2543", msg.call_id, msg.cseq[0], msg.from_tag, via.raw, method)
