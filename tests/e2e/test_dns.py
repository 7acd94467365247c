"""Name resolution against a fake DNS server on 127.0.0.1 (SIP traffic only in the last
test, a request inside a dialog sent by name through a gdispatch process).

The server runs in a thread with plain sockets, outside the gevent hub, so a resolver
that blocked the hub would show it: the other greenlets would stop while it waits. It
answers from a small table, NXDOMAIN for other names, and can be told to fail, stay
silent, delay, truncate (answering in full over TCP), send decoy replies first, or send
a malformed reply.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import struct
import threading
import time

import gevent
import pytest
from dns.message import from_wire as read_query  # not `import dns`: the fixture below is `dns`

from gdispatch.dispatcher.listfile import parse_list
from gdispatch.dns import DestinationResolver, DnsLookupError, NameNotFound, NextHopResolver, Resolver
from gdispatch.dns.wire import TYPE_A, TYPE_AAAA, TYPE_SRV, name_text, to_name
from tests.support.wait import wait_for

from . import harness
from .harness import HOST

SRV_GW = "_sip._udp.gw.test"


class FakeDns:
    """A DNS server answering from `records`: {(name, qtype): [(ttl, data)]}, where data is
    an IP text for A/AAAA and (priority, weight, port, target) for SRV. `mode[name]`:
    "servfail", "drop", "truncate" or "decoy"; `fail_all` makes every answer SERVFAIL."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, int], list] = {}
        self.mode: dict[str, str] = {}
        self.fail_all = False
        self.delay = 0.0
        self.queries: list[tuple[str, int, str]] = []
        self.lock = threading.Lock()
        self.udp, self.tcp = self._bind()
        self.port = self.udp.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="fake-dns", daemon=True)
        self.thread.start()

    @staticmethod
    def _bind() -> tuple[socket.socket, socket.socket]:
        for _ in range(50):  # a free UDP port whose TCP twin is free too
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(8)
            return udp, tcp
        raise RuntimeError("no free port for the fake DNS server")

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def add(self, name: str, qtype: int, *items, ttl: int = 300) -> None:
        with self.lock:
            self.records.setdefault((name, qtype), []).extend((ttl, item) for item in items)

    def count(self, name: str | None = None, proto: str | None = None) -> int:
        with self.lock:
            return sum(1 for n, _, p in self.queries if (name is None or n == name) and (proto is None or p == proto))

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.udp.close()
        self.tcp.close()

    # -- the server thread

    def _serve(self) -> None:
        later: list[tuple[float, bytes, tuple]] = []
        while not self.stopping.is_set():
            readable, _, _ = select.select([self.udp, self.tcp], [], [], 0.01)
            if self.udp in readable:
                query, peer = self.udp.recvfrom(4096)
                for reply in self._replies(query, "udp"):
                    later.append((time.monotonic() + self.delay, reply, peer))
            if self.tcp in readable:
                self._serve_tcp()
            now = time.monotonic()
            for item in [x for x in later if x[0] <= now]:
                later.remove(item)
                self.udp.sendto(item[1], item[2])

    def _serve_tcp(self) -> None:
        conn, _ = self.tcp.accept()
        with conn:
            conn.settimeout(2)
            try:
                (length,) = struct.unpack("!H", conn.recv(2, socket.MSG_WAITALL))
                query = conn.recv(length, socket.MSG_WAITALL)
                for reply in self._replies(query, "tcp")[-1:]:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
            except (OSError, struct.error):
                pass

    def _replies(self, query: bytes, proto: str) -> list[bytes]:
        # The query is read with dnspython; the replies are written octet by octet, so
        # what the resolver decodes does not come from the same encoder.
        msg = read_query(query)
        qname, qtype = name_text(msg.question[0].name), int(msg.question[0].rdtype)
        with self.lock:
            self.queries.append((qname, qtype, proto))
            mode = "servfail" if self.fail_all else self.mode.get(qname, "")
            found = list(self.records.get((qname, qtype), []))
            exists = any(name == qname for name, _ in self.records)
        if mode == "drop":
            return []
        if mode == "malformed":
            # Our id and question, then a record whose rdata is cut short.
            return [struct.pack("!HHHHHH", msg.id, 0x8180, 1, 1, 0, 0) + to_name(qname).to_wire()
                    + struct.pack("!HH", qtype, 1) + b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 5, 40)]
        echo = to_name(qname).to_wire() + struct.pack("!HH", qtype, 1)
        flags = 0x8180
        if mode == "servfail":
            return [struct.pack("!HHHHHH", msg.id, flags | 2, 1, 0, 0, 0) + echo]
        if mode == "truncate" and proto == "udp":
            return [struct.pack("!HHHHHH", msg.id, flags | 0x0200, 1, 0, 0, 0) + echo]
        rcode = 0 if found or exists else 3
        answers = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, ttl, len(rd)) + rd
                           for ttl, rd in ((ttl, _rdata(qtype, item)) for ttl, item in found))
        reply = struct.pack("!HHHHHH", msg.id, flags | rcode, 1, len(found), 0, 0) + echo + answers
        if mode == "decoy":
            # A reply with the wrong id and one for another question come first.
            wrong_id = struct.pack("!H", (msg.id + 1) & 0xFFFF) + reply[2:]
            other_q = (struct.pack("!HHHHHH", msg.id, flags, 1, 0, 0, 0) + to_name("evil.test").to_wire()
                       + struct.pack("!HH", qtype, 1))
            return [wrong_id, other_q, b"\x00garbage", reply]
        return [reply]


