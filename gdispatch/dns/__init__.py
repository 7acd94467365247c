"""Name resolution for gdispatch: destination names and in-dialog next hops, by RFC 3263
as Kamailio's dispatcher does it, on a small DNS stub resolver that never blocks the
gevent hub.

The modules, from the wire up:

- `wire`: the DNS wire format through dnspython (queries encoded, replies decoded and
  checked, CNAME chains followed in an answer); no I/O.
- `answers`: what a lookup gives back (SRV targets, addresses with a TTL) and its errors.
- `conf`: resolv.conf, hosts and nameserver-override text; IP literals.
- `client`: `Resolver`, the stub resolver on gevent UDP/TCP sockets.
- `policy`: what to look up for a SIP URI (NAPTR left out, SRV, A/AAAA), RFC 2782 order.
- `destinations`: `DestinationResolver`, a destination list's names resolved at load and
  kept fresh (Kamailio's flag 16, keeping the last good address through an outage).
- `nexthop`: `NextHopResolver`, the host name of an in-dialog next hop (Route or
  Request-URI) resolved for the proxy's receiver greenlet, cached and time-bounded.

What other modules use is imported from here.
"""

from gdispatch.dns.answers import Address, AddressAnswer, DnsLookupError, NameNotFound, SrvTarget
from gdispatch.dns.client import Resolver
from gdispatch.dns.conf import ResolvConf, is_ip_literal, parse_hosts, parse_nameserver, parse_resolv_conf
from gdispatch.dns.destinations import DestinationResolver
from gdispatch.dns.nexthop import NextHopResolver
from gdispatch.dns.policy import LookupPlan, order_srv, plan_for, plan_lookup

__all__ = [
    "Address",
    "AddressAnswer",
    "DestinationResolver",
    "DnsLookupError",
    "LookupPlan",
    "NameNotFound",
    "NextHopResolver",
    "ResolvConf",
    "Resolver",
    "SrvTarget",
    "is_ip_literal",
    "order_srv",
    "parse_hosts",
    "parse_nameserver",
    "parse_resolv_conf",
    "plan_for",
    "plan_lookup",
]
