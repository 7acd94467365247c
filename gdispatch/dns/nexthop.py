"""The next hop of a request inside a dialog (a Route entry, or the Request-URI when no
Route is left: RFC 3261 §16.6 step 6, §16.12) as addresses, for the proxy's receiver
greenlet.

RFC 3263 §4 as for destinations (`gdispatch.dns.policy`): the transport and an explicit
port are the URI's; a host name without a port is looked up as SRV for that transport,
then as A/AAAA with the transport's default port; an IP literal is returned at once,
with no lookup.

The receiver greenlet reads every message of its socket in turn, so it must not wait
long on DNS:

- answers are cached per lookup plan for their TTL (at least `MIN_TTL`, at most
  `max_ttl`; `max_ttl` for an answer without one: the system resolver, /etc/hosts), and
  failures for `negative_ttl`, so the requests of a dialog look its name up once;
- a lookup runs in a greenlet of its own, which the caller waits for at most `timeout`
  (by default the resolver's timeout for one try). A lookup that outlasts the wait goes
  on and fills the cache, so the next request to that name (an ACK the 200's
  retransmission brings again, the caller's retry, the dialog's next request) finds the
  answer, and requests for the same name meanwhile share that one lookup;
- a name that resolved before keeps its last good addresses while a later lookup fails
  or is still running, as destinations do (`gdispatch.dns.destinations`);
- the cache holds at most `max_entries` plans, the oldest dropped first.

Only requests whose Route entry carries our signature come this far (`gdispatch.proxy`
checks it first), so a forged request cannot make the proxy ask DNS for names of its
choosing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import gevent

from gdispatch.dns.answers import Address, AddressAnswer, DnsLookupError
from gdispatch.dns.policy import LookupPlan, Lookups, lookup, plan_lookup

log = logging.getLogger("gdispatch.dns")

MIN_TTL = 5.0  # a short TTL does not make a dialog's requests ask again more often
DEFAULT_MAX_TTL = 300.0
DEFAULT_NEGATIVE_TTL = 5.0
DEFAULT_MAX_ENTRIES = 4096
DEFAULT_TIMEOUT = 2.0  # when the resolver does not say its own


@dataclass
class _Cached:
    addresses: list[Address]  # [] when the name has not resolved yet
    expires: float
    failing: str = ""  # the failure last logged, to log a repeated one only once


class NextHopResolver:
    """Host names of in-dialog next hops → addresses, cached, through `resolver` (the
    project's `gdispatch.dns.client.Resolver`, or any `Lookups`)."""

    def __init__(self, resolver: Lookups, *, timeout: float | None = None, max_ttl: float = DEFAULT_MAX_TTL,
                 negative_ttl: float = DEFAULT_NEGATIVE_TTL, max_entries: int = DEFAULT_MAX_ENTRIES,
                 family: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        if timeout is None:
            timeout = float(getattr(resolver, "timeout", DEFAULT_TIMEOUT))
        if timeout <= 0 or max_ttl < MIN_TTL or negative_ttl <= 0 or max_entries < 1:
            raise ValueError("timeout and negative_ttl must be > 0, max_ttl >= 5, max_entries >= 1")
        self.resolver = resolver
        self.timeout = timeout
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.family = family
        self.clock = clock
        self._cache: dict[LookupPlan, _Cached] = {}  # in the order stored: oldest first
        self._inflight: dict[LookupPlan, gevent.Greenlet[[LookupPlan], None]] = {}

    def resolve(self, scheme: str, host: str, port: int | None, transport: str) -> list[Address]:
        """The addresses of the next hop ``scheme:host[:port];transport=...`` in the order
        to try them; [] when it does not resolve (yet). Never raises for DNS trouble, and
        blocks the calling greenlet for at most `timeout` seconds."""
        plan = plan_lookup(scheme, host.lower(), port, transport)
        if plan.literal:
            return [(host, port or plan.default_port)]
        if not plan.host:
            return []
        cached = self._cache.get(plan)
        if cached is not None and self.clock() < cached.expires:
            return list(cached.addresses)
        job = self._inflight.get(plan)
        if job is None:
            job = self._inflight[plan] = gevent.spawn(self._lookup, plan)
        job.join(self.timeout)
        cached = self._cache.get(plan)  # the new answer, or the last good one meanwhile
        return list(cached.addresses) if cached is not None else []

    # -- the lookup greenlet

    def _lookup(self, plan: LookupPlan) -> None:
        """One lookup of `plan`, its outcome stored; never raises (it runs alone)."""
        try:
            try:
                answer = lookup(self.resolver, plan, self.family)
            except DnsLookupError as e:
                self._failed(plan, str(e))
            except Exception as e:  # a bug must not leave the name unanswered
                log.exception("next hop %s: lookup failed", plan.host)
                self._failed(plan, f"{type(e).__name__}: {e}")
            else:
                self._succeeded(plan, answer)
        finally:
            self._inflight.pop(plan, None)

    def _succeeded(self, plan: LookupPlan, answer: AddressAnswer) -> None:
        old = self._cache.get(plan)
        if old is not None and old.failing:
            log.info("next hop %s resolves again", plan.host)
        ttl = self.max_ttl if answer.ttl is None else min(max(answer.ttl, MIN_TTL), self.max_ttl)
        self._store(plan, _Cached(list(answer.addresses), self.clock() + ttl))

    def _failed(self, plan: LookupPlan, reason: str) -> None:
        old = self._cache.get(plan)
        kept = old.addresses if old is not None else []
        if old is None or old.failing != reason:
            if kept:
                log.warning("next hop %s: %s; keeping the last good address for %gs", plan.host, reason,
                            self.negative_ttl)
            else:
                log.warning("next hop %s: %s; requests to it are not forwarded for %gs", plan.host, reason,
                            self.negative_ttl)
        self._store(plan, _Cached(kept, self.clock() + self.negative_ttl, reason))

    def _store(self, plan: LookupPlan, entry: _Cached) -> None:
        self._cache.pop(plan, None)
        self._cache[plan] = entry
        if len(self._cache) <= self.max_entries:
            return
        now = self.clock()
        for key in [k for k, e in self._cache.items() if e.expires <= now and k != plan]:
            del self._cache[key]
        while len(self._cache) > self.max_entries:
            del self._cache[next(iter(self._cache))]