def _rdata(qtype: int, item) -> bytes:
    if qtype == TYPE_A:
        return socket.inet_pton(socket.AF_INET, item)
    if qtype == TYPE_AAAA:
        return socket.inet_pton(socket.AF_INET6, item)
    priority, weight, port, target = item
    return struct.pack("!HHH", priority, weight, port) + to_name(target).to_wire()


@pytest.fixture
def dns():
    server = FakeDns()
    server.add(SRV_GW, TYPE_SRV, (20, 0, 5072, "localhost"), (10, 0, 5071, "localhost"))
    yield server
    server.close()


@pytest.fixture
def hosts(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 localhost\n")
    return str(path)


@pytest.fixture
def resolver(dns, hosts):
    return Resolver([dns.address], timeout=0.3, attempts=1, hosts_file=hosts, rng=random.Random(3263))


@pytest.fixture
def started():
    resolvers: list[DestinationResolver] = []
    yield resolvers.append
    for r in resolvers:
        r.stop()


def one_list(text: str):
    dlist = parse_list(text, "d.list")
    return dlist, list(dlist.destinations())


# -- the resolver ------------------------------------------------------------------------


def test_srv_targets_come_in_priority_order(resolver):
    targets = resolver.resolve_srv(SRV_GW)
    assert [(t.target, t.port, t.priority, t.ttl) for t in targets] == [
        ("localhost", 5071, 10, 300), ("localhost", 5072, 20, 300)]


def test_srv_weights_share_the_first_place(dns, resolver):
    dns.add("_sip._udp.weighted.test", TYPE_SRV, (10, 80, 5081, "a.test"), (10, 20, 5082, "b.test"))
    firsts = [resolver.resolve_srv("_sip._udp.weighted.test")[0].port for _ in range(200)]
    assert 0.65 < firsts.count(5081) / 200 < 0.95


def test_missing_srv_is_an_empty_list_not_an_error(resolver):
    assert resolver.resolve_srv("_sip._udp.nowhere.test") == []


def test_srv_dot_target_means_no_service(dns, resolver):
    dns.add("_sip._udp.none.test", TYPE_SRV, (0, 0, 0, "."))
    with pytest.raises(NameNotFound, match="not available"):
        resolver.resolve_srv("_sip._udp.none.test")


def test_a_and_aaaa_from_our_nameserver_with_ttl(dns, resolver):
    dns.add("gw2.test", TYPE_A, "127.0.0.2", ttl=40)
    dns.add("gw2.test", TYPE_AAAA, "::1", ttl=20)
    answer = resolver.lookup_address("gw2.test", 5090)
    assert answer.addresses == [("127.0.0.2", 5090), ("::1", 5090)] and answer.ttl == 20
    assert resolver.resolve_address("gw2.test", 5090, socket.AF_INET) == [("127.0.0.2", 5090)]
    with pytest.raises(NameNotFound, match="no such name"):
        resolver.resolve_address("nowhere.test", 5060)


def test_server_failure_is_a_lookup_error_naming_the_server(dns, resolver):
    dns.mode[SRV_GW] = "servfail"
    with pytest.raises(DnsLookupError, match=f"127.0.0.1:{dns.port} answered SERVFAIL"):
        resolver.resolve_srv(SRV_GW)


def test_silent_server_times_out_after_each_attempt(dns, hosts):
    dns.mode[SRV_GW] = "drop"
    r = Resolver([dns.address], timeout=0.1, attempts=3, hosts_file=hosts)
    start = time.monotonic()
    with pytest.raises(DnsLookupError, match="no answer from .* within 0.1s"):
        r.resolve_srv(SRV_GW)
    assert 0.28 < time.monotonic() - start < 1.5
    assert dns.count(SRV_GW) == 3


def test_next_nameserver_is_asked_when_one_is_down(dns, hosts):
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there: the kernel answers "port unreachable"
    r = Resolver([("127.0.0.1", dead_port), dns.address], timeout=0.3, attempts=1, hosts_file=hosts)
    assert [t.port for t in r.resolve_srv(SRV_GW)] == [5071, 5072]


def test_replies_with_a_wrong_id_or_question_are_ignored(dns, resolver):
    dns.mode[SRV_GW] = "decoy"
    assert [t.port for t in resolver.resolve_srv(SRV_GW)] == [5071, 5072]


def test_truncated_reply_is_asked_again_over_tcp(dns, resolver):
    dns.mode[SRV_GW] = "truncate"
    assert [t.port for t in resolver.resolve_srv(SRV_GW)] == [5071, 5072]
    assert dns.count(SRV_GW, "udp") == 1 and dns.count(SRV_GW, "tcp") == 1


def test_waiting_for_an_answer_does_not_block_the_hub(dns, hosts):
    dns.delay = 0.3
    resolver = Resolver([dns.address], timeout=2, attempts=1, hosts_file=hosts)
    ticks = []

    def ticker():
        for _ in range(200):  # bounded: 2 s at most
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    other = gevent.spawn(ticker)
    start = time.monotonic()
    targets = resolver.resolve_srv(SRV_GW)
    waited = time.monotonic() - start
    other.kill()
    assert [t.port for t in targets] == [5071, 5072] and waited >= 0.25
    assert len([t for t in ticks if start <= t <= start + waited]) >= 10


def test_a_callers_timeout_is_not_taken_for_a_silent_server(dns, hosts):
    dns.mode[SRV_GW] = "drop"
    r = Resolver([dns.address], timeout=1.0, attempts=2, hosts_file=hosts)
    start = time.monotonic()
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.1):
            r.resolve_srv(SRV_GW)
    assert time.monotonic() - start < 0.5


