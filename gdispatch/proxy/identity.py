"""Who the proxy is on the wire, and how it marks what it sends.

Our addresses and domains (`Identity.is_local_uri`); the Via we put on each branch, whose
branch parameter carries the hash that detects a request looping back through us (RFC
3261 §16.6 step 8, §16.3 step 4); our Record-Route entry (§16.6 step 4, signed by
gdispatch.recordroute) and how it is recognised when it comes back at the top of a Route
set (§16.4); the To tags of what we answer ourselves; the top Via of a request with
received and rport filled in (§18.2.1, RFC 3581 §4) and where a response to it goes
(§18.2.2). Host and port are written by `gdispatch.sip.format_hostport` everywhere.

With `[server] advertise` (a shared address a pair of nodes moves between them), our Via
sent-by and our Record-Route name the advertised address instead of the listen address
(as Kamailio's `advertise`), and a Route naming it is ours: a dialog one node set up
comes back to whichever node holds the address (README, "A pair of nodes").
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import zlib

from gdispatch.config import Listen
from gdispatch.net import Source
from gdispatch.recordroute import PARAM as SIGNATURE_PARAM
from gdispatch.sip import ParseError, SipMessage, SipUri, Via, format_hostport, parse_name_addr

MAGIC_COOKIE = "z9hG4bK"
# The To tag of what we answer without a transaction starts so in every worker (the
# others' tags are "gd" and hex digits): the ACK of such an answer is absorbed wherever it
# arrives, with nothing to look up (Kamailio's sl module does the same with its tags).
STATELESS_TAG = "gdsl-"
_RPORT_EMPTY = re.compile(rb";\s*rport(?=\s*(?:;|$))", re.IGNORECASE)
# What may follow "gds=" in our own Route entry (gdispatch.recordroute: KID.MAC in hex).
_SIGNATURE = re.compile(rb"[A-Za-z0-9._-]+")


def parse_advertise(text: str) -> tuple[str, int | None]:
    """`[server] advertise`, "HOST", "HOST:PORT", "[IPv6]:PORT" (checked by
    gdispatch.config): the host without brackets and the port, None when not given."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    host, sep, port = text.rpartition(":")
    return (host, int(port)) if sep else (text, None)


def advertised(advertise: str, listen: Listen) -> tuple[str, int] | None:
    """The (host, port) `advertise` gives `listen`, or None when it does not apply: an
    advertised IP address applies to the listen addresses of its own address family
    only (an IPv4 shared address is no name for an IPv6 socket), a host name to all of
    them; without a port of its own each keeps its listen port."""
    if not advertise:
        return None
    host, port = parse_advertise(advertise)
    try:
        if (ipaddress.ip_address(host).version == 6) != listen.family_v6:
            return None
    except ValueError:
        pass  # a host name: whatever the family
    return host, port or listen.port


