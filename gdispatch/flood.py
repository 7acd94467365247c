"""Which sources are flooding: datagrams counted per source address, and bans.

One source must not take the proxy from the others. Every UDP datagram is counted
against its source's IP address, per second; a source past `rate` datagrams in one
second is banned for `ban_time` seconds: what it sends is dropped unread, by the kernel
once the socket filter names it (gdispatch.sockfilter), here before that. Kamailio's
pike module does the same with its reqs_density_per_unit over a sampling_time_unit.

Never banned: the destinations of the list (gateways answer thousands of calls a second
from one address) and the `trusted` networks (an SBC or a PBX that sends all of its
calls through the proxy). Junk that is not SIP does not get this far when the kernel
filter is on.

What it costs a datagram: a dict increment (`admit`); the rest runs for sources over
the rate only, and once a second (`tick`). Sans-IO: the caller gives the time and is
told when the list of bans changes (`on_change`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable

log = logging.getLogger("gdispatch.flood")

MAX_SOURCES = 65536  # sources counted in one second; past it new ones pass uncounted
_EXEMPT = -(1 << 62)  # the count of a source that is never banned: it never reaches the rate


class SourceGuard:
    """Counts datagrams per source and bans the sources past `rate` a second."""

    def __init__(self, rate: int, ban_time: float, now: Callable[[], float],
                 trusted: Iterable[str] = (), on_change: Callable[[list[str]], None] | None = None):
        self.rate = rate
        self.ban_time = ban_time
        self.now = now
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted]
        self.on_change = on_change
        self.counts: dict[str, int] = {}
        self.banned: dict[str, float] = {}  # source -> when its ban ends
        self.exempt: frozenset[str] = frozenset()  # the list's destinations (`set_exempt`)
        self.dropped = 0
        self.bans = 0

    def set_exempt(self, addresses: Iterable[str]) -> None:
        """The addresses of the list's destinations: never banned (a new list lifts
        their bans at once)."""
        self.exempt = frozenset(addresses)
        lifted = [ip for ip in self.banned if ip in self.exempt]
        for ip in lifted:
            del self.banned[ip]
        if lifted:
            self._changed()

    def admit(self, ip: str) -> bool:
        """Whether a datagram from `ip` may be read (counts it)."""
        counts = self.counts
        n = counts.get(ip)
        if n is None:
            if len(counts) >= MAX_SOURCES:
                return True
            counts[ip] = 1
            return True
        n += 1
        counts[ip] = n
        return n <= self.rate or self._over(ip)

    def _over(self, ip: str) -> bool:
        if ip in self.banned:
            self.dropped += 1
            return False
        if ip in self.exempt or self._trusted(ip):
            self.counts[ip] = _EXEMPT
            return True
        self.banned[ip] = self.now() + self.ban_time
        self.bans += 1
        self.dropped += 1
        log.warning("source %s sent more than %d datagrams in a second: ignored for %g s "
                    "(add it to [flood].trusted if it is a trunk or an SBC)", ip, self.rate, self.ban_time)
        self._changed()
        return False

    def _trusted(self, ip: str) -> bool:
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def tick(self) -> None:
        """Once a second: a new count begins (a banned source starts at the rate, so that
        its next datagram is dropped), and the bans that are over end."""
        now = self.now()
        ended = [ip for ip, until in self.banned.items() if until <= now]
        for ip in ended:
            del self.banned[ip]
            log.info("source %s is read again", ip)
        self.counts = dict.fromkeys(self.banned, self.rate)
        if ended:
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(sorted(self.banned))
