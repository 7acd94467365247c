"""The stateful proxy: what happens to each SIP message (RFC 3261 §16).

Requests and responses arrive here from the transport shell, inline in the receiver
greenlet. The fast paths stay inline: retransmissions are absorbed by their server
transaction, responses are matched to their client transaction and relayed, ACKs and
in-dialog requests are loose-routed in arrival order (so a BYE never overtakes the REFER
sent before it). Only a new out-of-dialog request that must be dispatched gets a greenlet
of its own, which walks the destination list: send, wait for a final response or a
timeout, fail over to the next destination.

What a proxy sees most takes the short way (`gdispatch.sip.shortway`, `_short_way`,
`_sent_with_this_via`): a UDP request inside a dialog whose only Route is ours, a
response whose top Via is the one we wrote. It is read in fewer steps and handled by
the same transactions, with the same result; anything else goes the general way.

What lives elsewhere: message parsing and building (`gdispatch.sip`), transaction state
machines (`gdispatch.transaction`), the list and the algorithms (`gdispatch.dispatcher`),
sockets (`gdispatch.transport`).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
import zlib
from typing import Callable

import gevent
from gevent.event import Event

from gdispatch import logsafe
from gdispatch.builtin import Builtin
from gdispatch.calls import CallLoad
from gdispatch.config import Config, Route
from gdispatch.dispatcher.algorithms import ALG_PARALLEL, SelectOptions, compile_template, select
from gdispatch.dispatcher.destination import Destination, DispatcherList
from gdispatch.dispatcher.reload import identity
from gdispatch.dns import NextHopResolver, Resolver
from gdispatch.message_api import Attempt, FailureAction, RequestView, RouteChoice
from gdispatch.overload import LoadGuard
from gdispatch.plugins import PluginHost
from gdispatch.recordroute import PARAM as SIGNATURE_PARAM
from gdispatch.recordroute import Keyring, check, packed_address
from gdispatch.sip import (
    ParseError,
    SipMessage,
    SipUri,
    Via,
    build_ack,
    build_cancel,
    build_response,
    forward_request,
    parse_message,
    strip_top_via,
)
from gdispatch.sip.shortway import forward_in_dialog, read_in_dialog, read_response
from gdispatch.transaction.client import ClientTransaction
from gdispatch.transaction.server import ServerTransaction
from gdispatch.transaction.states import COMPLETED, TERMINATED
from gdispatch.transaction.timers import Scheduler, TimerConfig
from gdispatch.transport import Source, TransportError, Transports

log = logging.getLogger("gdispatch.proxy")

MAGIC_COOKIE = "z9hG4bK"
# Requests that may create a dialog get our Record-Route (RFC 3261 §16.6 step 4).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
_RPORT_EMPTY = re.compile(rb";\s*rport(?=\s*(?:;|$))", re.IGNORECASE)
LOCAL_TIMEOUT = 408
# The To tag of what we answer without a transaction starts so in every worker (the
# others' tags are "gd" and hex digits): the ACK of such an answer is absorbed wherever it
# arrives, with nothing to look up (Kamailio's sl module does the same with its tags).
STATELESS_TAG = "gdsl-"
_STATELESS_TAG = STATELESS_TAG.encode()


def _status_line(status: int, reason: bytes) -> bytes:
    return b"SIP/2.0 %d %s" % (status, reason)


class Branch:
    """One attempt of a forwarded request: a destination and its client transaction.

    Its client transaction sends through `send` and builds ACKs with `make_ack`: bound
    methods of an object that exists anyway, rather than closures, which would add a
    function and a cell per captured variable to every transaction (objects the cyclic
    garbage collector scans while the transaction lingers)."""

    __slots__ = (
        "cancel_state",
        "ct",
        "ctx",
        "dest",
        "final",
        "key",
        "listener",
        "next_hop",
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
        self.timer = None
        # "" nothing, "pending" (send CANCEL on the first provisional), "sent"
        self.cancel_state = ""
        self.key = None
        self.listener = None  # the socket the request leaves from

    def send(self, data: bytes) -> None:
        transport, addr = self.next_hop
        self.ctx.proxy.transports.send(transport, addr, data, on_error=self._transport_failed,
                                       listener=self.listener)

    def _transport_failed(self) -> None:
        ct = self.ct
        if ct is not None and ct.state != "terminated":
            ct.on_transport_error()

    def make_ack(self, response: SipMessage) -> bytes:
        """The ACK of a non-2xx final (RFC 3261 §17.1.1.3), built from the request the
        transaction still holds at that point."""
        return build_ack(parse_message(self.ct.request), response)


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


class _NotingReplier(_Replier):
    """The replier of an INVITE that had a Route, with several workers: a non-2xx final
    is noted for the other workers before it leaves, so that the one that gets its ACK
    hands it back (gdispatch.acknotes)."""

    __slots__ = ("acks", "key")

    def __init__(self, transports: Transports, source: Source, addr: tuple[str, int], acks, key):
        super().__init__(transports, source, addr)
        self.acks = acks
        self.key = key

    def __call__(self, data: bytes) -> None:
        if data[8:9] in b"3456":  # "SIP/2.0 " then the status's first digit
            self.acks.note(self.key)
        super().__call__(data)


class ResponseContext:
    """The proxy's state for one server transaction it forwards (RFC 3261 §16.7)."""

    __slots__ = (
        "best",
        "branches",
        "cancelled",
        "final_sent",
        "proxy",
        "request",
        "route",
        "st",
        "to_tag",
        "event",
        "outstanding",
        "last_status",
        "last_outcome",
        "counts_load",
        "reply_override",
        "source",
        "top_via",
        "walk",
    )

    def __init__(self, proxy: Proxy, st: ServerTransaction, request: SipMessage, route: Route | None):
        self.proxy = proxy
        self.st = st
        self.request = request
        self.branches: list[Branch] = []
        self.best: SipMessage | None = None
        self.final_sent = False
        self.cancelled = False
        # The walker greenlet waits on `event` until `outstanding` branches are over (or a
        # 2xx came); `last_status` is the final status of the last branch that ended.
        self.event: Event | None = None
        self.outstanding = 0
        self.last_status = 0
        self.last_outcome = ""  # what became of the last branch, for the log ("answered 486")
        self.route = route
        self.to_tag = ""
        # A dispatched INVITE: its destination's active-call count follows it.
        self.counts_load = route is not None and request.method == "INVITE"
        # (code, reason) a plugin chose to answer with instead of the best response.
        self.reply_override: tuple[int, str] | None = None
        self.source: tuple[str, str, int] | None = None  # (transport, ip, port) for plugins
        # The request's top Via with received/rport, for the answers made here (RFC 3581 §4).
        self.top_via: bytes | None = None
        # The first attempt sent inline, without a walker greenlet yet: the walker's
        # arguments, kept to start one if that attempt fails (Proxy._dispatch).
        self.walk: tuple | None = None