class Identity:
    """The proxy's addresses and the marks it puts on what it sends, for `listeners`
    (gdispatch.net listeners) and the domains of `domains`; `advertise` is `[server]
    advertise` ("" for none)."""

    def __init__(self, domains, listeners, advertise: str = "") -> None:
        self.domains = frozenset(domains)
        self.advertise = advertise
        # Our listen addresses (host, port) and the advertised ones, and the hosts and
        # domains we answer for.
        self.local_hostports: set[tuple[str, int]] = set()
        self.local_hosts: set[str] = set(self.domains)
        # (host, port, transport) a URI of ours names -> the listen address it means.
        self._sockets: dict[tuple[str, int, str], Listen] = {}
        for lst in listeners:
            for x in (lst, lst.private):
                if x is None:
                    continue
                # A worker's own port is in the Via of what it sends (loop detection).
                self.local_hostports.add((x.listen.host, x.listen.port))
                self.local_hostports.add(self.sent_by(x))
            self.local_hosts.add(lst.listen.host)
            self.local_hosts.add(self.sent_by(lst)[0])
            self._sockets.setdefault((lst.listen.host, lst.listen.port, lst.listen.transport), lst.listen)
        for lst in listeners:
            host, port = self.sent_by(lst)
            self._sockets.setdefault((host, port, lst.listen.transport), lst.listen)
        self._via_markers = [format_hostport(h, p).encode() for h, p in self.local_hostports]
        self._via_prefixes: dict = {}  # listener -> b"SIP/2.0/UDP host:port;branch="
        # (listener, sips) -> b"<sip:host:port;lr;gds=" (then the signature and ">")
        self._rr_prefixes: dict = {}
        # How our Record-Route entries begin when they come back as Route values, for
        # `route_entry` to recognise them without parsing, and the listen address each
        # names (`socket_of`).
        self.listens = [lst.listen for lst in listeners]
        self.own_routes: dict[bytes, Listen] = {self.rr_prefix(lst, sips): lst.listen for lst in listeners
                                                for sips in ((False, True) if lst.transport == "tls" else (False,))}
        self._salt = "%x" % (os.getpid() & 0xFFFF)
        self._branch_ids = itertools.count(1)
        self._tag_ids = itertools.count(1)

    def sent_by(self, listener) -> tuple[str, int]:
        """The host and port our Via names for what leaves from `listener` (RFC 3261
        §16.6 step 8), and our Record-Route for its shared listener (step 4): the
        advertised address when there is one. A worker's private twin keeps its own port
        under the advertised host: a UDP response then goes to the address the request
        came from (the `received` the next hop adds, §18.2.2) at that port, this worker's."""
        lst = listener.listen
        adv = advertised(self.advertise, lst)
        if adv is None:
            return lst.host, lst.port
        if listener.public is not listener:
            return adv[0], lst.port
        return adv

    def is_local_uri(self, uri: SipUri) -> bool:
        host = uri.host
        if host not in self.local_hosts:
            return False
        if (host, uri.port_or_default) in self.local_hostports:
            return True
        # A domain name of ours (not one of our IPs) matches whatever the port.
        return host in self.domains

    # -- Via and branch (RFC 3261 §16.6 step 8) ------------------------------------------

    def new_branch_id(self, loop_hash: str) -> str:
        return f"{MAGIC_COOKIE}{loop_hash}.{self._salt}{next(self._branch_ids):x}"

    def via_for(self, listener, branch: str) -> bytes:
        """Our Via value for a request leaving from `listener` with branch `branch`."""
        prefix = self._via_prefixes.get(listener)
        if prefix is None:
            host, port = self.sent_by(listener)
            prefix = f"SIP/2.0/{listener.listen.transport.upper()} {format_hostport(host, port)};branch=".encode()
            self._via_prefixes[listener] = prefix
        return prefix + branch.encode()

    def is_loop(self, msg: SipMessage) -> bool:
        """RFC 3261 §16.3 step 4: a Via of ours whose branch carries this request's hash."""
        names = msg._names
        if names.count("via") < 2 and b"," not in (msg._first("via") or b""):
            return False  # a single Via is the sender's own: no spiral through us yet
        markers = self._via_markers
        if not any(m in line for name, line in zip(names, msg._lines) if name == "via" for m in markers):
            return False  # none of ours: read the Via lines as they are, parse none
        expect = MAGIC_COOKIE + loop_hash(msg) + "."
        for v in msg.vias:
            if (v.host, v.port or 5060) in self.local_hostports and v.branch and v.branch.startswith(expect):
                return True
        return False

    # -- Record-Route and Route (RFC 3261 §16.6 step 4, §16.4) ---------------------------

    def rr_prefix(self, listener, sips: bool = False) -> bytes:
        """Our Record-Route value for `listener` up to its signature (gdispatch.recordroute):
        the shared address, never a worker's own port (RFC 3261 §16.6 step 4). `sips`:
        for a request whose Request-URI is a SIPS URI, whose Record-Route must be one
        too (§16.6 step 4): a `tls:` listener's is then `sips:` (which means TLS, without
        RFC 5630's deprecated `;transport=tls`); any other keeps its own transport."""
        prefix = self._rr_prefixes.get((listener, sips))
        if prefix is None:
            lst = listener.public.listen
            host, port = self.sent_by(listener.public)
            scheme = "sip"
            tp = f";transport={lst.transport}" if lst.transport != "udp" else ""
            if sips and lst.transport == "tls":
                scheme, tp = "sips", ""
            prefix = f"<{scheme}:{format_hostport(host, port)}{tp};lr;{SIGNATURE_PARAM}=".encode()
            self._rr_prefixes[(listener, sips)] = prefix
        return prefix

    def route_entry(self, value: bytes) -> tuple[bool, bytes | None]:
        """Whether Route value `value` names us, and its signature if it has one. Our
        own Record-Route values come back as we wrote them (RFC 3261 §12.1.1 has the UAs
        copy them), which a comparison of bytes recognises; any other is parsed."""
        equals = value.rfind(b"=") + 1
        if value[-1:] == b">" and value[:equals] in self.own_routes:
            token = value[equals:-1]
            if _SIGNATURE.fullmatch(token) is not None:
                return True, token
        try:
            uri = parse_name_addr(value).uri
        except ParseError:
            return False, None
        if not self.is_local_uri(uri):
            return False, None
        signature = uri.params.get(SIGNATURE_PARAM)
        return True, signature.encode() if signature else None

    def socket_of(self, value: bytes) -> Listen | None:
        """The listen address our Route value `value` names: the socket a request inside
        the dialog leaves from when it is the last of ours it carries (with double
        record-routing, the one facing the next hop: RFC 3261 §16.6 step 4, as Kamailio's
        rr module forces the socket of the second of its two entries)."""
        listen = self.own_routes.get(value[:value.rfind(b"=") + 1])
        if listen is not None:
            return listen
        try:
            uri = parse_name_addr(value).uri
        except ParseError:
            return None
        return self.socket_named(uri)

    def socket_named(self, uri: SipUri) -> Listen | None:
        """The listen address `uri` (ours) names by host, port and transport, its own or
        the advertised one, if any."""
        return self._sockets.get((uri.host, uri.port_or_default, uri.transport))

    def own_entries(self, routes: list[bytes]) -> tuple[int, bytes | None, bytes | None]:
        """How many of the Route values `routes` at the top are ours (RFC 3261 §16.4), the
        first signature among them, and the last of them that carries one: the entry
        whose address a request inside the dialog leaves from (`socket_of`; with double
        record-routing both carry one). An unsigned value naming another of our
        addresses, which anybody can add, does not choose the socket."""
        popped = 0
        token = None
        last_signed = None
        for value in routes:
            ours, signature = self.route_entry(value)
            if not ours:
                break
            popped += 1
            if signature:
                token = token or signature
                last_signed = value
        return popped, token, last_signed

    # -- tags ----------------------------------------------------------------------------

    def new_tag(self, prefix: str = "gd") -> str:
        return f"{prefix}{self._salt}{next(self._tag_ids):x}"


def loop_hash(msg: SipMessage) -> str:
    """The part of our branch that detects loops (RFC 3261 §16.6 step 8): it covers the
    fields a spiral would change (Request-URI, Route) and those of the request."""
    to_tag = msg.to_tag or b""
    from_tag = msg.from_tag or b""
    data = b"|".join((msg.ruri, msg._first("route") or b"", msg.call_id, b"%d" % msg.cseq[0], from_tag, to_tag))
    return "%08x" % zlib.crc32(data)


def stateless_tag(via: Via, call_id: bytes) -> str:
    """The To tag of an answer sent without a transaction: the same for every copy of
    the request (RFC 3261 §8.2.6.2)."""
    return "%s%08x" % (STATELESS_TAG, zlib.crc32(via.raw + call_id))


def reply_addr(source: Source, via: Via) -> tuple[str, int]:
    """Where a response goes: RFC 3261 §18.2.2 and RFC 3581 §4 (rport)."""
    if source.transport != "udp" or via.rport is not None:
        return source.addr
    return (source.addr[0], via.port or 5060)


def with_received(via: Via, source: Source) -> bytes | None:
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
