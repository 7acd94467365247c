"""Name resolution for destinations: a small DNS client on gevent, and the policy that
turns a destination URI into addresses and keeps them fresh.

What lives here:

- `Resolver`: asks nameservers (from ``/etc/resolv.conf``, or given explicitly) over UDP
  with random ids and source ports, checks that a reply answers the question asked,
  retries the next server, and repeats the query over TCP when a reply is truncated.
  `resolve_srv` returns SRV targets in RFC 2782 order; `resolve_address` returns
  (ip, port) pairs. A/AAAA go through the system resolver (`getaddrinfo` in gevent's
  resolver, so ``/etc/hosts``, nsswitch and search domains apply) unless the resolver
  was given its own nameservers: then every lookup asks those, after ``/etc/hosts``.
  Nothing here blocks the hub: waits are gevent socket waits.
- `DestinationResolver`: RFC 3263 §4 (simplified, as Kamailio's dispatcher does it) for
  each destination of a `DispatcherList`, run at load in parallel greenlets, then a
  refresh greenlet. An IP literal needs no lookup. A hostname with a port is looked up
  as A/AAAA. A hostname without a port is looked up as SRV (``_sip._udp``, ``_sip._tcp``
  for ``;transport=tcp``, ``_sips._tcp`` for sips or ``;transport=tls``), each target
  resolved with the SRV port; with no SRV record, as A/AAAA with 5060 (5061 for TLS).
  Flag 16 (``FLAG_NODNSARES``) skips the lookup at load; `resolve_now` does it when the
  proxy needs the destination, and caches the answer.

Failure semantics (Kamailio's known pain, reference §3 item 23): a destination that has
never resolved stays in the list with ``address = None`` and ``unusable`` saying why, and
is retried every `retry_interval`. One that has resolved keeps its last good addresses
when a refresh fails (any failure: timeout, SERVFAIL, even NXDOMAIN), with a warning,
and is retried every `retry_interval` until DNS answers again. A reload keeps the last
good answer of a name too, so reloading during a DNS outage does not lose working
addresses.

Not here: NAPTR (RFC 3263 §4.1; a URI without port and transport goes straight to
SRV for its default transport), DNSSEC, EDNS0, negative caching from the SOA minimum,
search domains for SRV names, and matching request sources against destinations.
The wire format is `gdispatch.dnswire`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import secrets
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import gevent
import gevent.event
import gevent.pool
import gevent.socket

from gdispatch import logsafe
from gdispatch.dispatcher.destination import FLAG_NODNSARES, Destination, DispatcherList
from gdispatch.dnswire import (
    RCODE_NAMES,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_NAMES,
    TYPE_SRV,
    DnsFormatError,
    Message,
    SrvData,
    answers_for,
    decode_header,
    decode_message,
    encode_query,
)

log = logging.getLogger("gdispatch.dns")

Address = tuple[str, int]

DEFAULT_TIMEOUT = 2.0  # seconds per try
DEFAULT_ATTEMPTS = 2  # rounds over the nameserver list
MAX_NAMESERVERS = 3  # glibc's MAXNS: later `nameserver` lines are ignored
MIN_TTL_REFRESH = 5.0  # a short TTL does not make us refresh more often than this
MAX_CNAME_HOPS = 8
MAX_SRV_TARGETS = 16  # targets resolved per SRV name; more is a misconfiguration


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


# -- pure helpers -------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvConf:
    nameservers: list[Address]
    timeout: float | None = None
    attempts: int | None = None


def parse_resolv_conf(text: str) -> ResolvConf:
    """The parts of resolv.conf(5) we use: up to three `nameserver` lines and `options
    timeout:N attempts:N` (clamped as glibc does: timeout ≤ 30, attempts ≤ 5). Malformed
    lines are ignored, as the C library ignores them."""
    servers: list[Address] = []
    timeout = attempts = None
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            ip = words[1]
            if is_ip_literal(ip.split("%", 1)[0]) and len(servers) < MAX_NAMESERVERS:
                servers.append((ip, 53))
        elif words[0] == "options":
            for opt in words[1:]:
                name, _, value = opt.partition(":")
                if name in ("timeout", "attempts") and value.isdigit():
                    if name == "timeout":
                        timeout = float(min(max(int(value), 1), 30))
                    else:
                        attempts = min(max(int(value), 1), 5)
    return ResolvConf(servers, timeout, attempts)


def parse_nameserver(text: str) -> Address:
    """``1.2.3.4``, ``1.2.3.4:5353``, ``::1`` or ``[::1]:5353`` → (ip, port); ValueError
    otherwise. For an operator's nameserver override."""
    text = text.strip()
    port = 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad nameserver {text!r}")
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, text)
    else:
        host = text
    if not is_ip_literal(host):
        raise ValueError(f"bad nameserver {text!r}: not an IP address")
    return host, port


