"""Where a request inside a dialog goes (RFC 3261 §16.4, §16.6 step 6): the transport and
address of its next hop by RFC 3263 §4 from the Route entry or Request-URI, and, over
TLS, who must answer there, should the connection be gone.
"""

from __future__ import annotations

from collections.abc import Callable

from gdispatch.dispatcher.destination import DispatcherList
from gdispatch.dns import NextHopResolver
from gdispatch.net import TlsPeer
from gdispatch.sip import SipUri

from .routing import is_ip


def next_hop(uri: SipUri, resolver: NextHopResolver,
             can_reach: Callable[[str, str], str]) -> tuple[str, tuple[str, int]] | None:
    """The transport and an explicit port are the URI's; an IP literal is used as is, a
    host name goes through the project's resolver (SRV when the URI has no port, then
    A/AAAA; cached, and waited for at most the resolver's timeout: gdispatch.dns.nexthop).
    None when the name does not resolve. `can_reach(transport, ip)`: '' when a listen
    address can send there (gdispatch.net.Transports.can_reach)."""
    transport = uri.transport
    host = uri.host
    if is_ip(host):
        return transport, (host, uri.port_or_default)
    addresses = resolver.resolve(uri.scheme, host, uri.port, transport)
    if not addresses:
        return None
    # The first address a listener can send to: an AAAA answer is of no use without an
    # IPv6 listen address (RFC 3263 §4.3: try the next).
    for addr in addresses:
        if not can_reach(transport, addr[0]):
            return transport, addr
    return transport, addresses[0]


def tls_peer(dlist: DispatcherList, host: str, addr: tuple[str, int]) -> TlsPeer:
    """Who the next hop at `addr` must be over TLS: a TLS destination of the list at that
    address, with its name and client profile, else `host` (the Route's or
    Request-URI's)."""
    for dest in dlist.destinations():
        if dest.address == addr and dest.transport == "tls":
            peer = dest.tls_peer
            if peer is not None:
                return peer
    return TlsPeer(host)
