"""What to look up for a SIP URI, and in which order: RFC 3263 §4 as Kamailio's
dispatcher does it, for destinations (`gdispatch.dns.destinations`) and for the next hop
of a request inside a dialog (`gdispatch.dns.nexthop`) alike.

- An IP literal needs no lookup; without a port it gets the transport's default.
- A host name with a port is looked up as A/AAAA (RFC 3263 §4.2).
- A host name without a port is looked up as SRV (``_sip._udp``, ``_sip._tcp`` for
  ``;transport=tcp``, ``_sips._tcp`` for sips or ``;transport=tls``), each target
  resolved with the SRV port, in RFC 2782 order; with no SRV record, as A/AAAA with 5060
  (5061 for TLS). A failing SRV query is a failure, not a reason to guess A/AAAA.

Not here: NAPTR (RFC 3263 §4.1): the transport is the URI's (its ``transport``
parameter, else UDP, TLS for sips) and a URI without port goes straight to SRV for it.

`lookup` asks any object with the two methods of `Lookups` (the stub resolver,
`gdispatch.dns.client.Resolver`, or a test's scripted one); no caching here: the callers
cache by `LookupPlan`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import gevent

from gdispatch.dns.answers import Address, AddressAnswer, DnsLookupError, SrvTarget, unique
from gdispatch.dns.conf import is_ip_literal

if TYPE_CHECKING:
    from gdispatch.dispatcher.destination import Destination

MAX_SRV_TARGETS = 16  # targets resolved per SRV name; more is a misconfiguration


class Lookups(Protocol):
    """The lookups a policy needs from a resolver."""

    def resolve_srv(self, name: str) -> list[SrvTarget]: ...

    def lookup_address(self, host: str, port: int, family: int = 0) -> AddressAnswer: ...


def order_srv(records: Iterable[SrvTarget], rng: random.Random | None = None) -> list[SrvTarget]:
    """RFC 2782 "Usage rules": lowest priority first; within a priority, repeatedly pick
    a record at random with probability proportional to its weight (records of weight 0
    placed first, so they are picked only when the random number is 0, i.e. rarely when
    others have weight). `records` is not modified."""
    rnd = rng or random
    by_priority: dict[int, list[SrvTarget]] = {}
    for r in records:
        by_priority.setdefault(r.priority, []).append(r)
    ordered: list[SrvTarget] = []
    for priority in sorted(by_priority):
        # "in any order, except that all those with weight 0 are placed at the beginning":
        # shuffled, so equal weights (all zero included) share first place evenly.
        pending = by_priority[priority]
        rnd.shuffle(pending)
        pending.sort(key=lambda r: r.weight != 0)
        while pending:
            total = sum(r.weight for r in pending)
            pick = rnd.randint(0, total)
            running = 0
            for i, r in enumerate(pending):
                running += r.weight
                if running >= pick:
                    ordered.append(pending.pop(i))
                    break
    return ordered


@dataclass(frozen=True)
class LookupPlan:
    """What to look up for a SIP URI (RFC 3263 §4, without NAPTR). Equal plans share
    their answers (two sets naming the same gateway ask once)."""

    host: str
    port: int | None  # from the URI; None → SRV first, then `default_port`
    srv_name: str | None  # "_sip._udp.gw.example.com", None when no SRV lookup applies
    default_port: int
    literal: bool


def plan_lookup(scheme: str, host: str, port: int | None, transport: str) -> LookupPlan:
    """RFC 3263 §4.2 (SRV service names) and §4.2 defaults (5060, 5061 for TLS)."""
    transport = transport.lower()
    tls = scheme == "sips" or transport == "tls"
    default_port = 5061 if tls else 5060
    literal = is_ip_literal(host)
    srv_name = None
    if not literal and port is None:
        if tls:
            srv_name = f"_sips._tcp.{host}"
        elif transport in ("udp", "tcp", "sctp"):
            srv_name = f"_sip._{transport}.{host}"
    return LookupPlan(host, port, srv_name, default_port, literal)


def plan_for(dest: Destination) -> LookupPlan:
    uri = dest.sip_uri
    return plan_lookup(uri.scheme, uri.host, uri.port, dest.transport)


def lookup(resolver: Lookups, plan: LookupPlan, family: int = 0) -> AddressAnswer:
    """The addresses `plan` leads to, in the order to try them, with the smallest TTL
    met on the way. Raises NameNotFound or DnsLookupError."""
    if plan.literal:
        return AddressAnswer([(plan.host, plan.port or plan.default_port)], None)
    if plan.port is not None:
        return resolver.lookup_address(plan.host, plan.port, family)
    if plan.srv_name:
        targets = resolver.resolve_srv(plan.srv_name)[:MAX_SRV_TARGETS]
        if targets:
            return _lookup_targets(resolver, plan.srv_name, targets, family)
    # RFC 3263 §4.2: no SRV record → A/AAAA with the transport's default port.
    return resolver.lookup_address(plan.host, plan.default_port, family)


def _lookup_targets(resolver: Lookups, srv_name: str, targets: list[SrvTarget], family: int) -> AddressAnswer:
    """Every SRV target's addresses at once, kept in the SRV order; a target that does
    not resolve is skipped (RFC 3263 §4.3: try the next)."""
    jobs = [gevent.spawn(resolver.lookup_address, t.target, t.port, family) for t in targets]
    try:
        gevent.joinall(jobs)
    finally:
        gevent.killall([j for j in jobs if not j.dead])
    addresses: list[Address] = []
    ttls = [float(t.ttl) for t in targets]
    problems = []
    for t, job in zip(targets, jobs):
        answer = job.value if job.successful() else None
        if isinstance(answer, AddressAnswer):
            addresses.extend(answer.addresses)
            if answer.ttl is not None:
                ttls.append(answer.ttl)
        else:
            problems.append(f"{t.target}: {job.exception}")
    if not addresses:
        raise DnsLookupError(f"no SRV target of {srv_name} resolves ({'; '.join(problems)})")
    return AddressAnswer(unique(addresses), min(ttls))