def test_system_resolver_path_finds_localhost(dns):
    r = Resolver([dns.address], use_getaddrinfo=True, timeout=0.3, attempts=1)
    assert ("127.0.0.1", 5060) in r.resolve_address("localhost", 5060)


# -- destinations ------------------------------------------------------------------------


def test_destination_without_port_resolves_through_srv(dns, resolver):
    dlist, (d,) = one_list("1 sip:gw.test\n")
    r = DestinationResolver(resolver)
    r.resolve_all(dlist)
    assert (d.address, d.unusable) == (("127.0.0.1", 5071), "")
    assert r.addresses(d) == [("127.0.0.1", 5071), ("127.0.0.1", 5072)]


def test_unresolvable_name_is_unusable_then_retried_until_it_resolves(dns, resolver, started, caplog):
    dlist, (good, later) = one_list("1 sip:gw.test\n1 sip:later.test\n")
    r = DestinationResolver(resolver, refresh_interval=60, retry_interval=0.1)
    started(r)
    with caplog.at_level(logging.WARNING, "gdispatch.dns"):
        r.resolve_all(dlist)
    assert later.address is None
    assert later.unusable == "cannot resolve later.test: no such name (NXDOMAIN)"
    assert "d.list:2: destination sip:later.test: cannot resolve later.test" in caplog.text
    assert list(dlist.destinations()) == [good, later]
    r.start(lambda: dlist)
    wait_for(lambda: dns.count("_sip._udp.later.test") >= 3, 3, 0.02)  # retried
    dns.add("later.test", TYPE_A, "127.0.0.2")
    wait_for(lambda: later.address == ("127.0.0.2", 5060), 3, 0.02)
    assert later.unusable == ""


