"""What a lookup gives back: the errors, SRV targets and address answers shared by the
stub resolver (`gdispatch.dns.client`) and the policies above it
(`gdispatch.dns.policy`, `.destinations`, `.nexthop`). No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Address = tuple[str, int]


class DnsLookupError(Exception):
    """A lookup failed (timeout, server failure, malformed answers); str() is the reason
    for the operator. The name may exist: ask again later."""


class NameNotFound(DnsLookupError):
    """The DNS answered that the name, or the record type asked for, does not exist
    (NXDOMAIN, or NOERROR without records: "NODATA")."""


@dataclass(frozen=True)
class SrvTarget:
    """One SRV record (RFC 2782) with its TTL."""

    target: str
    port: int
    priority: int
    weight: int
    ttl: int


@dataclass(frozen=True)
class AddressAnswer:
    """Addresses of a name in the order to try them; `ttl` is the smallest TTL of the
    records they came from, None when unknown (getaddrinfo, /etc/hosts, IP literals)."""

    addresses: list[Address]
    ttl: float | None


def unique(addresses: Iterable[Address]) -> list[Address]:
    """`addresses` without repeats, in their first order."""
    seen: set[Address] = set()
    out = []
    for a in addresses:
        if a not in seen:
            seen.add(a)
            out.append(a)
    return out
