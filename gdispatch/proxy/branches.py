"""How a branch leaves: the copy of the request each attempt sends, and its client
transaction (RFC 3261 §16.6, §17.1).

`Branches.start` makes an attempt of a dispatched request to one destination: the edits
of its route's mode (Kamailio's ds_select_domain) and of the plugins'
`gdispatch_prepare_attempt`, then `send`: our Via with a fresh branch (§16.6 step 8),
Max-Forwards one less (step 3), our signed Record-Route (step 4, gdispatch.recordroute;
twice when the request changes transport or address family), the Route values of ours
popped (§16.4), in a new client transaction with the branch's final-response timer (§16.8).
A branch's transaction reports back to gdispatch.proxy.forking. `cancel` sends a CANCEL
(§9.1), `originate` a request of our own (a keepalive ping), `unreachable` fails what
waits on an address an ICMP error named.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from gdispatch.config import Listen
from gdispatch.dispatcher.destination import Destination
from gdispatch.message_api import Attempt
from gdispatch.net import Source, TlsPeer, TransportError
from gdispatch.recordroute import packed_address
from gdispatch.sip import ParseError, SipMessage, build_cancel, forward_request, parse_message
from gdispatch.transaction.client import ClientTransaction

from .counters import SENT
from .forking import LOCAL_TIMEOUT, Branch, ResponseContext
from .identity import loop_hash

if TYPE_CHECKING:
    from .core import Proxy

log = logging.getLogger("gdispatch.proxy")


class _Origin:
    """The context of a request of our own: where it went, for ICMP errors."""

    __slots__ = ("next_hop",)

    def __init__(self, next_hop):
        self.next_hop = next_hop


class Branches:
    """The proxy's outgoing requests and their client transactions (`client_txns`)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transports = proxy.transports
        self.identity = proxy.identity
        self.plugins = proxy.plugins
        self.calls = proxy.calls
        self.scheduler = proxy.scheduler
        self.timers = proxy.timers
        self.fr_timer = proxy.fr_timer
        self.client_txns: dict = proxy.client_txns
        # The transactions' callbacks, bound once: a bound method made per transaction
        # would be one more object for each to hold while it lingers.
        self._on_client_terminated = self._client_terminated
        self._on_branch_response = proxy.forker.branch_response
        self._on_branch_timeout = self._branch_timeout
        self._on_branch_transport_error = self._branch_transport_error
        self._on_fr_timeout = proxy.forker.fr_timeout

    def start(self, ctx: ResponseContext, dest: Destination) -> None:
        """Send an attempt of dispatched request `ctx` to `dest` (RFC 3261 §16.6), with the
        edits of its route's mode and of the plugins."""
        walk = ctx.walk
        request = ctx.request
        assert walk is not None and request is not None and ctx.route is not None
        source = walk.source
        address = dest.address
        if address is None and self.proxy.resolve_now is not None:
            # Flag 16: the name is resolved now (RFC 3263); forking runs this in a
            # greenlet of its own.
            found = self.proxy.resolve_now(dest)
            address = found[0] if found else None
        branch = Branch(ctx, dest, (dest.transport, address))
        branch.peer = dest.tls_peer
        ctx.branches.append(branch)
        if address is None:
            log.warning("cannot resolve %s: %s", dest.label, dest.unusable or "no address")
            self.proxy.forker.attempt_over(branch, 503, None, "could not be resolved")
            return
        new_ruri = None
        add_headers: list[bytes] = []
        remove: list[str] = []
        if self.plugins.user_implemented("gdispatch_prepare_attempt"):
            # A fresh view of the request as it arrived, for each attempt (kamailio#3388).
            attempt = Attempt(request, dest, len(ctx.branches), (source.transport,) + source.addr)
            if ctx.route.mode == "domain":
                attempt.ruri_host = dest.sip_uri.hostport()
            self.plugins.call("gdispatch_prepare_attempt", attempt=attempt)
            try:
                new_ruri = attempt.new_ruri()
            except ParseError:
                log.warning("a plugin's Request-URI edit for %s does not parse; sending it unchanged", dest.label)
                self.plugins.errors["(bad edit)"] += 1
            add_headers = attempt.header_lines()
            remove = attempt.removed_headers()
        elif ctx.route.mode == "domain":
            # Like ds_select_domain: the destination also becomes the Request-URI host.
            new_ruri = replace_hostport(request.ruri, dest.sip_uri.hostport().encode())
        if ctx.counts_load:
            self.calls.attempt(request.call_id, dest)
            self.proxy.call_counts.of(dest)[SENT] += 1
        self.send(branch, source, walk.top_via, walk.popped, walk.record, new_ruri=new_ruri,
                  add_headers=add_headers, remove=remove, socket=dest.send_socket or self.proxy.default_socket)

    def send(self, branch: Branch, source: Source, top_via: bytes | None, popped: int, record: bool,
             new_ruri: bytes | None = None, add_headers=(), remove=(), socket: Listen | None = None) -> None:
        """Send the branch's copy of its request in a new client transaction, from
        `socket` if given (see `Transports.sender`)."""
        msg = branch.ctx.request
        assert msg is not None
        copy = self.copy(msg, branch.next_hop, source, top_via, popped, record, new_ruri, add_headers, remove,
                         socket)
        if copy is None:
            self.no_listener(branch)
        else:
            self.start_client_txn(branch, *copy)

    def send_first(self, msg: SipMessage, next_hop, source: Source, top_via: bytes | None, popped: int,
                   new_ruri: bytes | None, add_headers, remove,
                   socket: Listen | None) -> tuple[Any, bool, str, bytes, bool] | None:
        """The copy of a request inside a dialog, sent over UDP before its transactions
        exist: at low load every step before the sendto adds its cold-cache cost to the
        latency (bench/PROFILE.md). Nothing between this and `start_client_txn` yields,
        so no response can come before the transactions exist; a send that fails is
        left to the client transaction, which tries once more. None when no listener
        can send it (`no_listener`)."""
        copy = self.copy(msg, next_hop, source, top_via, popped, False, new_ruri, add_headers, remove, socket)
        if copy is None:
            return None
        listener, bound, branch_id, data = copy
        transport, addr = next_hop
        sent = False
        if transport == "udp":
            try:
                self.transports.send(transport, addr, data, listener=listener)
                sent = True
            except OSError:
                pass
        return listener, bound, branch_id, data, sent

    def no_listener(self, branch: Branch) -> None:
        transport, addr = branch.next_hop
        log.warning("cannot reach %s:%s:%s: %s", transport, addr[0], addr[1],
                    self.transports.can_reach(transport, addr[0]))
        self.proxy.forker.attempt_over(branch, 503, None, "has no listen address to be sent from")

    def copy(self, msg: SipMessage, next_hop, source: Source, top_via: bytes | None, popped: int, record: bool,
             new_ruri: bytes | None = None, add_headers=(), remove=(),
             socket: Listen | None = None) -> tuple[Any, bool, str, bytes] | None:
        """What an attempt sends to `next_hop` (RFC 3261 §16.6): the listener it leaves
        from (`Transports.sender`) and whether it was chosen, its branch id and the
        request's bytes; None when no listener can send it. Our Via and Record-Route name that listener
        (§16.6 steps 4 and 8)."""
        transport, addr = next_hop
        listener, bound = self.transports.sender(transport, addr[0], socket)
        if listener is None:
            return None
        identity = self.identity
        branch_id = identity.new_branch_id(loop_hash(msg))
        rr: tuple[bytes, ...] = ()
        if record:
            # Signed for this dialog and its destination (gdispatch.recordroute).
            signature = self.proxy.keyring.token(msg.call_id, msg.from_tag or b"",
                                           packed_address(addr[0]) if self.proxy.bind_next_hop else b"") + b">"
            rr = (identity.rr_prefix(listener, msg.sips) + signature,)
            if listener.public is not source.listener.public:
                # Double record-routing: each side of the dialog needs the address it can
                # reach us on (the two listeners differ in transport, address family or
                # address: a destination's socket), as Kamailio's enable_double_rr
                # and RFC 5658 §4 do.
                rr += (identity.rr_prefix(source.listener, msg.sips) + signature,)
        mf = msg.max_forwards
        data = forward_request(msg, via=identity.via_for(listener, branch_id), ruri=new_ruri,
                               max_forwards=69 if mf is None else mf - 1, record_route=rr,
                               pop_routes=popped, top_via=top_via, add_headers=add_headers,
                               remove_headers=remove)
        return listener, bound, branch_id, data

    def start_client_txn(self, branch: Branch, listener, bound: bool, branch_id: str, data: bytes,
                         sent: bool = False) -> None:
        """Send `data`, the branch's request, from `listener` (`bound`: chosen for it, see
        `Transports.sender`) in a new client transaction (RFC 3261 §16.6 step 10), with the branch's
        final-response timer (§16.8); if `sent`, it has left already (`send_first`)."""
        method = branch.ctx.st.method
        transport, addr = branch.next_hop
        branch.request = data
        branch.listener = listener
        branch.bound = bound
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
            branch.timer = self.scheduler.call_later(self.fr_timer, self._on_fr_timeout, branch)

    def _client_terminated(self, ct: ClientTransaction) -> None:
        if self.client_txns.get(ct.key) is ct:
            del self.client_txns[ct.key]
        # Break the branch <-> transaction cycle so reference counting frees both at
        # once, instead of leaving them to the cyclic collector.
        branch = ct.context
        ct.context = None
        if isinstance(branch, Branch) and branch.ct is ct:
            branch.ct = None

    def traffic_failure(self, branch: Branch, reason: str) -> None:
        if branch.dest is not None and self.proxy.on_traffic_failure is not None:
            self.proxy.on_traffic_failure(branch.dest, reason)

    def _branch_timeout(self, ct: ClientTransaction) -> None:
        branch = ct.context
        if branch is not None and not branch.final:
            self.proxy.forker.attempt_over(branch, LOCAL_TIMEOUT, None, "did not answer (transaction timeout)")

    def _branch_transport_error(self, ct: ClientTransaction) -> None:
        branch = ct.context
        if branch is not None and not branch.final:
            dest = branch.dest
            log.warning("transport error sending to %s", dest.label if dest else branch.next_hop)
            self.traffic_failure(branch, "transport error")
            self.proxy.forker.attempt_over(branch, 503, None, "could not be reached (transport error)")

    def cancel(self, branch: Branch) -> None:
        """CANCEL `branch` (RFC 3261 §9.1): now if it had a provisional response, else as
        soon as one comes."""
        if branch.cancel_state == "sent" or not branch.request:
            return
        if not branch.provisional:
            branch.cancel_state = "pending"
            return
        branch.cancel_state = "sent"
        data = build_cancel(parse_message(branch.request))
        transport, addr = branch.next_hop
        transports = self.transports
        listener, bound, peer = branch.listener, branch.bound, branch.peer
        assert branch.key is not None
        key = (branch.key[0], "CANCEL")

        def send(out: bytes) -> None:
            # From the INVITE's socket: the CANCEL carries its Via (RFC 3261 §9.1) and
            # must reach the same transaction at the next hop.
            transports.send(transport, addr, out, listener=listener, bind=bound, peer=peer)

        ct = ClientTransaction(key, "CANCEL", data, reliable=transport != "udp", send=send,
                               scheduler=self.scheduler, timers=self.timers,
                               on_response=_ignore, on_timeout=_ignore,
                               on_transport_error=_ignore, on_terminated=self._on_client_terminated)
        self.client_txns[key] = ct
        try:
            ct.start()
        except TransportError:
            ct.terminate()

    def originate(self, transport: str, addr: tuple[str, int], method: str, build: Callable[[bytes], bytes],
                  on_final: Callable[[int, SipMessage | None], None],
                  socket: Listen | None = None, peer: TlsPeer | None = None) -> ClientTransaction | None:
        """Send a request of our own (a keepalive ping) as a client transaction, from
        `socket` if given (see `Transports.sender`), to `peer` over TLS.

        `build(via)` returns the request given our Via value; `on_final(status, response)`
        is called once with the final response, or (408, None) on timeout, or (503, None)
        when it cannot be sent.
        """
        listener, bound = self.transports.sender(transport, addr[0], socket) if addr else (None, False)
        if listener is None:
            on_final(503, None)
            return None
        branch_id = self.identity.new_branch_id("00000000")
        data = build(self.identity.via_for(listener, branch_id))
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
            transports.send(transport, addr, out, on_error=on_error, listener=listener, bind=bound, peer=peer)

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


def _ignore(*_args) -> None:
    pass