def test_failed_refresh_keeps_the_last_good_address(dns, resolver, started, caplog):
    dlist, (d,) = one_list("1 sip:gw.test\n")
    changes = []
    r = DestinationResolver(resolver, refresh_interval=0.1, retry_interval=0.1, on_change=changes.append)
    started(r)
    r.resolve_all(dlist)
    dns.fail_all = True
    before = dns.count(SRV_GW)
    with caplog.at_level(logging.WARNING, "gdispatch.dns"):
        r.start(lambda: dlist)
        wait_for(lambda: dns.count(SRV_GW) >= before + 3, 3, 0.02)
    assert (d.address, d.unusable) == (("127.0.0.1", 5071), "")
    assert r.addresses(d) == [("127.0.0.1", 5071), ("127.0.0.1", 5072)]
    assert changes == []
    warnings = [rec.getMessage() for rec in caplog.records]
    assert len(warnings) == 1 and "SERVFAIL; keeping the last good address 127.0.0.1:5071" in warnings[0]


def test_refresh_follows_a_changed_srv_answer(dns, resolver, started):
    dlist, (d,) = one_list("1 sip:gw.test\n")
    changes = []
    r = DestinationResolver(resolver, refresh_interval=0.1, retry_interval=0.1, on_change=changes.append)
    started(r)
    r.resolve_all(dlist)
    r.start(lambda: dlist)
    with dns.lock:
        dns.records[(SRV_GW, TYPE_SRV)] = [(300, (10, 0, 5073, "localhost"))]
    wait_for(lambda: d.address == ("127.0.0.1", 5073), 3, 0.02)
    assert changes and changes[0] is d
    r.stop()
    gevent.sleep(0.05)  # a query already on its way when it stopped may still be counted
    seen = dns.count()
    gevent.sleep(0.3)  # the scenario: 0.3 s (three refresh intervals) in which nothing is asked
    assert dns.count() == seen  # stopped means no more queries


def test_flag_16_is_resolved_on_demand_only(dns, resolver):
    dlist, (d,) = one_list("1 sip:gw.test 16\n")
    r = DestinationResolver(resolver)
    r.resolve_all(dlist)
    assert dns.count() == 0 and d.address is None and d.unusable == ""
    assert r.resolve_now(d) == [("127.0.0.1", 5071), ("127.0.0.1", 5072)]
    queries = dns.count()
    assert r.resolve_now(d)[0] == ("127.0.0.1", 5071) and dns.count() == queries  # cached


def test_refresh_does_not_touch_flag_16_destinations(dns, resolver, started):
    dlist, (d,) = one_list("1 sip:gw.test 16\n")
    r = DestinationResolver(resolver, refresh_interval=0.05, retry_interval=0.05)
    started(r)
    r.resolve_all(dlist)
    r.start(lambda: dlist)
    gevent.sleep(0.3)  # the scenario: six refresh intervals in which nothing is asked
    assert dns.count() == 0


