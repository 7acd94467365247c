"""The DNS stub resolver: asks nameservers over gevent UDP and TCP sockets, the wire
format encoded and decoded by dnspython (`gdispatch.dns.wire`).

`Resolver` asks the nameservers of ``/etc/resolv.conf`` (or those given explicitly)
with random ids and source ports, checks that a reply answers the question asked
(RFC 5452 §9.1), retries the next server, and repeats the query over TCP when a reply
is truncated (RFC 1035 §4.2.1). `resolve_srv` returns SRV targets in RFC 2782 order;
`lookup_address` returns (ip, port) pairs with their TTL. A/AAAA go through the system
resolver (`getaddrinfo` in gevent's resolver, so ``/etc/hosts``, nsswitch and search
domains apply) unless the resolver was given its own nameservers: then every lookup
asks those, after ``/etc/hosts``.

The sockets are gevent's own and every wait is a gevent wait, so a lookup blocks only
the calling greenlet. dnspython's `dns.query` functions are not used: gdispatch does
not monkey-patch the standard library (its watchdog threads must stay real threads,
`gdispatch.watch`), and `dns.query` waits for its sockets with a `selectors` selector
of the standard library, which would stop the whole hub, every call and transaction
with it, for up to the timeout; `dns.asyncquery` runs on asyncio or trio, not gevent.

Not here: DNSSEC, EDNS0, negative caching from the SOA minimum, search domains for SRV
names.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import struct

import gevent
import gevent.socket

from gdispatch.dns.answers import Address, AddressAnswer, DnsLookupError, NameNotFound, SrvTarget, unique
from gdispatch.dns.conf import ResolvConf, is_ip_literal, parse_hosts, parse_resolv_conf
from gdispatch.dns.policy import order_srv
from gdispatch.dns.wire import (
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_SRV,
    DnsFormatError,
    Message,
    Record,
    SrvData,
    answers_for,
    decode_message,
    decode_question,
    encode_query,
    is_reply_to,
    is_truncated,
    rcode_name,
    rcode_of,
    type_name,
)

log = logging.getLogger("gdispatch.dns")

DEFAULT_TIMEOUT = 2.0  # seconds per try
DEFAULT_ATTEMPTS = 2  # rounds over the nameserver list
MAX_CNAME_HOPS = 8


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
        qtypes = [TYPE_A, TYPE_AAAA]
        if family in (socket.AF_INET, socket.AF_INET6):
            qtypes = [TYPE_A] if family == socket.AF_INET else [TYPE_AAAA]
        jobs = [gevent.spawn(self._records_or_error, name, qtype) for qtype in qtypes]
        try:
            gevent.joinall(jobs)
        finally:
            gevent.killall([j for j in jobs if not j.dead])
        addresses: list[Address] = []
        ttls: list[int] = []
        errors: list[BaseException] = []
        for job in jobs:
            found = job.value if job.successful() else None
            if isinstance(found, DnsLookupError):
                errors.append(found)
            elif found is not None:
                records, _ = found
                addresses.extend((r.data, port) for r in records if isinstance(r.data, str))
                ttls.extend(r.ttl for r in records)
            else:
                errors.append(job.exception or DnsLookupError("lookup interrupted"))
        if addresses:
            return AddressAnswer(unique(addresses), float(min(ttls)))
        # Both failed: a real failure says more than "no such name" for the other type.
        failures = [e for e in errors if not isinstance(e, NameNotFound)]
        err = (failures or errors)[0]
        raise err if isinstance(err, DnsLookupError) else DnsLookupError(str(err))

    # -- records and queries

    def _records_or_error(self, name: str, qtype: int) -> tuple[list[Record], int] | DnsLookupError:
        """`_records` for a greenlet of its own: a failed lookup is its result, not an
        exception, which gevent's hub would print with a traceback (at every retry of a
        destination that does not resolve)."""
        try:
            return self._records(name, qtype)
        except DnsLookupError as e:
            return e

    def _records(self, name: str, qtype: int) -> tuple[list[Record], int]:
        """The answer records of `qtype` for `name`, asking again for the end of a CNAME
        chain the server did not chase. Raises NameNotFound or DnsLookupError."""
        current = name
        for _ in range(MAX_CNAME_HOPS):
            message = self.query(current, qtype)
            if rcode_of(message) == RCODE_NXDOMAIN:
                raise NameNotFound(f"{name}: no such name (NXDOMAIN)")
            records, end = answers_for(message, current, qtype)
            if records:
                return records, min(r.ttl for r in records)
            if end == current.lower().rstrip("."):
                raise NameNotFound(f"{name}: no {type_name(qtype)} record")
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
                rcode = rcode_of(message)
                if rcode in (RCODE_NOERROR, RCODE_NXDOMAIN):
                    return message
                problem = f"{where} answered {rcode_name(rcode)}"
        raise DnsLookupError(f"{type_name(qtype)} {name}: {problem}")

    def _deadline(self) -> gevent.Timeout:
        # Raises TimeoutError, not gevent.Timeout: a Timeout a caller set around a lookup
        # must pass through `query` rather than count as one server not answering.
        return gevent.Timeout(self.timeout, TimeoutError("timed out"))

    def _exchange_udp(self, server: Address, packet: bytes, qid: int, name: str,
                      qtype: int) -> Message | None:
        """Send once, wait up to `timeout` for the reply to this question; None when the
        reply is truncated. Raises TimeoutError (an OSError), or DnsFormatError when the
        only replies to this question were malformed."""
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        malformed = ""
        try:
            with gevent.socket.socket(family, socket.SOCK_DGRAM) as sock, self._deadline():
                # An unbound socket gets a kernel-chosen random source port at connect;
                # the connection makes the kernel drop datagrams from other addresses.
                sock.connect(server)
                sock.send(packet)
                while True:  # ends by returning or by the Timeout
                    data = sock.recv(65535)
                    try:
                        head = decode_question(data)
                    except DnsFormatError:
                        continue
                    if not is_reply_to(head, qid, name, qtype):
                        continue  # not the reply to this query (RFC 5452 §9.1)
                    if is_truncated(head):
                        return None
                    try:
                        return decode_message(data)
                    except DnsFormatError as e:
                        # Not the end of the wait: a spoofed datagram must not cut
                        # the real reply off. The fault is reported if none comes.
                        log.debug("malformed reply from %s:%s: %s", server[0], server[1], e)
                        malformed = str(e)
        except TimeoutError:
            if malformed:
                raise DnsFormatError(f"{malformed} (no well-formed reply within {self.timeout:g}s)") from None
            raise

    def _exchange_tcp(self, server: Address, packet: bytes, qid: int, name: str, qtype: int) -> Message:
        """RFC 1035 §4.2.2: the same query with a two-octet length prefix."""
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        with gevent.socket.socket(family, socket.SOCK_STREAM) as sock, self._deadline():
            sock.connect(server)
            sock.sendall(struct.pack("!H", len(packet)) + packet)
            (length,) = struct.unpack("!H", _recv_exactly(sock, 2))
            message = decode_message(_recv_exactly(sock, length))
        if not is_reply_to(message, qid, name, qtype):
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
        addresses = unique((str(info[4][0]), port) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6))
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


def _recv_exactly(sock: gevent.socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:  # each recv returns at least one octet or ends the loop
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise DnsFormatError("TCP connection closed in the middle of a reply")
        data += chunk
    return bytes(data)