class Proxy:
    def __init__(self, config: Config, transports: Transports, scheduler: Scheduler,
                 dispatcher_list: DispatcherList,
                 resolve_now: Callable[[Destination], list[tuple[str, int]]] | None = None,
                 plugins: PluginHost | None = None, keyring: Keyring | None = None,
                 next_hops: NextHopResolver | None = None):
        self.config = config
        # Resolves the host name of a next hop inside a dialog (`_next_hop`).
        self.next_hops = next_hops if next_hops is not None else NextHopResolver(Resolver())
        # The keys of our Record-Route signatures (gdispatch.recordroute); a reload may
        # give new ones.
        self.keyring = keyring or Keyring.ephemeral()
        self._bind_next_hop = config.security.dialog_next_hop == "destination"
        self.transports = transports
        self.scheduler = scheduler
        self.dlist = dispatcher_list
        # Resolves a destination marked "no DNS resolution at load" (flag 16) when a
        # request is sent to it; called from the request's greenlet.
        self.resolve_now = resolve_now
        # Plugins: the built-in behaviour (route tables, failover policy) is registered as
        # the plugin "builtin"; other plugins' hooks are only called when some exist.
        self.plugins = plugins if plugins is not None else PluginHost()
        self.builtin = Builtin(config.routes)
        self.plugins.register_builtin(self.builtin)
        # Told when a request to a destination timed out or could not be sent, or got one
        # of `mark_codes` (the prober then counts it against the destination).
        self.on_traffic_failure: Callable[[Destination, str], None] | None = None
        self.mark_codes: frozenset[int] = config.probing.mark_codes
        # Set on SIGTERM: new dialogs are refused (503 with Retry-After), requests inside
        # dialogs and transactions in progress carry on.
        self.draining = False
        self.last_message_at = 0.0  # while draining: when the last message arrived
        t = config.timers
        self.timers = TimerConfig(t1=t.t1, t2=t.t2, t4=t.t4, linger=t.wt_timer or None)
        self.fr_timer = t.fr_timer
        self.fr_inv_timer = t.fr_inv_timer
        self.server_txns: dict = {}
        self.client_txns: dict = {}
        self.stats: dict[str, int] = dict.fromkeys((
            "requests", "responses", "retransmissions_absorbed", "bad_messages_dropped",
            "bad_requests_answered", "dispatched", "failovers", "no_destination", "local_replies",
            "stray_responses", "overload_rejected", "in_dialog_refused",
        ), 0)
        self._branch_ids = itertools.count(1)
        self._branch_salt = "%x" % (os.getpid() & 0xFFFF)
        self._tag_ids = itertools.count(1)
        # Who we are: our listen addresses (host, port) and the domains we serve.
        self.local_hostports: set[tuple[str, int]] = set()
        self.local_hosts: set[str] = set(config.domains)
        for lst in transports.listeners:
            self.local_hostports.add((lst.listen.host, lst.listen.port))
            self.local_hosts.add(lst.listen.host)
            if lst.private is not None:
                # A worker's own port is in the Via of what it sends (loop detection).
                self.local_hostports.add((lst.private.listen.host, lst.private.listen.port))
        self._via_markers = [self._hostport_bytes(h, p) for h, p in self.local_hostports]
        self._via_prefixes: dict = {}  # listener -> b"SIP/2.0/UDP host:port;branch="
        self._rr_prefixes: dict = {}  # listener -> b"<sip:host:port;lr;gds=" (then the signature and ">")
        # How the Route values our Record-Route entries come back as begin: a request
        # whose only Route is one of them may take the short way (gdispatch.sip.shortway).
        self._own_routes = frozenset(self._rr_prefix(lst) for lst in transports.listeners)
        self._options_headers = (
            b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, REFER, NOTIFY, SUBSCRIBE, MESSAGE",
            b"Accept: application/sdp",
        ) + ((b"Server: " + config.server_header.encode(),) if config.server_header else ())
        # The transactions' callbacks, bound once: a bound method made per transaction
        # would be one more object for each to hold while it lingers.
        self._on_server_terminated = self._server_terminated
        self._on_client_terminated = self._client_terminated
        self._on_branch_response = self._branch_response
        self._on_branch_timeout = self._branch_timeout
        self._on_branch_transport_error = self._branch_transport_error
        self._debug = log.isEnabledFor(logging.DEBUG)
        self.calls = CallLoad(scheduler, expire=config.call_expire, init_expire=config.call_init_expire)
        self._select_options = {
            id(r): SelectOptions(
                hash_user_only=config.hash_user_only,
                hash_template=compile_template(r.hash_template) if r.hash_template else None,
                kamailio_compat=config.kamailio_compat,
            )
            for r in config.routes
        }
        self._default_options = SelectOptions(hash_user_only=config.hash_user_only,
                                              kamailio_compat=config.kamailio_compat)
        self._needs_source_sets = any(r.from_set is not None for r in config.routes)
        self._source_index: dict[str, list[tuple[int | None, int]]] | None = None
        # reload.identity(destination) -> [sent, answered, failed], see destination_counters
        self.dest_counts: dict[tuple, list[int]] = {}
        ov = config.overload
        self.guard = LoadGuard(scheduler.now, max_backlog=ov.max_backlog, max_calls_in_setup=ov.max_calls_in_setup,
                               hold=ov.hold, retry_after=ov.retry_after)
        self._retry_after = (b"Retry-After: %d" % ov.retry_after,)
        self.calls_in_setup = 0  # dispatch greenlets running (requests waiting for a final)
        # With several workers (gdispatch.workers): the notes of the INVITE transactions
        # whose ACK must come back to them (gdispatch.acknotes), and how a datagram is
        # handed to another worker: hand_over(data, source, worker or None for the
        # owner of its call) -> True when it went.
        self.acks = None
        self.hand_over: Callable[[bytes, Source, int | None], bool] | None = None
        self._no_destination_log: dict[int, tuple[float, int]] = {}  # set -> (last warning, skipped)

    def _counts(self, dest: Destination) -> list[int]:
        key = identity(dest)
        c = self.dest_counts.get(key)
        if c is None:
            c = self.dest_counts[key] = [0, 0, 0]
        return c

    def destination_counters(self, dest: Destination, others=()) -> dict[str, int]:
        """INVITEs sent to a destination, answered 2xx, failed (final >= 300 or no answer);
        kept across reloads for the same destination. `others`: the `dest_counts` of
        the other workers, added in."""
        key = identity(dest)
        sent = answered = failed = 0
        for table in (self.dest_counts, *others):
            s, a, f = table.get(key, (0, 0, 0))
            sent, answered, failed = sent + s, answered + a, failed + f
        return {"CALLS_SENT": sent, "CALLS_ANSWERED": answered, "CALLS_FAILED": failed}

    def calls_in_progress(self) -> int:
        """Forwarded requests still waiting for their final response."""
        return sum(1 for st in self.server_txns.values()
                   if st.context is not None and not st.context.final_sent)

    def set_list(self, dispatcher_list: DispatcherList) -> None:
        """Swap in a newly loaded list (the old one keeps serving what it started)."""
        self.dlist = dispatcher_list
        self._source_index = None

    def _source_sets(self, source: Source) -> frozenset[int]:
        """The sets having a destination at the request's source address (like Kamailio's
        `ds_is_from_list` in its default mode: IP and port, any transport; a destination
        written without a port matches any port)."""
        index = self._source_index
        if index is None:
            index = {}
            for d in self.dlist.destinations():
                if d.address is not None:
                    index.setdefault(d.address[0], []).append((d.sip_uri.port, d.setid))
            self._source_index = index
        ip, port = source.addr
        entries = index.get(ip)
        if not entries:
            return frozenset()
        return frozenset(setid for p, setid in entries if p is None or p == port)

    # ----------------------------------------------------------------- helpers

    @staticmethod
    def _hostport_bytes(host: str, port: int) -> bytes:
        return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()

    def _is_local_uri(self, uri: SipUri) -> bool:
        host = uri.host
        if host not in self.local_hosts:
            return False
        if (host, uri.port or (5061 if uri.scheme == "sips" else 5060)) in self.local_hostports:
            return True
        # A domain name of ours (not one of our IPs) matches whatever the port.
        return host in self.config.domains

    def _new_branch_id(self, loop_hash: str) -> str:
        return f"{MAGIC_COOKIE}{loop_hash}.{self._branch_salt}{next(self._branch_ids):x}"

    def _loop_hash(self, msg: SipMessage) -> str:
        # RFC 3261 §16.6 step 8: the part of the branch that detects loops covers the
        # fields a spiral would change (Request-URI, Route) and those of the request.
        to_tag = msg.to_tag or b""
        from_tag = msg.from_tag or b""
        data = b"|".join((msg.ruri, msg._first("route") or b"", msg.call_id, b"%d" % msg.cseq[0], from_tag, to_tag))
        return "%08x" % zlib.crc32(data)

    def _via_for(self, listener, branch: str) -> bytes:
        prefix = self._via_prefixes.get(listener)
        if prefix is None:
            lst = listener.listen
            host = f"[{lst.host}]" if lst.family_v6 else lst.host
            prefix = f"SIP/2.0/{lst.transport.upper()} {host}:{lst.port};branch=".encode()
            self._via_prefixes[listener] = prefix
        return prefix + branch.encode()

    def _rr_prefix(self, listener) -> bytes:
        """Our Record-Route value for `listener` up to its signature (gdispatch.recordroute):
        the shared address, never a worker's own port (RFC 3261 §16.6 step 4)."""
        prefix = self._rr_prefixes.get(listener)
        if prefix is None:
            lst = listener.public.listen
            host = f"[{lst.host}]" if lst.family_v6 else lst.host
            tp = ";transport=tcp" if lst.transport == "tcp" else ""
            prefix = self._rr_prefixes[listener] = f"<sip:{host}:{lst.port}{tp};lr;{SIGNATURE_PARAM}=".encode()
        return prefix

    def _dialog_refused(self, token: bytes | None, msg: SipMessage, source: Source, next_hop_ip: str) -> str:
        """'' when a request inside a dialog may go on to `next_hop_ip`, else why not
        (gdispatch.recordroute: our Route entry's signature, the dialog's destination)."""
        return check(self.keyring, token, msg.call_id, msg.from_tag, msg.to_tag, source.addr[0], next_hop_ip,
                     self._bind_next_hop)

    def _refuse_in_dialog(self, msg: SipMessage, via: Via, source: Source, why: str,
                          top_via: bytes | None) -> None:
        """A request inside a dialog that is not ours to follow: 403, counted, and it
        goes nowhere (an ACK gets no answer, RFC 3261 §17.2.3)."""
        self.stats["in_dialog_refused"] += 1
        if self._debug:
            log.debug("refused %s call-id=%s from %r: %s", msg.method, logsafe.text(msg.call_id), source, why)
        if msg.method != "ACK":
            self._refuse(msg, via, source, 403, "Forbidden", top_via=top_via)

    @staticmethod
    def _reply_addr(source: Source, via: Via) -> tuple[str, int]:
        """Where a response goes: RFC 3261 §18.2.2 and RFC 3581 §4 (rport)."""
        if source.transport != "udp" or via.rport is not None:
            return source.addr
        return (source.addr[0], via.port or 5060)

    def _with_received(self, via: Via, source: Source) -> bytes | None:
        """The top Via with received/rport filled in (RFC 3261 §18.2.1, RFC 3581 §4), or
        None when it needs no change."""
        ip, port = source.addr
        raw = via.raw
        changed = False
        if via.rport == "":
            raw = _RPORT_EMPTY.sub(b";rport=%d" % port, raw, count=1)
            changed = True
        if (changed or via.host != ip) and via.received is None:
            raw += b";received=" + ip.encode()
            changed = True
        return raw if changed else None

    def _new_tag(self, prefix: str = "gd") -> str:
        return f"{prefix}{self._branch_salt}{next(self._tag_ids):x}"

    # ----------------------------------------------------------------- entry

    def on_message(self, data: bytes, source: Source) -> None:
        if data[:1] in b"\r\n" and not data.strip(b"\r\n"):
            return  # keep-alive (RFC 5626 §3.5.1)
        if self.draining:
            self.last_message_at = time.monotonic()
        if source.transport == "udp":
            # The short way (gdispatch.sip.shortway) for what a proxy sees most: the
            # responses to what it sent, the requests of the dialogs it record-routed.
            if data[:8] == b"SIP/2.0 ":
                msg = read_response(data)
                if msg is not None:
                    self.stats["responses"] += 1
                    ct = self._sent_with_this_via(msg)
                    if ct is not None:
                        ct.receive_response(msg.status, msg)
                    else:
                        self.on_response(msg, source)
                    return
            else:
                found = read_in_dialog(data, self._own_routes)
                if found is not None and self._short_way(*found, source):
                    return
        try:
            msg = parse_message(data, stream=source.transport != "udp")
        except ParseError as e:
            self.stats["bad_messages_dropped"] += 1
            if self._debug:
                log.debug("dropped an unparsable message from %r: %s", source, e.reason)
            return
        if msg.is_request:
            self.stats["requests"] += 1
            self.on_request(msg, source)
        else:
            self.stats["responses"] += 1
            self.on_response(msg, source)

    # ----------------------------------------------------------------- requests

    def _stateless_reply(self, msg: SipMessage, source: Source, status: int, reason: str, headers=(),
                         top_via: bytes | None = None) -> None:
        """Answer without a transaction (Kamailio's sl_send_reply): sent once for each copy
        of the request that arrives, nothing kept, nothing resent, so that a forged
        source gets no more bytes than it sent. The To tag is the same for every copy
        of a request (RFC 3261 §8.2.6.2), and its ACK is absorbed wherever it lands."""
        try:
            via = msg.top_via
            if top_via is None:
                top_via = self._with_received(via, source)
            tag = None
            if status > 100:
                tag = "%s%08x" % (STATELESS_TAG, zlib.crc32(via.raw + (msg._first("call-id") or b"")))
            data = build_response(msg, status, reason, to_tag=tag, headers=headers, top_via=top_via)
        except ParseError:
            self.stats["bad_messages_dropped"] += 1
            return
        self.transports.reply(source, self._reply_addr(source, via), data)

    def _refuse(self, msg: SipMessage, via: Via, source: Source, status: int, reason: str, headers=(),
                top_via: bytes | None = None) -> None:
        """A new request answered here, before it became a transaction: statelessly
        (RFC 3261 §16.3 lets a proxy answer a request it will not forward, and a
        transaction would resend a final to the source 10 times, §17.2.1)."""
        self.stats["local_replies"] += 1
        self._stateless_reply(msg, source, status, reason, headers, top_via)

    def _server_key(self, msg: SipMessage, via: Via, method: str):
        branch = via.branch
        if branch and branch.startswith(MAGIC_COOKIE):
            # RFC 3261 §17.2.3: branch, sent-by and method (ACK/CANCEL match INVITE).
            return (branch, via.host, via.port, method)
        # RFC 2543 peers: match on the request's identifying fields instead.
        return ("2543", msg.call_id, msg.cseq[0], msg.from_tag, via.raw, method)

    def on_request(self, msg: SipMessage, source: Source) -> None:
        try:
            msg.validate_request()
            via = msg.top_via
        except ParseError as e:
            if msg.method != "ACK":
                self.stats["bad_requests_answered"] += 1
                self._stateless_reply(msg, source, e.status, e.reason)
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
        key = self._server_key(msg, via, method)
        if not self._absorbed(key):
            self._new_request(msg, via, source, key)

    def _absorbed(self, key) -> bool:
        """A retransmission of a request whose server transaction exists: it resends its
        last response or absorbs it (RFC 3261 §17.2.1, §17.2.2)."""
        st = self.server_txns.get(key)
        if st is None:
            return False
        self.stats["retransmissions_absorbed"] += 1
        st.on_request_retransmission()
        return True

    def _short_way(self, msg: SipMessage, route: int, token: bytes, source: Source) -> bool:
        """A request inside a dialog, read by `read_in_dialog` (valid, its only Route our
        own entry, signed `token`), forwarded to its Request-URI as the general way
        would: the ACK of a 2xx statelessly (RFC 3261 §16.11), another request through a
        server and a client transaction (§16.4, §16.6). False, with nothing done, for
        what the general way must see: the ACK of a non-2xx final, a loop, a Request-URI
        that is ours or a host name, a signature that does not let it pass (the general
        way refuses it)."""
        uri = msg.uri
        host = uri.host
        if not _is_ip(host) or self._is_local_uri(uri):
            return False
        via = msg.top_via
        method = msg.method
        hop = ("udp", (host, uri.port or 5060))
        if method == "ACK":
            key = self._server_key(msg, via, "INVITE")
            st = self.server_txns.get(key)
            if st is not None and not 200 <= st.last_status < 300:
                return False
            if st is None and self.acks is not None and self._ack_noted_elsewhere(msg, key, source):
                return True
            if self._dialog_refused(token, msg, source, host):
                return False
            self.stats["requests"] += 1
            self._forward_ack(msg, via, source, hop, 1, route)
            return True
        if self._is_loop(msg):
            return False
        key = self._server_key(msg, via, method)
        if key in self.server_txns:
            self.stats["requests"] += 1
            return self._absorbed(key)  # a retransmission: checked when it first came
        if self._dialog_refused(token, msg, source, host):
            return False
        self.stats["requests"] += 1
        listener = self.transports.listener_for("udp", host)
        top_via = self._with_received(via, source)
        if listener is None:
            self._no_listener(self._in_dialog_branch(self._new_server_txn(msg, via, source, key), msg, hop, top_via))
            return True
        branch_id = self._new_branch_id(self._loop_hash(msg))
        data = forward_in_dialog(msg, route, self._via_for(listener, branch_id), top_via)
        # The request leaves first and the books are kept after: at low load every step
        # before the sendto adds its cold-cache cost to the latency (bench/PROFILE.md,
        # sixth pass). Nothing in between yields, so no response can come before the
        # transactions exist. A send that fails is left to the client transaction, which
        # tries once more and reports the error as the general way does.
        try:
            self.transports.send("udp", hop[1], data, listener=listener)
            sent = True
        except OSError:
            sent = False
        st = self._new_server_txn(msg, via, source, key)
        branch = self._in_dialog_branch(st, msg, hop, top_via)
        self._start_branch_transaction(branch, listener, branch_id, data, sent)
        return True

    def _new_server_txn(self, msg: SipMessage, via: Via, source: Source, key) -> ServerTransaction:
        if self.acks is not None and msg.method == "INVITE" and source.transport == "udp" and msg.has("route"):
            send = _NotingReplier(self.transports, source, self._reply_addr(source, via), self.acks, key)
        else:
            send = _Replier(self.transports, source, self._reply_addr(source, via))
        st = ServerTransaction(key, msg.method, reliable=source.transport != "udp", send=send,
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

    def _local_reply(self, st: ServerTransaction, msg: SipMessage, status: int, reason: str,
                     to_tag: str = "", headers=(), top_via: bytes | None = None) -> None:
        """Answer through server transaction `st` (its request went on, or is a CANCEL)."""
        self.stats["local_replies"] += 1
        ctx = st.context
        if top_via is None and isinstance(ctx, ResponseContext):
            top_via = ctx.top_via
        st.respond(status, build_response(msg, status, reason, to_tag=to_tag or self._new_tag(), headers=headers,
                                          top_via=top_via))

    def _new_request(self, msg: SipMessage, via: Via, source: Source, key) -> None:
        method = msg.method
        top_via = self._with_received(via, source)
        if method in DIALOG_CREATING and msg.to_tag is None and not self.guard.admit(
                self.transports.backlog(), self.calls_in_setup):
            # Past capacity (gdispatch.overload): a new call is turned away before it
            # costs a transaction; what was accepted carries on.
            self.stats["overload_rejected"] += 1
            self._refuse(msg, via, source, 503, "Overloaded", self._retry_after, top_via)
            return
        st = self._proxy_new(msg, via, source, key, top_via)
        if st is not None and method == "INVITE" and st.last_status == 0:
            # RFC 3261 §16.2, §17.2.1: a 100 quenches the caller's retransmissions. It
            # goes once the INVITE is on its way (or its walker started), so that the
            # forwarding does not wait for it; an INVITE answered here gets its final
            # alone, as from Kamailio's sl_send_reply.
            st.respond(100, build_response(msg, 100, "Trying", top_via=top_via))

    def _proxy_new(self, msg: SipMessage, via: Via, source: Source, key, top_via: bytes | None
                   ) -> ServerTransaction | None:
        """Check, route and dispatch a new request (RFC 3261 §16.3-16.6), or answer it.
        Only a request that goes on gets a server transaction (returned); one answered
        here is answered statelessly (`_refuse`)."""
        method = msg.method
        mf = msg.max_forwards
        try:
            ruri = msg.uri
        except ParseError as e:
            self._refuse(msg, via, source, e.status, e.reason, top_via=top_via)
            return None
        if mf is not None and mf <= 0:
            # RFC 3261 §16.3 step 3; an OPTIONS with Max-Forwards 0 asks about us (§11).
            if method == "OPTIONS":
                self._answer_options(msg, via, source, top_via)
            else:
                self._refuse(msg, via, source, 483, "Too Many Hops", top_via=top_via)
            return None
        if self._is_loop(msg):
            self._refuse(msg, via, source, 482, "Loop Detected", top_via=top_via)
            return None
        routes = msg.routes if msg.has("route") else []
        # RFC 3261 §16.4: a strict router put our Record-Route URI in the Request-URI.
        strict = bool(routes) and self._is_local_uri(ruri) and "lr" in ruri.params
        popped = 0
        if not strict:
            while popped < len(routes) and self._is_local_uri(routes[popped].uri):
                popped += 1
        if msg.to_tag is not None:
            return self._in_dialog(msg, via, source, key, ruri, routes, popped, strict, top_via)
        # Out of dialog.
        if popped < len(routes) or strict:
            self._refuse(msg, via, source, 403, "Relaying Forbidden", top_via=top_via)
            return None
        local = self._is_local_uri(ruri)
        if local and method == "OPTIONS" and ruri.user is None:
            self._answer_options(msg, via, source, top_via)
            return None
        route = self._match_route(msg, ruri, source)
        if route is None or not (local or route.domains or route.relay):
            # No open relay: a request for a domain that is neither ours nor named by a
            # route is refused.
            if not local:
                self._refuse(msg, via, source, 403, "Relaying Forbidden", top_via=top_via)
            else:
                self._refuse(msg, via, source, self.config.no_route_reply, "No Route", top_via=top_via)
            return None
        if route.reply:
            self._refuse(msg, via, source, route.reply, route.reply_reason or "Rejected", top_via=top_via)
            return None
        if self.draining:
            self._refuse(msg, via, source, 503, "Shutting Down", (b"Retry-After: 5",), top_via)
            return None
        dset = self.dlist.get(route.set)
        options = self._select_options.get(id(route)) or self._default_options
        candidates = select(dset, route.algorithm, msg, route.limit, options) if dset is not None else []
        if not candidates:
            self.stats["no_destination"] += 1
            self._warn_no_destination(route.set, method, msg)
            self._refuse(msg, via, source, route.no_destination_reply, "No Destination Available", top_via=top_via)
            return None
        if self._debug:
            log.debug("dispatch %s call-id=%s route=%s set=%d alg=%d -> %s", method,
                      logsafe.text(msg.call_id), route.name or "-", route.set, route.algorithm,
                      " ".join(d.uri for d in candidates))
        self.stats["dispatched"] += 1
        st = self._new_server_txn(msg, via, source, key)
        ctx = ResponseContext(self, st, msg, route)
        ctx.to_tag = self._new_tag()
        ctx.source = (source.transport, source.addr[0], source.addr[1])
        ctx.top_via = top_via
        st.context = ctx
        self.calls_in_setup += 1  # until the walk ends
        self._dispatch(ctx, (candidates, source, top_via, popped, method in DIALOG_CREATING))
        return st

    def _warn_no_destination(self, setid: int, method: str, msg: SipMessage) -> None:
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
        log.warning("no active destination in set %d for %s %s%s", setid, method,
                    logsafe.text(msg.call_id), more)

    def _match_route(self, msg: SipMessage, ruri: SipUri, source: Source):
        plugins = self.plugins
        if plugins.user_implemented("gdispatch_choose_route"):
            view = RequestView(msg, (source.transport, source.addr[0], source.addr[1]))
            choice = plugins.call_first("gdispatch_choose_route", request=view,
                                        source_sets=self._source_sets(source))
            return _as_route(choice) if isinstance(choice, RouteChoice) else choice
        sets = self._source_sets(source) if self._needs_source_sets else frozenset()
        method = msg.method
        for r in self.config.routes:
            if r.matches(method, ruri.user, ruri.host, sets):
                return r
        return None

    def _answer_options(self, msg: SipMessage, via: Via, source: Source, top_via: bytes | None) -> None:
        """An OPTIONS for the proxy itself (RFC 3261 §11), answered statelessly: a scanner
        sweeping addresses with OPTIONS leaves no transaction behind."""
        self._refuse(msg, via, source, 200, "OK", self._options_headers, top_via)

    def _is_loop(self, msg: SipMessage) -> bool:
        """RFC 3261 §16.3 step 4: a Via of ours whose branch carries this request's hash."""
        if msg._names.count("via") < 2 and b"," not in (msg._first("via") or b""):
            return False  # a single Via is the sender's own: no spiral through us yet
        markers = self._via_markers
        if not any(m in v for v in msg.get_all("via") for m in markers):
            return False
        expect = MAGIC_COOKIE + self._loop_hash(msg) + "."
        for v in msg.vias:
            if (v.host, v.port or 5060) in self.local_hostports and v.branch and v.branch.startswith(expect):
                return True
        return False

    def _next_hop(self, uri: SipUri) -> tuple[str, tuple[str, int]] | None:
        """RFC 3263 §4 for a Route entry or Request-URI inside a dialog: the transport and
        an explicit port are the URI's; an IP literal is used as is, a host name goes
        through the project's resolver (SRV when the URI has no port, then A/AAAA; cached,
        and waited for at most the resolver's timeout: gdispatch.dns.nexthop)."""
        transport = uri.transport
        port = uri.port or (5061 if uri.scheme == "sips" else 5060)
        host = uri.host
        if _is_ip(host):
            return transport, (host, port)
        addresses = self.next_hops.resolve(uri.scheme, host, uri.port, transport)
        if not addresses:
            return None
        # The first address a listener can send to: an AAAA answer is of no use without
        # an IPv6 listen address (RFC 3263 §4.3: try the next).
        for addr in addresses:
            if not self.transports.can_reach(transport, addr[0]):
                return transport, addr
        return transport, addresses[0]

    def _in_dialog(self, msg: SipMessage, via: Via, source: Source, key, ruri: SipUri, routes, popped: int,
                   strict: bool, top_via: bytes | None) -> ServerTransaction | None:
        """Loose routing of a request inside a dialog (RFC 3261 §16.4, §16.6 step 6), for
        the dialogs this proxy record-routed only (gdispatch.recordroute)."""
        new_ruri = None
        add_headers: list[bytes] = []
        remove = ()
        if strict:
            # Our URI is the Request-URI: the last Route is the real target (§16.4).
            token = ruri.params.get(SIGNATURE_PARAM)
            new_ruri = routes[-1].uri_raw
            remove = ("route",)
            add_headers = [b"Route: " + r.raw for r in routes[:-1]]
            target = routes[-1].uri
            popped = 0
        elif popped == 0:
            self._refuse(msg, via, source, 404, "Not Here", top_via=top_via)
            return None
        else:
            token = next((t for t in (r.uri.params.get(SIGNATURE_PARAM) for r in routes[:popped]) if t), None)
            if popped < len(routes):
                target = routes[popped].uri
                if "lr" not in target.params:
                    # The next hop is a strict router (§16.6 step 6): it gets the route as
                    # Request-URI and the Request-URI goes to the end of the route set.
                    new_ruri = routes[popped].uri_raw
                    remove = ("route",)
                    add_headers = [b"Route: " + r.raw for r in routes[popped + 1:]] + [b"Route: <" + msg.ruri + b">"]
                    popped = 0
            else:
                target = ruri
        signed = token.encode() if token else None
        if signed is None or self.keyring.signer(signed) is None:
            # Refused before a host name in it is looked up: a forged request must not
            # make the proxy query DNS for names an attacker chose.
            self._refuse_in_dialog(msg, via, source, "no signature of ours in the Route entry", top_via)
            return None
        hop = self._next_hop(target)
        if hop is None:
            self._refuse(msg, via, source, 476, "Unresolvable Destination", top_via=top_via)
            return None
        why = self._dialog_refused(signed, msg, source, hop[1][0])
        if why:
            self._refuse_in_dialog(msg, via, source, why, top_via)
            return None
        st = self._new_server_txn(msg, via, source, key)
        branch = self._in_dialog_branch(st, msg, hop, top_via)
        self._send_branch(branch, source, top_via, popped, record=False, new_ruri=new_ruri,
                          add_headers=add_headers, remove=remove)
        return st

    def _in_dialog_branch(self, st: ServerTransaction, msg: SipMessage, hop, top_via: bytes | None) -> Branch:
        """The single branch of a request inside a dialog, to `hop`; a BYE ends the call
        for the call-load counts."""
        if msg.method == "BYE":
            self.calls.ended(msg.call_id)
        ctx = ResponseContext(self, st, msg, None)
        ctx.top_via = top_via
        st.context = ctx
        branch = Branch(ctx, None, hop)
        ctx.branches.append(branch)
        return branch

    def _on_ack(self, msg: SipMessage, via: Via, source: Source) -> None:
        key = self._server_key(msg, via, "INVITE")
        st = self.server_txns.get(key)
        if st is not None and not 200 <= st.last_status < 300:
            st.on_ack()  # the ACK of a non-2xx final: it ends here (RFC 3261 §17.2.1)
            return
        if st is None:
            tag = msg.to_tag
            if tag is not None and tag.startswith(_STATELESS_TAG):
                return  # the ACK of a stateless answer of ours: it ends here
            if self.acks is not None and self._ack_noted_elsewhere(msg, key, source):
                return
        # The ACK of a 2xx is its own end-to-end request: route it statelessly (§16.11).
        try:
            ruri = msg.uri
        except ParseError:
            self.stats["bad_messages_dropped"] += 1
            return
        routes = msg.routes if msg.has("route") else []
        popped = 0
        while popped < len(routes) and self._is_local_uri(routes[popped].uri):
            popped += 1
        if popped == 0:
            # Not for a dialog we record-routed: the ACK of a non-2xx final, which with
            # several workers may have come to another worker than the INVITE's
            # (gdispatch.steering: `worker_for`), or a stray.
            if st is None and self._hand_over(msg, source, None):
                return
            self.stats["bad_messages_dropped"] += 1
            return
        target = routes[popped].uri if popped < len(routes) else ruri
        token = next((t for t in (r.uri.params.get(SIGNATURE_PARAM) for r in routes[:popped]) if t), None)
        signed = token.encode() if token else None
        if signed is None or self.keyring.signer(signed) is None:
            self._refuse_in_dialog(msg, via, source, "no signature of ours in the Route entry", None)
            return  # before any name in it is looked up
        hop = self._next_hop(target)
        if hop is None:
            return
        why = self._dialog_refused(signed, msg, source, hop[1][0])
        if why:
            self._refuse_in_dialog(msg, via, source, why, None)
            return
        self._forward_ack(msg, via, source, hop, popped)

    def _ack_noted_elsewhere(self, msg: SipMessage, key, source: Source) -> bool:
        """An ACK this worker has no transaction for: True when another worker noted its
        INVITE transaction (the ACK of a non-2xx final, gdispatch.acknotes) and it was
        handed over. What another worker handed here stays here."""
        if not self._may_hand_over(source):
            return False
        worker = self.acks.noted_by(key)
        return worker is not None and self.hand_over(msg.raw, source, worker)

    def _may_hand_over(self, source: Source) -> bool:
        """With several workers, a datagram may go to another: one that came over UDP
        and was not handed here by another worker already."""
        return self.hand_over is not None and source.transport == "udp" and not source.relayed

    def _hand_over(self, msg: SipMessage, source: Source, worker: int | None) -> bool:
        """Hand `msg` to `worker` (None: the owner of its call); True when it went."""
        return self._may_hand_over(source) and self.hand_over(msg.raw, source, worker)

    def _forward_ack(self, msg: SipMessage, via: Via, source: Source, hop, popped: int, route: int = -1) -> None:
        """Send the ACK of a 2xx on to `hop` without its first `popped` Route values, or
        (`route` >= 0, the short way) without its Route line `route`."""
        transport, addr = hop
        listener = self.transports.listener_for(transport, addr[0])
        if listener is None:
            return
        # A stateless branch must be the same for retransmissions of the same ACK (§16.11).
        branch = "%s%08x.s" % (MAGIC_COOKIE, zlib.crc32((via.branch or "").encode() + msg.call_id))
        if route >= 0:
            data = forward_in_dialog(msg, route, self._via_for(listener, branch), self._with_received(via, source))
        else:
            mf = msg.max_forwards
            data = forward_request(msg, via=self._via_for(listener, branch), pop_routes=popped,
                                   max_forwards=69 if mf is None else mf - 1,
                                   top_via=self._with_received(via, source))
        try:
            self.transports.send(transport, addr, data, listener=listener)
        except TransportError as e:
            log.warning("cannot forward ACK to %s:%s: %s", addr[0], addr[1], e)

    def _on_cancel(self, msg: SipMessage, via: Via, source: Source) -> None:
        key = self._server_key(msg, via, "CANCEL")
        cst = self.server_txns.get(key)
        if cst is not None:
            cst.on_request_retransmission()
            return
        st = self.server_txns.get(self._server_key(msg, via, "INVITE"))
        top_via = self._with_received(via, source)
        if st is None:
            # Nothing to cancel: answered statelessly, as any request refused here.
            self._refuse(msg, via, source, 481, "Call/Transaction Does Not Exist", top_via=top_via)
            return
        # RFC 3261 §16.10: answer the CANCEL ourselves, then cancel every pending branch.
        cst = self._new_server_txn(msg, via, source, key)
        self._local_reply(cst, msg, 200, "OK", to_tag=(st.context.to_tag if st.context else ""), top_via=top_via)
        ctx = st.context
        if ctx is not None:
            self._cancel_context(ctx)
        elif st.last_status < 200:
            self._local_reply(st, msg, 487, "Request Terminated", top_via=top_via)

    # ----------------------------------------------------------------- forwarding

    def _dispatch(self, ctx: ResponseContext, walk: tuple) -> None:
        """Start the walk of a dispatched request. Most calls are answered by the first
        destination tried, so that attempt is sent inline when nothing in it can block
        (no plugin edits it, the destination's address is known): a greenlet costs more
        than the rest of the INVITE's handling. The walker greenlet starts only when that
        attempt fails (`_branch_over`), and from the start for parallel forking, plugin
        edits or a name to resolve."""
        candidates, source, top_via, popped, record = walk
        first = candidates[0]
        if (ctx.route.algorithm == ALG_PARALLEL or first.address is None
                or self.plugins.user_implemented("gdispatch_prepare_attempt")):
            gevent.spawn(self._walk, ctx, *walk)
            return
        ctx.walk = walk
        ctx.outstanding = 1
        try:
            self._start_branch(ctx, first, source, top_via, popped, record)
        except Exception:
            # As the walker does: the caller gets its 500, the call leaves the count.
            log.exception("error while dispatching call-id %s", logsafe.text(ctx.request.call_id))
            if ctx.walk is not None:
                ctx.walk = None
                self.calls_in_setup -= 1
            if not ctx.final_sent:
                ctx.final_sent = True
                self._local_reply(ctx.st, ctx.request, 500, "Internal Server Error")
            _release(ctx)

    def _first_attempt_over(self, ctx: ResponseContext, status: int) -> None:
        """The inline first attempt ended: done if it was answered 2xx (or the caller
        already has its final), else the walker takes over from there."""
        walk = ctx.walk
        ctx.walk = None
        if 200 <= status < 300 or ctx.final_sent:
            self.calls_in_setup -= 1
            _release(ctx)
        else:
            gevent.spawn(self._walk, ctx, *walk, resume=True)

    def _walk(self, ctx: ResponseContext, candidates: list[Destination], source: Source,
              top_via: bytes | None, popped: int, record: bool, resume: bool = False) -> None:
        """The life of a dispatched request: try each destination in turn (serial
        forking), or all at once for the parallel algorithm. `resume`: the first
        destination was tried inline (`_dispatch`) and failed; go on from there."""
        route = ctx.route
        ctx.event = event = Event()
        try:
            if route.algorithm == ALG_PARALLEL:
                ctx.outstanding = len(candidates)
                for dest in candidates:
                    self._start_branch(ctx, dest, source, top_via, popped, record)
                if ctx.outstanding > 0 and not ctx.final_sent:
                    event.wait()
            else:
                n = 0
                while n < len(candidates):
                    dest = candidates[n]
                    if resume:
                        resume = False  # candidates[0] was tried inline
                    else:
                        if ctx.cancelled or ctx.final_sent:
                            break
                        if n:
                            self.stats["failovers"] += 1
                        event.clear()
                        ctx.outstanding = 1
                        self._start_branch(ctx, dest, source, top_via, popped, record)
                        if ctx.outstanding > 0:
                            event.wait()
                    status = ctx.last_status
                    if 200 <= status < 300 or ctx.cancelled:
                        break
                    action = self._after_failure(ctx, dest, status, n + 1)
                    if action.kind == "reply":
                        ctx.best = None
                        ctx.reply_override = (action.code, action.reason)
                        break
                    if action.kind == "switch":
                        dset = self.dlist.get(action.set)
                        more = select(dset, action.algorithm, ctx.request, 0, self._default_options) if dset else []
                        log.warning("%s %s for call-id %s; switching to set %d (%d destinations)",
                                    dest.uri, ctx.last_outcome, logsafe.text(ctx.request.call_id),
                                    action.set, len(more))
                        candidates = candidates[:n + 1] + more
                    elif action.kind != "next":
                        break
                    elif n + 1 < len(candidates):
                        log.warning("failover: %s %s for call-id %s, trying %s", dest.uri, ctx.last_outcome,
                                    logsafe.text(ctx.request.call_id), candidates[n + 1].uri)
                    else:
                        log.warning("%s %s for call-id %s; no destination left", dest.uri, ctx.last_outcome,
                                    logsafe.text(ctx.request.call_id))
                    n += 1
            self._finish(ctx)
        except Exception:
            log.exception("error while dispatching call-id %s", logsafe.text(ctx.request.call_id))
            if not ctx.final_sent:
                ctx.final_sent = True
                self._local_reply(ctx.st, ctx.request, 500, "Internal Server Error")
        self.calls_in_setup -= 1
        _release(ctx)

    def _after_failure(self, ctx: ResponseContext, dest: Destination, status: int, number: int) -> FailureAction:
        plugins = self.plugins
        if plugins.user_implemented("gdispatch_after_failure"):
            action = plugins.call_first("gdispatch_after_failure", request=RequestView(ctx.request, ctx.source),
                                        destination=dest, status=status, attempt_number=number, route=ctx.route)
            if isinstance(action, FailureAction):
                return action
        return self.builtin.gdispatch_after_failure(None, dest, status, number, ctx.route)

    def _start_branch(self, ctx: ResponseContext, dest: Destination, source: Source, top_via: bytes | None,
                      popped: int, record: bool) -> None:
        address = dest.address
        if address is None and self.resolve_now is not None:
            # Flag 16: the name is resolved now, in this request's greenlet (RFC 3263).
            found = self.resolve_now(dest)
            address = found[0] if found else None
        branch = Branch(ctx, dest, (dest.transport, address))
        ctx.branches.append(branch)
        if address is None:
            log.warning("cannot resolve %s: %s", dest.uri, dest.unusable or "no address")
            self._branch_over(branch, 503, None, "could not be resolved")
            return
        new_ruri = None
        add_headers: list[bytes] = []
        remove: list[str] = []
        if self.plugins.user_implemented("gdispatch_prepare_attempt"):
            # A fresh view of the request as it arrived, for each attempt (kamailio#3388).
            attempt = Attempt(ctx.request, dest, len(ctx.branches), (source.transport,) + source.addr)
            if ctx.route.mode == "domain":
                attempt.ruri_host = dest.sip_uri.hostport()
            self.plugins.call("gdispatch_prepare_attempt", attempt=attempt)
            try:
                new_ruri = attempt.new_ruri()
            except ParseError:
                log.warning("a plugin's Request-URI edit for %s does not parse; sending it unchanged", dest.uri)
                self.plugins.errors["(bad edit)"] += 1
            add_headers = attempt.header_lines()
            remove = attempt.removed_headers()
        elif ctx.route.mode == "domain":
            # Like ds_select_domain: the destination also becomes the Request-URI host.
            new_ruri = replace_hostport(ctx.request.ruri, dest.sip_uri.hostport().encode())
        if ctx.counts_load:
            self.calls.attempt(ctx.request.call_id, dest)
            self._counts(dest)[0] += 1
        self._send_branch(branch, source, top_via, popped, record, new_ruri=new_ruri, add_headers=add_headers,
                          remove=remove)

    def _send_branch(self, branch: Branch, source: Source, top_via: bytes | None, popped: int, record: bool,
                     new_ruri: bytes | None = None, add_headers=(), remove=()) -> None:
        ctx = branch.ctx
        msg = ctx.request
        transport, addr = branch.next_hop
        listener = self.transports.listener_for(transport, addr[0])
        if listener is None:
            self._no_listener(branch)
            return
        branch_id = self._new_branch_id(self._loop_hash(msg))
        rr: tuple[bytes, ...] = ()
        if record:
            # Signed for this dialog and its destination (gdispatch.recordroute).
            signature = self.keyring.token(msg.call_id, msg.from_tag or b"",
                                           packed_address(addr[0]) if self._bind_next_hop else b"") + b">"
            rr = (self._rr_prefix(listener) + signature,)
            if listener.public is not source.listener.public:
                # Double record-routing: each side of the dialog needs the address it can
                # reach us on (the two listeners differ in transport or address).
                rr += (self._rr_prefix(source.listener) + signature,)
        mf = msg.max_forwards
        data = forward_request(msg, via=self._via_for(listener, branch_id), ruri=new_ruri,
                               max_forwards=69 if mf is None else mf - 1, record_route=rr,
                               pop_routes=popped, top_via=top_via, add_headers=add_headers,
                               remove_headers=remove)
        self._start_branch_transaction(branch, listener, branch_id, data)

    def _no_listener(self, branch: Branch) -> None:
        transport, addr = branch.next_hop
        log.warning("cannot reach %s:%s:%s: %s", transport, addr[0], addr[1],
                    self.transports.can_reach(transport, addr[0]))
        self._branch_over(branch, 503, None, "has no listen address to be sent from")

    def _start_branch_transaction(self, branch: Branch, listener, branch_id: str, data: bytes,
                                  sent: bool = False) -> None:
        """Send `data`, the branch's request, from `listener` in a new client transaction
        (RFC 3261 §16.6 step 10), with the branch's final-response timer (§16.8); if
        `sent`, the caller has sent it already."""
        method = branch.ctx.st.method
        transport, addr = branch.next_hop
        branch.request = data
        branch.listener = listener
        key = (branch_id, method)
        branch.key = key
        ct = ClientTransaction(
            key, method, data, reliable=transport != "udp", send=branch.send, scheduler=self.scheduler,
            timers=self.timers, on_response=self._on_branch_response, on_timeout=self._on_branch_timeout,
            make_ack=branch.make_ack if method == "INVITE" else None,
            on_transport_error=self._on_branch_transport_error, on_terminated=self._on_client_terminated,
        )
        ct.context = branch
        branch.ct = ct
        self.client_txns[key] = ct
        try:
            ct.start(sent)
        except TransportError as e:
            log.warning("cannot send to %s:%s:%s: %s", transport, addr[0], addr[1], e)
            ct.on_transport_error()
        if not branch.final:  # the request is on its way: now its timer
            branch.timer = self.scheduler.call_later(self.fr_timer, self._fr_timeout, branch)

    def _client_terminated(self, ct: ClientTransaction) -> None:
        if self.client_txns.get(ct.key) is ct:
            del self.client_txns[ct.key]
        # Break the branch <-> transaction cycle so reference counting frees both at
        # once, instead of leaving them to the cyclic collector.
        branch = ct.context
        ct.context = None
        if isinstance(branch, Branch) and branch.ct is ct:
            branch.ct = None

    def _fr_timeout(self, branch: Branch) -> None:
        """No final response in time: give up on this destination (RFC 3261 §16.8)."""
        branch.timer = None
        if branch.final:
            return
        ct = branch.ct
        if branch.provisional:
            # It rang too long (fr_inv_timer): cancel it (§16.8, §9.1).
            self._send_cancel(branch)
            why = "rang past fr_inv_timer"
        else:
            why = "did not answer within fr_timer"
            if ct is not None:
                ct.stop_retransmissions()
                self._traffic_failure(branch, "no response within fr_timer")
        self._branch_over(branch, LOCAL_TIMEOUT, None, why)

    def _traffic_failure(self, branch: Branch, reason: str) -> None:
        if branch.dest is not None and self.on_traffic_failure is not None:
            self.on_traffic_failure(branch.dest, reason)

    def originate(self, transport: str, addr: tuple[str, int], method: str, build: Callable[[bytes], bytes],
                  on_final: Callable[[int, SipMessage | None], None],
                  socket_attr: str | None = None) -> ClientTransaction | None:
        """Send a request of our own (a keepalive ping) as a client transaction.

        `build(via)` returns the request given our Via value; `on_final(status, response)`
        is called once with the final response, or (408, None) on timeout, or (503, None)
        when it cannot be sent.
        """
        listener = None
        if socket_attr:
            listener = next((lst.private or lst for lst in self.transports.listeners
                             if str(lst.listen) == socket_attr), None)
        if listener is None:
            listener = self.transports.listener_for(transport, addr[0]) if addr else None
        if listener is None:
            on_final(503, None)
            return None
        branch_id = self._new_branch_id("00000000")
        data = build(self._via_for(listener, branch_id))
        key = (branch_id, method)
        transports = self.transports
        client_txns = self.client_txns

        def on_error() -> None:
            # Found by key, not captured: a closure holding the transaction that holds
            # the closure would be a reference cycle.
            ct = client_txns.get(key)
            if ct is not None and ct.state != "terminated":
                ct.on_transport_error()

        def send(out: bytes) -> None:
            transports.send(transport, addr, out, on_error=on_error, listener=listener)

        def on_response(_ct: ClientTransaction, status: int, resp: SipMessage) -> None:
            if status >= 200:
                on_final(status, resp)

        ct = ClientTransaction(key, method, data, reliable=transport != "udp", send=send, scheduler=self.scheduler,
                               timers=self.timers, on_response=on_response,
                               on_timeout=lambda _ct: on_final(LOCAL_TIMEOUT, None),
                               on_transport_error=lambda _ct: on_final(503, None),
                               on_terminated=self._on_client_terminated)
        ct.context = _Origin((transport, addr))
        self.client_txns[key] = ct
        ct.start()
        return ct

    def unreachable(self, addr: tuple[str, int]) -> None:
        """An ICMP error: every transaction still waiting for its first answer from that
        address fails now (RFC 3261 §17.1.1.2, §17.1.2.2: a transport error)."""
        for ct in list(self.client_txns.values()):
            ctx = ct.context
            if ctx is None or ct.state not in ("calling", "trying"):
                continue
            hop = ctx.next_hop
            if hop is not None and hop[1] == addr:
                ct.on_transport_error()

    def _branch_timeout(self, ct: ClientTransaction) -> None:
        branch = ct.context
        if branch is not None and not branch.final:
            self._branch_over(branch, LOCAL_TIMEOUT, None, "did not answer (transaction timeout)")

    def _branch_transport_error(self, ct: ClientTransaction) -> None:
        branch = ct.context
        if branch is not None and not branch.final:
            dest = branch.dest
            log.warning("transport error sending to %s", dest.uri if dest else branch.next_hop)
            self._traffic_failure(branch, "transport error")
            self._branch_over(branch, 503, None, "could not be reached (transport error)")

    def _branch_response(self, ct: ClientTransaction, status: int, resp: SipMessage) -> None:
        branch: Branch = ct.context
        if branch is None:
            return  # a transaction the proxy is done with (see _release)
        ctx = branch.ctx
        if ctx.route is not None and ctx.request is not None and self.plugins.user_implemented("gdispatch_response"):
            self.plugins.call("gdispatch_response", request=RequestView(ctx.request, ctx.source),
                              response_status=status,
                              destination=branch.dest)
        # What goes upstream goes first, the timers after (see ClientTransaction).
        if status < 200:
            if status > 100 and not ctx.final_sent and not branch.final:
                # RFC 3261 §16.7 step 5: provisional responses (but 100) go upstream at once.
                ctx.st.respond(status, strip_top_via(resp))
            if not branch.provisional:
                branch.provisional = True
                if branch.timer is not None:
                    branch.timer.cancel()
                    branch.timer = None
                if not branch.final:
                    branch.timer = self.scheduler.call_later(self.fr_inv_timer, self._fr_timeout, branch)
                if branch.cancel_state == "pending":
                    self._send_cancel(branch)
            return
        if 200 <= status < 300:
            # Every 2xx goes upstream, retransmissions included (§16.7 step 5, RFC 6026).
            first = not ctx.final_sent
            ctx.final_sent = True
            ctx.st.respond(status, strip_top_via(resp))
            _final_came(branch)
            if first and ctx.counts_load:
                self.calls.attempt(ctx.request.call_id, branch.dest)  # the branch that won
                self.calls.answered(ctx.request.call_id)
                self._counts(branch.dest)[1] += 1
            if first:
                for other in ctx.branches:
                    if other is not branch and not other.final:
                        self._send_cancel(other)
            if not branch.final:
                self._branch_over(branch, status, resp)
            if ctx.event is None:
                _release(ctx)  # in-dialog: no walker to do it
            return
        _final_came(branch)
        if branch.final:
            return  # a late final after we gave up on this branch
        if status in self.mark_codes:
            self._traffic_failure(branch, f"answered {status}")
        self._branch_over(branch, status, resp)

    def _branch_over(self, branch: Branch, status: int, resp: SipMessage | None, why: str = "") -> None:
        """`branch` is over with `status`: the response `resp`, or `why` there is none."""
        branch.final = status
        if status >= 300 and branch.dest is not None and branch.ctx.counts_load:
            self._counts(branch.dest)[2] += 1
        if branch.timer is not None:
            branch.timer.cancel()
            branch.timer = None
        ctx = branch.ctx
        if resp is not None and status >= 300 and not ctx.final_sent:
            ctx.best = _better(ctx.best, resp)
        ctx.last_status = status
        ctx.last_outcome = why or f"answered {status}"
        ctx.outstanding -= 1
        if ctx.event is not None:
            if ctx.outstanding <= 0 or 200 <= status < 300:
                ctx.event.set()
        elif ctx.walk is not None:
            self._first_attempt_over(ctx, status)
        elif ctx.route is None and not ctx.final_sent:
            self._finish(ctx)  # in-dialog: a single branch, no walker
            _release(ctx)

    def _finish(self, ctx: ResponseContext) -> None:
        """Send the best final response upstream when no 2xx went (RFC 3261 §16.7 step 6)."""
        if ctx.final_sent:
            return
        ctx.final_sent = True
        if ctx.counts_load:
            self.calls.ended(ctx.request.call_id)
        st = ctx.st
        best = ctx.best
        if ctx.reply_override is not None:
            code, reason = ctx.reply_override
            self._local_reply(st, ctx.request, code, reason, to_tag=ctx.to_tag)
            return
        if best is not None:
            data = strip_top_via(best)
            status = best.status
            if status == 503:
                # §16.7 step 6: a 503 is not passed upstream as such, or the caller would
                # take the whole proxy as overloaded.
                status = 500
                data = _status_line(500, best.reason) + data[data.index(b"\r\n"):]
            st.respond(status, data)
            return
        if ctx.cancelled:
            self._local_reply(st, ctx.request, 487, "Request Terminated", to_tag=ctx.to_tag)
        elif ctx.route is not None:
            self._local_reply(st, ctx.request, 503, "Service Unavailable", to_tag=ctx.to_tag)
        elif ctx.last_status == 503:
            # It could not be sent: as if a 503 came (RFC 3261 §16.9), which goes upstream
            # as a 500 (§16.7 step 6).
            self._local_reply(st, ctx.request, 500, "Server Internal Error", to_tag=ctx.to_tag)
        else:
            self._local_reply(st, ctx.request, 408, "Request Timeout", to_tag=ctx.to_tag)

    # ----------------------------------------------------------------- CANCEL

    def _cancel_context(self, ctx: ResponseContext) -> None:
        ctx.cancelled = True
        waiting = False
        for branch in ctx.branches:
            if branch.final:
                continue
            if branch.provisional:
                self._send_cancel(branch)
                waiting = True
            else:
                # RFC 3261 §9.1: no CANCEL before a provisional response; stop sending
                # the INVITE and cancel if a provisional still comes.
                branch.cancel_state = "pending"
                if branch.ct is not None:
                    branch.ct.stop_retransmissions()
                self._branch_over(branch, 487, None, "was cancelled")
        if not waiting:
            if ctx.event is not None:
                ctx.event.set()
            elif ctx.route is None:
                self._finish(ctx)  # in-dialog: no walker (a dispatched one has one now)

    def _send_cancel(self, branch: Branch) -> None:
        if branch.cancel_state == "sent" or not branch.request:
            return
        if not branch.provisional:
            branch.cancel_state = "pending"
            return
        branch.cancel_state = "sent"
        data = build_cancel(parse_message(branch.request))
        transport, addr = branch.next_hop
        transports = self.transports
        branch_id = branch.key[0]
        key = (branch_id, "CANCEL")

        def send(out: bytes) -> None:
            transports.send(transport, addr, out)

        ct = ClientTransaction(key, "CANCEL", data, reliable=transport != "udp", send=send,
                               scheduler=self.scheduler, timers=self.timers,
                               on_response=_ignore_response, on_timeout=_ignore,
                               on_transport_error=_ignore, on_terminated=self._on_client_terminated)
        self.client_txns[key] = ct
        try:
            ct.start()
        except TransportError:
            ct.terminate()

    # ----------------------------------------------------------------- responses

    def on_response(self, msg: SipMessage, source: Source) -> None:
        try:
            via = msg.top_via
            method = msg.cseq[1]
        except ParseError:
            self.stats["bad_messages_dropped"] += 1
            return
        ct = self.client_txns.get((via.branch, method))
        if ct is not None:
            ct.receive_response(msg.status, msg)
            return
        self._stray_response(msg, via)

    def _sent_with_this_via(self, msg: SipMessage) -> ClientTransaction | None:
        """The client transaction of a branch whose Via is, byte for byte, the top Via of
        response `msg`: matched on its branch and CSeq method (RFC 3261 §17.1.3) without
        parsing a Via we wrote ourselves. None for anything else (a Via the next hop
        edited, a keepalive's transaction): `on_response` then parses and matches."""
        value = msg._value(msg._names.index("via"))
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
        if type(branch) is not Branch or branch.listener is None or value != self._via_for(branch.listener, ct.key[0]):
            return None
        return ct

    def _stray_response(self, msg: SipMessage, via: Via) -> None:
        """A response no transaction knows (e.g. a late 2xx retransmission): forward it
        statelessly by its next Via if the top one is ours (RFC 3261 §16.7, §18.2.2)."""
        self.stats["stray_responses"] += 1
        if (via.host, via.port or 5060) not in self.local_hostports:
            return
        try:
            vias = msg.vias
        except ParseError:
            return
        if len(vias) < 2 or not 200 <= msg.status < 300:
            return
        nxt = vias[1]
        host = nxt.received or nxt.host
        port = int(nxt.rport) if nxt.rport else (nxt.port or 5060)
        transport = nxt.transport.lower()
        try:
            self.transports.send(transport, (host, port), strip_top_via(msg))
        except TransportError:
            pass


def _release(ctx: ResponseContext) -> None:
    """The final response went upstream and no walker reads the request any more: drop
    the parsed request and the responses kept for it. What stays (the context, its
    branches and transactions) is what relays 2xx retransmissions and answers a late
    CANCEL until the transactions end. A non-INVITE has neither: its transactions absorb
    retransmissions on their own (RFC 3261 §17.1.2.2, §17.2.2), so the context and the
    branches whose transaction has its final go now rather than after the linger."""
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


def _final_came(branch: Branch) -> None:
    """A final response came for `branch`: its fr timer stops, and no CANCEL goes for it
    any more (RFC 3261 §9.1)."""
    if branch.timer is not None:
        branch.timer.cancel()
        branch.timer = None
    branch.request = b""


def _better(current: SipMessage | None, new: SipMessage) -> SipMessage:
    """RFC 3261 §16.7 step 6: a 6xx wins, else the lowest class; the first of a class stays."""
    if current is None:
        return new
    c, n = current.status, new.status
    if c >= 600:
        return current
    if n >= 600:
        return new
    return new if n // 100 < c // 100 else current


def _as_route(choice: RouteChoice) -> Route:
    """A plugin's RouteChoice as the route the proxy follows."""
    if choice.reply_code:
        return Route(methods=frozenset(), reply=choice.reply_code, reply_reason=choice.reply_reason,
                     name=choice.name or "plugin", relay=True)
    kw = {} if choice.failover_codes is None else {"failover_codes": frozenset(choice.failover_codes)}
    return Route(methods=frozenset(), set=choice.set, algorithm=choice.algorithm, limit=choice.limit,
                 mode=choice.mode, name=choice.name or "plugin", relay=True, **kw)


def replace_hostport(ruri: bytes, hostport: bytes) -> bytes:
    """The Request-URI with its host[:port] replaced, user and parameters kept."""
    colon = ruri.find(b":")
    at = ruri.find(b"@", colon)
    start = at + 1 if at >= 0 else colon + 1
    scan = ruri.find(b"]", start) if ruri[start:start + 1] == b"[" else start
    end = len(ruri)
    for sep in (b";", b"?"):
        j = ruri.find(sep, scan)
        if 0 <= j < end:
            end = j
    return ruri[:start] + hostport + ruri[end:]


class _Origin:
    """The context of a request of our own: where it went, for ICMP errors."""

    __slots__ = ("next_hop",)

    def __init__(self, next_hop):
        self.next_hop = next_hop


def _ignore(*_args) -> None:
    pass


def _ignore_response(*_args) -> None:
    pass


_IP_HOSTS: dict[str, bool] = {}  # host -> _is_ip(host), bounded: hosts repeat call after call


def _is_ip(host: str) -> bool:
    known = _IP_HOSTS.get(host)
    if known is not None:
        return known
    if ":" in host:
        known = True
    else:
        parts = host.split(".")
        known = len(parts) == 4 and all(p.isdigit() for p in parts)
    if len(_IP_HOSTS) < 1024:
        _IP_HOSTS[host] = known
    return known