def test_many_destinations_resolve_in_parallel(dns, resolver):
    dns.delay = 0.2
    text = "".join(f"{i} sip:gw.test\n" for i in range(1, 9))
    dlist, ds = one_list(text)
    r = DestinationResolver(resolver, concurrency=8)
    start = time.monotonic()
    r.resolve_all(dlist)
    assert time.monotonic() - start < 0.8  # not 8 × 0.2 s
    assert all(d.address == ("127.0.0.1", 5071) for d in ds)
    assert dns.count(SRV_GW) == 1  # one question for the same name at the same time


def test_malformed_replies_are_reported_as_such(dns, resolver):
    dns.mode[SRV_GW] = "malformed"
    with pytest.raises(DnsLookupError, match=f"127.0.0.1:{dns.port}: malformed DNS message"):
        resolver.resolve_srv(SRV_GW)


# -- next hops inside a dialog -----------------------------------------------------------


def test_next_hop_by_name_follows_srv_and_is_cached(dns, resolver):
    hops = NextHopResolver(resolver)
    assert hops.resolve("sip", "gw.test", None, "udp") == [("127.0.0.1", 5071), ("127.0.0.1", 5072)]
    queries = dns.count()
    assert hops.resolve("sip", "GW.test", None, "udp")[0] == ("127.0.0.1", 5071)
    assert dns.count() == queries  # cached for the SRV record's TTL


def test_next_hop_lookup_that_gets_no_answer_lets_the_hub_run_and_ends_at_the_timeout(dns, hosts):
    dns.mode["silent.test"] = "drop"
    hops = NextHopResolver(Resolver([dns.address], timeout=0.3, attempts=2, hosts_file=hosts))
    ticks = []

    def ticker():
        for _ in range(100):  # bounded: 1 s at most
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    other = gevent.spawn(ticker)
    start = time.monotonic()
    assert hops.resolve("sip", "silent.test", 5060, "udp") == []
    waited = time.monotonic() - start
    other.kill()
    assert 0.25 < waited < 0.5  # one try's timeout, not attempts × timeout
    assert len([t for t in ticks if start <= t <= start + waited]) >= 10


def test_the_proxy_sends_an_in_dialog_request_to_a_name_through_its_nameservers(dns, proxy, answerers, tmp_path):
    gateway = answerers()
    dns.add("uas.test", TYPE_A, "127.0.0.1")
    dns.add("_sip._udp.bysrv.test", TYPE_SRV, (10, 0, gateway.port, "uas.test"))
    p = proxy("1 sip:127.0.0.1:9 0 0\n",
              config=f'[dns]\nnameservers = ["127.0.0.1:{dns.port}"]\n[probing]\ninterval = 0\n'
                     + harness.key_config(tmp_path))
    lp = harness.free_port("udp")
    for n, ruri in enumerate((f"sip:gw@uas.test:{gateway.port}", "sip:gw@bysrv.test")):
        route = f"Route: {harness.signed_route(p.port, f'byname-{n}', 'a', HOST)}"
        bye = harness.build_request("BYE", ruri, local_port=lp, call_id=f"byname-{n}", from_tag="a",
                                    to=f"<sip:b@{HOST}>;tag=b", cseq=2, headers=[route])
        replies = p.send_udp(bye, timeout=3.0, local_port=lp)
        assert harness.status_code(replies[-1]) == 200, (ruri, replies, p.log())
    assert [m.split(b" ", 2)[:2] for m in gateway.received] == [
        [b"BYE", f"sip:gw@uas.test:{gateway.port}".encode()], [b"BYE", b"sip:gw@bysrv.test"]]
    assert dns.count("uas.test") >= 1 and dns.count("_sip._udp.bysrv.test") == 1


def test_a_name_that_does_not_resolve_is_an_error_without_a_traceback_in_the_log(resolver, capfd):
    """A and AAAA are asked in greenlets of their own: their "no such name" is an answer
    to report once, not an exception for gevent's hub to print with a traceback (at every
    retry of a destination that does not resolve)."""
    with pytest.raises(NameNotFound, match="nowhere.test: no such name"):
        resolver.lookup_address("nowhere.test", 5060)
    assert "Traceback" not in capfd.readouterr().err