def _port(value: str, text: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"bad nameserver {text!r}: bad port")
    return int(value)


def parse_hosts(text: str) -> dict[str, list[str]]:
    """hosts(5): name (lowercase) → its addresses in file order."""
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2 or not is_ip_literal(words[0].split("%", 1)[0]):
            continue
        for name in words[1:]:
            addrs = table.setdefault(name.lower().rstrip("."), [])
            if words[0] not in addrs:
                addrs.append(words[0])
    return table


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
    """What to look up for a destination URI (RFC 3263 §4, without NAPTR). Equal plans
    share their answers (two sets naming the same gateway ask once)."""

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


def _unique(addresses: Iterable[Address]) -> list[Address]:
    seen: set[Address] = set()
    out = []
    for a in addresses:
        if a not in seen:
            seen.add(a)
            out.append(a)
    return out


# -- the DNS client -----------------------------------------------------------------------


class Resolver:
    """A DNS stub resolver on gevent sockets. Methods block only the calling greenlet.

    `nameservers`: [(ip, port)]; None reads `resolv_conf` (no nameserver there means
    127.0.0.1:53, as in the C library). `timeout` (seconds per try) and `attempts`
    (rounds over the servers): explicit values, else resolv.conf's options, else 2 s and
    2. `use_getaddrinfo`: look A/AAAA up with the system resolver; default: only when
    the nameservers come from resolv.conf.
    """

    def __init__(self, nameservers: list[Address] | None = None, *, timeout: float | None = None,
                 attempts: int | None = None, resolv_conf: str = "/etc/resolv.conf",
                 hosts_file: str = "/etc/hosts", use_getaddrinfo: bool | None = None,
                 rng: random.Random | None = None) -> None:
        conf = ResolvConf([])
        system = nameservers is None
        if nameservers is None:
            try:
                with open(resolv_conf, encoding="utf-8", errors="replace") as f:
                    conf = parse_resolv_conf(f.read())
            except OSError as e:
                log.warning("cannot read %s (%s); asking 127.0.0.1:53", resolv_conf, e.strerror or e)
            nameservers = conf.nameservers or [("127.0.0.1", 53)]
        if not nameservers:
            raise ValueError("no nameservers")
        self.nameservers = list(nameservers)
        self.timeout = timeout if timeout is not None else (conf.timeout or DEFAULT_TIMEOUT)
        self.attempts = attempts if attempts is not None else (conf.attempts or DEFAULT_ATTEMPTS)
        if self.timeout <= 0 or self.attempts < 1:
            raise ValueError("timeout must be > 0 and attempts >= 1")
        self.use_getaddrinfo = use_getaddrinfo if use_getaddrinfo is not None else system
        self.hosts_file = hosts_file
        self.rng = rng or random.Random()
        self._hosts: dict[str, list[str]] = {}
        self._hosts_stamp: tuple[int, int] | None = None

    # -- public lookups

    def resolve_srv(self, name: str) -> list[SrvTarget]:
        """SRV records of `name` in RFC 2782 order; [] when there are none (NXDOMAIN or
        no SRV record). Raises DnsLookupError when the DNS does not answer usefully, and
        NameNotFound when the only record is the "." target (RFC 2782: the service is
        decidedly not available)."""
        try:
            records, _ = self._records(name, TYPE_SRV)
        except NameNotFound:
            return []
        targets = [SrvTarget(r.data.target, r.data.port, r.data.priority, r.data.weight, r.ttl)
                   for r in records if isinstance(r.data, SrvData)]
        usable = [t for t in targets if t.target != "." and t.port != 0]
        if targets and not usable:
            raise NameNotFound(f"SRV {name} says the service is not available (target \".\")")
        return order_srv(usable, self.rng)

    def resolve_address(self, host: str, port: int, family: int = 0) -> list[Address]:
        """(ip, port) pairs for `host`; `family`: 0 (any), AF_INET or AF_INET6.
        Raises NameNotFound or DnsLookupError."""
        return self.lookup_address(host, port, family).addresses

    def lookup_address(self, host: str, port: int, family: int = 0) -> AddressAnswer:
        """`resolve_address` with the TTL of the answer. An IP literal is returned as
        is; "localhost" resolves to loopback even without /etc/hosts (RFC 6761 §6.3).
        With our own nameservers, A is asked before AAAA (both at once)."""
        if is_ip_literal(host):
            return AddressAnswer([(host, port)], None)
        if self.use_getaddrinfo:
            return self._getaddrinfo(host, port, family)
        name = host.lower().rstrip(".")
        listed = self._hosts_table().get(name)
        if not listed and (name == "localhost" or name.endswith(".localhost")):
            listed = ["127.0.0.1", "::1"]
        if listed:
            ips = [ip for ip in listed if _family_ok(ip, family)]
            if ips:
                return AddressAnswer([(ip, port) for ip in ips], None)
        qtypes = {socket.AF_INET: [TYPE_A], socket.AF_INET6: [TYPE_AAAA]}.get(family, [TYPE_A, TYPE_AAAA])
        jobs = [gevent.spawn(self._records, name, qtype) for qtype in qtypes]
        try:
            gevent.joinall(jobs)
        finally:
            gevent.killall([j for j in jobs if not j.dead])
        addresses: list[Address] = []
        ttls = []
        errors: list[BaseException] = []
        for job in jobs:
            if job.successful():
                records, _ = job.value
                addresses.extend((r.data, port) for r in records if isinstance(r.data, str))
                ttls.extend(r.ttl for r in records)
            else:
                errors.append(job.exception)
        if addresses:
            return AddressAnswer(_unique(addresses), float(min(ttls)))
        # Both failed: a real failure says more than "no such name" for the other type.
        failures = [e for e in errors if not isinstance(e, NameNotFound)]
        err = (failures or errors)[0]
        raise err if isinstance(err, DnsLookupError) else DnsLookupError(str(err))

    # -- records and queries

    def _records(self, name: str, qtype: int) -> tuple[list, int]:
        """The answer records of `qtype` for `name`, asking again for the end of a CNAME
        chain the server did not chase. Raises NameNotFound or DnsLookupError."""
        current = name
        for _ in range(MAX_CNAME_HOPS):
            message = self.query(current, qtype)
            if message.rcode == RCODE_NXDOMAIN:
                raise NameNotFound(f"{name}: no such name (NXDOMAIN)")
            records, end = answers_for(message, current, qtype)
            if records:
                return records, min(r.ttl for r in records)
            if end == current.lower().rstrip("."):
                raise NameNotFound(f"{name}: no {TYPE_NAMES.get(qtype, qtype)} record")
            current = end
        raise DnsLookupError(f"{name}: CNAME chain longer than {MAX_CNAME_HOPS}")

    def query(self, name: str, qtype: int) -> Message:
        """One question, asked of each nameserver in turn for `attempts` rounds, until
        one answers NOERROR or NXDOMAIN. Raises DnsLookupError with the last problem."""
        problem = "no nameserver"
        for _ in range(self.attempts):
            for server in self.nameservers:
                qid = secrets.randbits(16)
                try:
                    packet = encode_query(qid, name, qtype)
                except DnsFormatError as e:
                    raise DnsLookupError(str(e)) from None
                where = f"{server[0]}:{server[1]}"
                try:
                    message = self._exchange_udp(server, packet, qid, name, qtype)
                    if message is None:  # truncated: RFC 1035 §4.2.1, ask again over TCP
                        message = self._exchange_tcp(server, packet, qid, name, qtype)
                except TimeoutError:
                    problem = f"no answer from {where} within {self.timeout:g}s"
                    continue
                except (OSError, DnsFormatError) as e:
                    problem = f"{where}: {getattr(e, 'strerror', None) or e}"
                    continue
                if message.rcode in (RCODE_NOERROR, RCODE_NXDOMAIN):
                    return message
                problem = f"{where} answered {RCODE_NAMES.get(message.rcode, message.rcode)}"
        raise DnsLookupError(f"{TYPE_NAMES.get(qtype, qtype)} {name}: {problem}")

    def _deadline(self) -> gevent.Timeout:
        # Raises TimeoutError, not gevent.Timeout: a Timeout a caller set around a lookup
        # must pass through `query` rather than count as one server not answering.
        return gevent.Timeout(self.timeout, TimeoutError("timed out"))

    def _exchange_udp(self, server: Address, packet: bytes, qid: int, name: str,
                      qtype: int) -> Message | None:
        """Send once, wait up to `timeout` for the reply to this question; None when the
        reply is truncated. Raises TimeoutError (an OSError) or DnsFormatError."""
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        with gevent.socket.socket(family, socket.SOCK_DGRAM) as sock, self._deadline():
            # An unbound socket gets a kernel-chosen random source port at connect; the
            # connection makes the kernel drop datagrams from other addresses.
            sock.connect(server)
            sock.send(packet)
            while True:  # ends by returning or by the Timeout
                data = sock.recv(65535)
                try:
                    rid, flags = decode_header(data)[:2]
                except DnsFormatError:
                    continue
                if rid != qid or not flags & 0x8000:
                    continue  # not the reply to this query (RFC 5452 §9.1)
                if flags & 0x0200:
                    return None
                try:
                    message = decode_message(data)
                except DnsFormatError as e:
                    log.debug("malformed reply from %s:%s: %s", server[0], server[1], e)
                    continue
                if _answers_question(message, name, qtype):
                    return message

    def _exchange_tcp(self, server: Address, packet: bytes, qid: int, name: str, qtype: int) -> Message:
        """RFC 1035 §4.2.2: the same query with a two-octet length prefix."""
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        with gevent.socket.socket(family, socket.SOCK_STREAM) as sock, self._deadline():
            sock.connect(server)
            sock.sendall(struct.pack("!H", len(packet)) + packet)
            (length,) = struct.unpack("!H", _recv_exactly(sock, 2))
            message = decode_message(_recv_exactly(sock, length))
        if message.id != qid or not message.is_response or not _answers_question(message, name, qtype):
            raise DnsFormatError("TCP reply does not answer the query")
        return message

    # -- system resolver and hosts file

    def _getaddrinfo(self, host: str, port: int, family: int) -> AddressAnswer:
        try:
            infos = gevent.socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
        except socket.gaierror as e:
            if e.errno in _EAI_NOT_FOUND:
                raise NameNotFound(f"{host}: {e.strerror or e}") from None
            raise DnsLookupError(f"{host}: {e.strerror or e}") from None
        except OSError as e:
            raise DnsLookupError(f"{host}: {e.strerror or e}") from None
        addresses = _unique((info[4][0], port) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6))
        if not addresses:
            raise NameNotFound(f"{host}: no address")
        return AddressAnswer(addresses, None)

    def _hosts_table(self) -> dict[str, list[str]]:
        """The hosts file, read again when it changes."""
        try:
            st = os.stat(self.hosts_file)
        except OSError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._hosts_stamp:
            try:
                with open(self.hosts_file, encoding="utf-8", errors="replace") as f:
                    self._hosts = parse_hosts(f.read())
            except OSError:
                self._hosts = {}
            self._hosts_stamp = stamp
        return self._hosts


