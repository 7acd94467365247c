"""Kamailio's dispatcher behaviour for the names in a destination list: each
destination of a `DispatcherList` resolved at load (RFC 3263 §4 as
`gdispatch.dns.policy` plans it), in parallel greenlets, then kept fresh by a refresh
greenlet.

Flag 16 (``FLAG_NODNSARES``, Kamailio's DS_NODNSARES_DST) skips the lookup at load;
`resolve_now` does it when the proxy needs the destination, and caches the answer.

Failure semantics (Kamailio's known pain, reference §3 item 23): a destination that has
never resolved stays in the list with ``address = None`` and ``unusable`` saying why, and
is retried every `retry_interval`. One that has resolved keeps its last good addresses
when a refresh fails (any failure: timeout, SERVFAIL, even NXDOMAIN), with a warning,
and is retried every `retry_interval` until DNS answers again. A reload keeps the last
good answer of a name too, so reloading during a DNS outage does not lose working
addresses. An answer is refreshed after its TTL (at least `MIN_TTL_REFRESH`, at most
`refresh_interval`).

Not here: matching request sources against destinations.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
import gevent.event
import gevent.pool

from gdispatch import logsafe
from gdispatch.dispatcher.destination import FLAG_NODNSARES, Destination, DispatcherList
from gdispatch.dns.answers import Address, AddressAnswer, DnsLookupError, NameNotFound
from gdispatch.dns.policy import LookupPlan, Lookups, lookup, plan_for

log = logging.getLogger("gdispatch.dns")

MIN_TTL_REFRESH = 5.0  # a short TTL does not make us refresh more often than this


Check = Callable[[Destination, str], str]


@dataclass(eq=False)
class _Entry:
    """What we know about one destination's name. `addresses` are the usable ones (the
    check passed), in try order; `due` is when to look again (None: never, or on demand
    only); `tried` says whether a lookup has been made; `generation` is the
    `resolve_all` call that made it (for pruning entries of lists no longer in use)."""

    dest: Destination
    plan: LookupPlan
    on_demand: bool
    generation: int
    addresses: list[Address] = field(default_factory=list)
    due: float | None = None
    tried: bool = False
    failing: str = ""  # the failure reason last logged, to log a repeated one only once


class DestinationResolver:
    """Resolves the destinations of a dispatcher list and keeps their addresses fresh.

    Sets `Destination.address` (the first usable address) and `Destination.unusable`;
    `addresses(dest)` gives every usable address in try order. `on_change(dest)` is called
    after a refresh, a retry or `resolve_now` changed a destination's address, its
    `unusable` reason or its address list (not during `resolve_all`: its caller knows);
    `on_usable_change(dest)` too when the destination got its first address or lost its
    last one (`Destination.usable` changed, and with it what ``dispatcher.list`` shows).
    """

    def __init__(self, resolver: Lookups, *, refresh_interval: float = 600.0, retry_interval: float = 30.0,
                 on_change: Callable[[Destination], None] | None = None,
                 on_usable_change: Callable[[Destination], None] | None = None, concurrency: int = 16,
                 family: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        if refresh_interval <= 0 or retry_interval <= 0 or concurrency < 1:
            raise ValueError("refresh_interval and retry_interval must be > 0, concurrency >= 1")
        self.resolver = resolver
        self.refresh_interval = refresh_interval
        self.retry_interval = retry_interval
        self.on_change = on_change
        self.on_usable_change = on_usable_change
        self.concurrency = concurrency
        self.family = family
        self.clock = clock
        self._check: Check | None = None
        # id(dest) → its entry (which holds the dest, so the id cannot be reused while
        # the entry lives); entries of lists no longer in use are pruned by the refresh
        # loop (`_refresh_due`).
        self._entries: dict[int, _Entry] = {}
        self._generation = 0
        # The last answer that gave usable addresses, per plan: what a destination
        # falls back to when a lookup fails, also after a reload made new objects.
        self._last_good: dict[LookupPlan, list[Address]] = {}
        self._inflight: dict[LookupPlan, gevent.event.AsyncResult[AddressAnswer]] = {}
        self._pool = gevent.pool.Pool(concurrency)
        self._wake = gevent.event.Event()
        self._greenlet: gevent.Greenlet[[Callable[[], DispatcherList]], None] | None = None

    # -- API

    def resolve_all(self, dlist: DispatcherList, check: Check | None = None) -> None:
        """Resolve every destination of `dlist` (flag 16 ones excepted), at most
        `concurrency` at a time, and return when all are done. `check(dest, ip)` returns
        "" or why that address cannot be used; it is kept for refreshes. Logs one warning
        per unusable destination."""
        self._check = check
        self._generation += 1
        self._pool.map(self._load, list(dlist.destinations()))
        self._wake.set()  # the refresh loop reconsiders its next wake-up

    def addresses(self, dest: Destination) -> list[Address]:
        """The usable addresses of `dest` in try order ([] when none)."""
        entry = self._entry(dest)
        return list(entry.addresses) if entry else []

    def resolve_now(self, dest: Destination) -> list[Address]:
        """The usable addresses of `dest`, looked up now unless a previous answer is
        still fresh (its TTL, capped at `refresh_interval`; a failure is asked again after
        `retry_interval`). For flag 16 destinations, at dispatch time; from a greenlet."""
        entry = self._entry(dest) or self._new_entry(dest)
        if entry.tried and (entry.due is None or self.clock() < entry.due):
            return list(entry.addresses)
        self._resolve(dest, entry, notify=True)
        return list(entry.addresses)

    def start(self, dlist_getter: Callable[[], DispatcherList]) -> None:
        """Spawn the refresh greenlet; `dlist_getter()` returns the list in use now."""
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run, dlist_getter)

    def stop(self) -> None:
        """Kill the refresh greenlet and the lookups it runs."""
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None
        self._pool.kill()

    # -- resolving one destination

    def _entry(self, dest: Destination) -> _Entry | None:
        entry = self._entries.get(id(dest))
        return entry if entry is not None and entry.dest is dest else None

    def _new_entry(self, dest: Destination) -> _Entry:
        entry = _Entry(dest, plan_for(dest), bool(dest.flags & FLAG_NODNSARES), self._generation)
        self._entries[id(dest)] = entry
        return entry

    def _load(self, dest: Destination) -> None:
        entry = self._new_entry(dest)
        if entry.on_demand and not entry.plan.literal:
            # Kamailio's DS_NODNSARES_DST: no lookup at load; resolve_now at dispatch.
            _set(dest, None, "")
            return
        self._resolve(dest, entry, notify=False)

    def _resolve(self, dest: Destination, entry: _Entry, *, notify: bool) -> None:
        """Look `dest` up once and apply the outcome; never raises for DNS trouble."""
        before = (dest.address, dest.unusable, list(entry.addresses))
        was_usable = dest.usable
        plan = entry.plan
        reason = ""
        unreachable = False
        answer: AddressAnswer | None = None
        try:
            if not plan.host:
                raise NameNotFound("the URI has no host")
            answer = self._lookup_shared(plan)
        except DnsLookupError as e:
            detail = str(e)
            if detail.startswith(plan.host + ": "):
                detail = detail[len(plan.host) + 2 :]
            reason = f"cannot resolve {plan.host}: {detail}"
        except Exception as e:  # a bug must not stop the other destinations
            log.exception("%s: destination %s: lookup failed", dest.where, dest.uri)
            reason = f"cannot resolve {plan.host}: {e}"
        usable: list[Address] = []
        if answer is not None:
            usable, why = self._usable(dest, answer.addresses)
            if usable:
                self._last_good[plan] = answer.addresses
            else:
                reason, unreachable = why, True
        now = self.clock()
        entry.tried = True
        if usable:
            self._succeeded(dest, entry, usable, answer.ttl if answer else None, now)
        else:
            self._failed(dest, entry, reason, unreachable, now)
        if not notify:
            return
        if self.on_change is not None and before != (dest.address, dest.unusable, entry.addresses):
            try:
                self.on_change(dest)
            except Exception:
                log.exception("on_change(%s) failed", dest.uri)
        if self.on_usable_change is not None and dest.usable != was_usable:
            try:
                self.on_usable_change(dest)
            except Exception:
                log.exception("on_usable_change(%s) failed", dest.uri)

    def _succeeded(self, dest: Destination, entry: _Entry, usable: list[Address], ttl: float | None,
                   now: float) -> None:
        if entry.failing:
            log.info("%s: destination %s resolves again: %s", dest.where, dest.uri, _show(usable))
        elif entry.addresses and usable[0] != entry.addresses[0]:
            log.info("%s: destination %s now resolves to %s (was %s)", dest.where, dest.uri,
                     _show(usable), _show(entry.addresses))
        entry.failing = ""
        entry.addresses = usable
        _set(dest, usable[0], "")
        if entry.plan.literal:
            entry.due = None  # an IP address does not change
        else:
            interval = self.refresh_interval
            if ttl is not None:
                interval = min(interval, max(ttl, MIN_TTL_REFRESH))
            entry.due = now + interval

    def _failed(self, dest: Destination, entry: _Entry, reason: str, unreachable: bool, now: float) -> None:
        entry.due = None if entry.plan.literal else now + self.retry_interval
        # The last good answer: this destination's, or for a new object (a reload) its
        # name's; checked again, since the listeners may have changed since.
        kept, _ = self._usable(dest, entry.addresses or self._last_good.get(entry.plan, []))
        if kept:
            entry.addresses = kept
            _set(dest, kept[0], "")
            if reason != entry.failing:
                log.warning("%s: destination %s: %s; keeping the last good address %s, retrying every %gs",
                            dest.where, dest.uri, reason, _show(kept), self.retry_interval, extra=logsafe.KEEP)
            entry.failing = reason
            return
        _set(dest, None, reason)
        if reason != entry.failing:
            if unreachable:
                log.warning("%s: destination %s cannot be reached: %s", dest.where, dest.uri, reason,
                            extra=logsafe.KEEP)
            else:
                log.warning("%s: destination %s: %s; it will not be used until it resolves (retry every %gs)",
                            dest.where, dest.uri, reason, self.retry_interval, extra=logsafe.KEEP)
        else:
            log.debug("%s: destination %s: still %s", dest.where, dest.uri, reason)
        entry.failing = reason

    def _usable(self, dest: Destination, addresses: list[Address]) -> tuple[list[Address], str]:
        """The addresses `check` accepts, and the first reason it gave for one it refused."""
        if self._check is None:
            return list(addresses), ""
        usable = []
        first_reason = ""
        for addr in addresses:
            why = self._check(dest, addr[0])
            if why:
                first_reason = first_reason or why
            else:
                usable.append(addr)
        return usable, first_reason or "no address"

    # -- lookups

    def _lookup_shared(self, plan: LookupPlan) -> AddressAnswer:
        """`_lookup`, asked once for all destinations waiting on the same plan."""
        pending = self._inflight.get(plan)
        if pending is not None:
            shared = pending.get()  # raises what the lookup raised
            if shared is None:  # only for a non-blocking get; kept for the type checker
                raise DnsLookupError("lookup interrupted")
            return shared
        pending = self._inflight[plan] = gevent.event.AsyncResult()
        try:
            answer = self._lookup(plan)
        except DnsLookupError as e:
            pending.set_exception(e)
            raise
        except BaseException as e:  # killed, or a bug: the waiters must not hang
            pending.set_exception(DnsLookupError(f"lookup interrupted ({type(e).__name__})"))
            raise
        else:
            pending.set(answer)
            return answer
        finally:
            del self._inflight[plan]

    def _lookup(self, plan: LookupPlan) -> AddressAnswer:
        return lookup(self.resolver, plan, self.family)

    # -- the refresh loop

    def _run(self, dlist_getter: Callable[[], DispatcherList]) -> None:
        while True:  # until stop() kills the greenlet
            try:
                delay = self._refresh_due(dlist_getter())
            except Exception:
                log.exception("DNS refresh failed")
                delay = self.retry_interval
            self._wake.clear()
            self._wake.wait(timeout=delay)

    def _refresh_due(self, dlist: DispatcherList) -> float:
        """Refresh the destinations whose time has come; the seconds until the next."""
        now = self.clock()
        due: list[Destination] = []
        next_due = now + max(self.refresh_interval, self.retry_interval)
        live: set[LookupPlan] = set()
        in_use: set[int] = set()
        for dest in dlist.destinations():
            in_use.add(id(dest))
            entry = self._entry(dest)
            if entry is None:  # a list nobody called resolve_all for
                entry = self._new_entry(dest)
                if not entry.on_demand:
                    due.append(dest)
                continue
            live.add(entry.plan)
            if entry.on_demand or entry.due is None:
                continue
            if entry.due <= now:
                due.append(dest)
            else:
                next_due = min(next_due, entry.due)
        if due:
            self._pool.map(lambda d: self._resolve(d, self._entry(d) or self._new_entry(d), notify=True), due)
            return 0.0  # look again: the refreshed entries now have later due times
        # Forget lists replaced since: not in use, and older than the last resolve_all
        # (a list being loaded right now is of the current generation, and stays).
        for key in [k for k, e in self._entries.items() if k not in in_use and e.generation < self._generation]:
            del self._entries[key]
        live.update(e.plan for e in self._entries.values())
        for plan in [p for p in self._last_good if p not in live]:
            del self._last_good[plan]
        return max(next_due - now, 0.0)


def _set(dest: Destination, address: Address | None, unusable: str) -> None:
    # Assign only what changed: setting `address` makes the set rebuild its tables.
    if dest.address != address:
        dest.address = address
    if dest.unusable != unusable:
        dest.unusable = unusable


def _show(addresses: list[Address]) -> str:
    return ", ".join(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip, port in addresses)
