"""What the proxy sends without a transaction (RFC 3261 §16.11, §16.3, §18.2.2).

`Stateless.reply` answers a request the proxy will not forward (Kamailio's
sl_send_reply): sent once for each copy of the request that arrives, nothing kept,
nothing resent, so that a forged source gets no more bytes than it sent. `forward_ack`
sends the ACK of a 2xx on, which is a request of its own that any proxy routes without a
transaction (§16.11). `stray_response` forwards a response no transaction knows (a 2xx
retransmitted after its transaction ended) by its next Via (§16.7, §18.2.2).
"""

from __future__ import annotations

import logging
import zlib

from gdispatch.config import Listen
from gdispatch.net import Source, TlsPeer, TransportError, Transports
from gdispatch.sip import ParseError, SipMessage, Via, build_response, forward_request, strip_top_via

from .identity import MAGIC_COOKIE, Identity, reply_addr, stateless_tag, with_received

log = logging.getLogger("gdispatch.proxy")


class Stateless:
    def __init__(self, identity: Identity, transports: Transports, stats: dict[str, int],
                 replies: list[int] | None = None, relayed: list[int] | None = None) -> None:
        """`replies`, `relayed`: the counts, by class (index status // 100), of the
        responses made here and of those passed on (the proxy's, for its metrics)."""
        self.identity = identity
        self.transports = transports
        self.stats = stats
        self.replies = replies if replies is not None else [0] * 7
        self.relayed = relayed if relayed is not None else [0] * 7

    def reply(self, msg: SipMessage, source: Source, status: int, reason: str, headers=(),
              top_via: bytes | None = None) -> None:
        """Answer `msg` without a transaction. The To tag is the same for every copy of a
        request (RFC 3261 §8.2.6.2), and its ACK is absorbed wherever it lands
        (identity.STATELESS_TAG)."""
        try:
            via = msg.top_via
            if top_via is None:
                top_via = with_received(via, source)
            tag = stateless_tag(via, msg._first("call-id") or b"") if status > 100 else None
            data = build_response(msg, status, reason, to_tag=tag, headers=headers, top_via=top_via)
        except ParseError:
            self.stats["bad_messages_dropped"] += 1
            return
        self.replies[status // 100] += 1
        self.transports.reply(source, reply_addr(source, via), data)

    def forward_ack(self, msg: SipMessage, via: Via, source: Source, hop, popped: int,
                    socket: Listen | None = None, peer: TlsPeer | None = None) -> None:
        """Send the ACK of a 2xx on to `hop` without its first `popped` Route values, from
        `socket` (the address our last Route entry names) when it can send there (over
        TLS, to `peer`)."""
        transport, addr = hop
        transports = self.transports
        listener, bound = transports.sender(transport, addr[0], socket)
        if listener is None:
            return
        # A stateless branch must be the same for retransmissions of the same ACK (§16.11).
        branch = "%s%08x.s" % (MAGIC_COOKIE, zlib.crc32((via.branch or "").encode() + msg.call_id))
        mf = msg.max_forwards
        data = forward_request(msg, via=self.identity.via_for(listener, branch), pop_routes=popped,
                               max_forwards=69 if mf is None else mf - 1, top_via=with_received(via, source))
        try:
            transports.send(transport, addr, data, listener=listener, bind=bound, peer=peer)
        except TransportError as e:
            log.warning("cannot forward ACK to %s:%s: %s", addr[0], addr[1], e)

    def stray_response(self, msg: SipMessage, via: Via) -> None:
        """A response no transaction knows (e.g. a late 2xx retransmission): forward it by
        its next Via if the top one is ours and it is a 2xx (RFC 3261 §16.7, §18.2.2)."""
        self.stats["stray_responses"] += 1
        if (via.host, via.port or 5060) not in self.identity.local_hostports:
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
        self.relayed[2] += 1
        try:
            self.transports.send(nxt.transport.lower(), (host, port), strip_top_via(msg))
        except TransportError:
            pass