_EAI_NOT_FOUND = {getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY") if hasattr(socket, n)}


def _family_ok(ip: str, family: int) -> bool:
    if family == socket.AF_INET:
        return ":" not in ip
    if family == socket.AF_INET6:
        return ":" in ip
    return True


def _answers_question(message: Message, name: str, qtype: int) -> bool:
    # RFC 5452 §9.1: a reply must carry the question we asked.
    if len(message.questions) != 1:
        return False
    q = message.questions[0]
    return q.qtype == qtype and q.name == (name.lower().rstrip(".") or ".")


def _recv_exactly(sock, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:  # each recv returns at least one octet or ends the loop
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise DnsFormatError("TCP connection closed in the middle of a reply")
        data += chunk
    return bytes(data)


# -- destinations -------------------------------------------------------------------------


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
    `unusable` reason or its address list (not during `resolve_all`: its caller knows).
    """

    def __init__(self, resolver: Resolver, *, refresh_interval: float = 600.0, retry_interval: float = 30.0,
                 on_change: Callable[[Destination], None] | None = None, concurrency: int = 16,
                 family: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        if refresh_interval <= 0 or retry_interval <= 0 or concurrency < 1:
            raise ValueError("refresh_interval and retry_interval must be > 0, concurrency >= 1")
        self.resolver = resolver
        self.refresh_interval = refresh_interval
        self.retry_interval = retry_interval
        self.on_change = on_change
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
        self._inflight: dict[LookupPlan, gevent.event.AsyncResult] = {}
        self._pool = gevent.pool.Pool(concurrency)
        self._wake = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None

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
        if notify and self.on_change is not None and before != (dest.address, dest.unusable, entry.addresses):
            try:
                self.on_change(dest)
            except Exception:
                log.exception("on_change(%s) failed", dest.uri)

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
            return pending.get()
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
        if plan.literal:
            return AddressAnswer([(plan.host, plan.port or plan.default_port)], None)
        if plan.port is not None:
            return self.resolver.lookup_address(plan.host, plan.port, self.family)
        if plan.srv_name:
            targets = self.resolver.resolve_srv(plan.srv_name)[:MAX_SRV_TARGETS]
            if targets:
                return self._lookup_targets(plan.srv_name, targets)
        # RFC 3263 §4.2: no SRV record → A/AAAA with the transport's default port.
        return self.resolver.lookup_address(plan.host, plan.default_port, self.family)

    def _lookup_targets(self, srv_name: str, targets: list[SrvTarget]) -> AddressAnswer:
        jobs = [gevent.spawn(self.resolver.lookup_address, t.target, t.port, self.family) for t in targets]
        try:
            gevent.joinall(jobs)
        finally:
            gevent.killall([j for j in jobs if not j.dead])
        addresses: list[Address] = []
        ttls = [float(t.ttl) for t in targets]
        problems = []
        for t, job in zip(targets, jobs):
            if job.successful():
                addresses.extend(job.value.addresses)
                if job.value.ttl is not None:
                    ttls.append(job.value.ttl)
            else:
                problems.append(f"{t.target}: {job.exception}")
        if not addresses:
            raise DnsLookupError(f"no SRV target of {srv_name} resolves ({'; '.join(problems)})")
        return AddressAnswer(_unique(addresses), min(ttls))

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
