"""The next hop of an in-dialog request by name (gdispatch.dns.nexthop) against a
scripted resolver with a fake clock, and the proxy's `_next_hop` using it: RFC 3263
plans, the cache, failures, and the bound on how long the receiver greenlet waits."""

from __future__ import annotations

import time

import gevent
import gevent.event
import pytest
from proxy_fakes import UAC, FakeProxy, signed_route

from gdispatch.dns import AddressAnswer, DnsLookupError, NameNotFound, NextHopResolver, SrvTarget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Scripted:
    """Answers from dicts, records every call; `gate` holds every lookup until set."""

    timeout = 0.25

    def __init__(self) -> None:
        self.srv: dict[str, list[SrvTarget]] = {}
        self.hosts: dict[str, list[str]] = {}
        self.ttl: float | None = 60
        self.failing: set[str] = set()
        self.calls: list[tuple] = []
        self.gate: gevent.event.Event | None = None

    def resolve_srv(self, name):
        self.calls.append(("SRV", name))
        if self.gate is not None:
            self.gate.wait()
        if name in self.failing:
            raise DnsLookupError(f"SRV {name}: no answer from 127.0.0.1:53 within 2s")
        return list(self.srv.get(name, []))

    def lookup_address(self, host, port, family=0):
        self.calls.append(("A", host, port))
        if self.gate is not None:
            self.gate.wait()
        if host in self.failing:
            raise DnsLookupError(f"A {host}: no answer from 127.0.0.1:53 within 2s")
        if host not in self.hosts:
            raise NameNotFound(f"{host}: no such name (NXDOMAIN)")
        return AddressAnswer([(ip, port) for ip in self.hosts[host]], self.ttl)


@pytest.fixture
def fake():
    return Scripted()


@pytest.fixture
def clock():
    return Clock()


def hops(fake, clock, **kw) -> NextHopResolver:
    return NextHopResolver(fake, clock=clock, **kw)


# -- RFC 3263 ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme, host, port, transport, expected", [
    ("sip", "192.0.2.1", None, "udp", [("192.0.2.1", 5060)]),
    ("sip", "192.0.2.1", 5070, "tcp", [("192.0.2.1", 5070)]),
    ("sips", "2001:db8::1", None, "tls", [("2001:db8::1", 5061)]),
])
def test_an_ip_literal_is_not_looked_up(fake, clock, scheme, host, port, transport, expected):
    assert hops(fake, clock).resolve(scheme, host, port, transport) == expected
    assert fake.calls == []


def test_a_name_with_a_port_is_an_address_lookup_only(fake, clock):
    fake.hosts["gw.test"] = ["192.0.2.7", "192.0.2.8"]
    assert hops(fake, clock).resolve("sip", "gw.test", 5080, "udp") == [("192.0.2.7", 5080), ("192.0.2.8", 5080)]
    assert fake.calls == [("A", "gw.test", 5080)]


@pytest.mark.parametrize("scheme, transport, service", [
    ("sip", "udp", "_sip._udp.gw.test"),
    ("sip", "tcp", "_sip._tcp.gw.test"),
    ("sips", "tls", "_sips._tcp.gw.test"),
])
def test_a_name_without_port_goes_through_srv_for_the_uris_transport(fake, clock, scheme, transport, service):
    fake.srv[service] = [SrvTarget("a.test", 5071, 10, 0, 300), SrvTarget("b.test", 5072, 20, 0, 300)]
    fake.hosts.update({"a.test": ["192.0.2.1"], "b.test": ["192.0.2.2"]})
    assert hops(fake, clock).resolve(scheme, "gw.test", None, transport) == [("192.0.2.1", 5071),
                                                                            ("192.0.2.2", 5072)]
    assert fake.calls[0] == ("SRV", service)


def test_without_srv_records_the_transports_default_port_is_used(fake, clock):
    fake.hosts["gw.test"] = ["192.0.2.7"]
    r = hops(fake, clock)
    assert r.resolve("sip", "gw.test", None, "udp") == [("192.0.2.7", 5060)]
    assert r.resolve("sips", "gw.test", None, "tls") == [("192.0.2.7", 5061)]
    assert fake.calls == [("SRV", "_sip._udp.gw.test"), ("A", "gw.test", 5060),
                          ("SRV", "_sips._tcp.gw.test"), ("A", "gw.test", 5061)]


# -- the cache --------------------------------------------------------------------------


def test_an_answer_is_cached_for_its_ttl_and_names_compare_without_case(fake, clock):
    fake.hosts["gw.test"] = ["192.0.2.7"]
    r = hops(fake, clock)
    assert r.resolve("sip", "gw.test", 5060, "udp") == [("192.0.2.7", 5060)]
    clock.now += 59
    assert r.resolve("sip", "GW.Test", 5060, "udp") == [("192.0.2.7", 5060)]
    assert len(fake.calls) == 1
    fake.hosts["gw.test"] = ["192.0.2.9"]
    clock.now += 1
    assert r.resolve("sip", "gw.test", 5060, "udp") == [("192.0.2.9", 5060)]
    assert len(fake.calls) == 2


@pytest.mark.parametrize("ttl, kept", [(1, 5.0), (86400, 300.0), (None, 300.0)])
def test_ttls_are_floored_and_capped(fake, clock, ttl, kept):
    fake.hosts["gw.test"] = ["192.0.2.7"]
    fake.ttl = ttl
    r = hops(fake, clock, max_ttl=300)
    r.resolve("sip", "gw.test", 5060, "udp")
    clock.now += kept - 0.01
    r.resolve("sip", "gw.test", 5060, "udp")
    assert len(fake.calls) == 1
    clock.now += 0.02
    r.resolve("sip", "gw.test", 5060, "udp")
    assert len(fake.calls) == 2


def test_a_failure_is_cached_for_negative_ttl(fake, clock, caplog):
    r = hops(fake, clock, negative_ttl=5)
    with caplog.at_level("WARNING", "gdispatch.dns"):
        assert r.resolve("sip", "nowhere.test", 5060, "udp") == []
        clock.now += 4.9
        assert r.resolve("sip", "nowhere.test", 5060, "udp") == []
        assert len(fake.calls) == 1
        clock.now += 0.2
        assert r.resolve("sip", "nowhere.test", 5060, "udp") == []
    assert len(fake.calls) == 2
    # One warning for the name, not one per lookup.
    assert [rec.getMessage() for rec in caplog.records] == [
        "next hop nowhere.test: nowhere.test: no such name (NXDOMAIN); requests to it are not forwarded for 5s"]


def test_a_failed_lookup_keeps_the_last_good_address(fake, clock):
    fake.hosts["gw.test"] = ["192.0.2.7"]
    r = hops(fake, clock)
    r.resolve("sip", "gw.test", 5060, "udp")
    fake.failing.add("gw.test")
    clock.now += 600
    assert r.resolve("sip", "gw.test", 5060, "udp") == [("192.0.2.7", 5060)]
    fake.failing.clear()
    fake.hosts["gw.test"] = ["192.0.2.9"]
    clock.now += 5
    assert r.resolve("sip", "gw.test", 5060, "udp") == [("192.0.2.9", 5060)]


def test_the_cache_is_bounded_oldest_first(fake, clock):
    for name in ("a.test", "b.test", "c.test"):
        fake.hosts[name] = ["192.0.2.1"]
    r = hops(fake, clock, max_entries=2)
    for name in ("a.test", "b.test", "c.test"):
        r.resolve("sip", name, 5060, "udp")
    calls = len(fake.calls)
    r.resolve("sip", "c.test", 5060, "udp")
    r.resolve("sip", "b.test", 5060, "udp")
    assert len(fake.calls) == calls  # still cached
    r.resolve("sip", "a.test", 5060, "udp")
    assert len(fake.calls) == calls + 1  # dropped when c.test came


# -- waiting --------------------------------------------------------------------------


def test_the_wait_is_bounded_and_the_lookup_goes_on_to_fill_the_cache(fake, clock):
    fake.hosts["slow.test"] = ["192.0.2.7"]
    fake.gate = gevent.event.Event()
    r = hops(fake, clock, timeout=0.05)
    start = time.monotonic()
    assert r.resolve("sip", "slow.test", 5060, "udp") == []
    assert time.monotonic() - start < 0.5
    assert r.resolve("sip", "slow.test", 5060, "udp") == []  # waits on the same lookup
    assert fake.calls == [("A", "slow.test", 5060)]
    fake.gate.set()
    gevent.sleep(0.01)
    assert r.resolve("sip", "slow.test", 5060, "udp") == [("192.0.2.7", 5060)]
    assert fake.calls == [("A", "slow.test", 5060)]


def test_a_slow_refresh_gives_the_last_good_address_meanwhile(fake, clock):
    fake.hosts["gw.test"] = ["192.0.2.7"]
    r = hops(fake, clock, timeout=0.05)
    r.resolve("sip", "gw.test", 5060, "udp")
    clock.now += 600
    fake.gate = gevent.event.Event()
    assert r.resolve("sip", "gw.test", 5060, "udp") == [("192.0.2.7", 5060)]
    fake.gate.set()


def test_the_default_wait_is_the_resolvers_timeout(fake):
    assert NextHopResolver(fake).timeout == Scripted.timeout
    with pytest.raises(ValueError):
        NextHopResolver(fake, timeout=0)


# -- the proxy --------------------------------------------------------------------------


GATEWAY_IP = "192.0.2.7"


def bye(ruri: str, n: int = 1, branch: str = "z9hG4bK-bye-1") -> bytes:
    """A BYE of call `n` whose Route is our signed entry only: the Request-URI is the
    next hop (RFC 3261 §16.12)."""
    route = signed_route(f"call-{n}@127.0.0.1", f"uac{n}", GATEWAY_IP)
    return (
        f"BYE {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:6000;branch={branch};rport\r\n"
        f"Route: {route}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:caller@127.0.0.1:6000>;tag=uac{n}\r\n"
        f"To: <sip:service@127.0.0.1:5060>;tag=uas{n}\r\n"
        f"Call-ID: call-{n}@127.0.0.1\r\n"
        f"CSeq: 2 BYE\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def proxy_with(fake, clock, **kw) -> FakeProxy:
    fp = FakeProxy()
    fp.proxy.next_hops = NextHopResolver(fake, clock=clock, **kw)
    return fp


def test_the_proxy_sends_to_the_address_the_resolver_gives(fake, clock):
    fake.hosts["gw.test"] = [GATEWAY_IP]
    fp = proxy_with(fake, clock)
    out = fp.receive(bye("sip:service@gw.test:5071"), UAC)
    assert [a for a, _ in out] == [(GATEWAY_IP, 5071)]
    assert fake.calls == [("A", "gw.test", 5071)]
    fp.receive(bye("sip:service@gw.test:5071", branch="z9hG4bK-bye-2"), UAC)
    assert fake.calls == [("A", "gw.test", 5071)]  # the dialog's next request: cached


def test_the_proxy_follows_srv_for_a_name_without_port(fake, clock):
    fake.srv["_sip._udp.gw.test"] = [SrvTarget("a.test", 5072, 10, 0, 300)]
    fake.hosts["a.test"] = [GATEWAY_IP]
    out = proxy_with(fake, clock).receive(bye("sip:service@gw.test"), UAC)
    assert [a for a, _ in out] == [(GATEWAY_IP, 5072)]


def test_the_proxy_skips_an_address_no_listener_can_reach(fake, clock, monkeypatch):
    fake.hosts["gw.test"] = ["2001:db8::7", GATEWAY_IP]
    fp = proxy_with(fake, clock)
    monkeypatch.setattr(fp.transports, "can_reach", lambda transport, host: "no IPv6" if ":" in host else "")
    out = fp.receive(bye("sip:service@gw.test:5071"), UAC)
    assert [a for a, _ in out] == [(GATEWAY_IP, 5071)]


def test_the_proxy_does_not_look_up_an_ip_literal(fake, clock):
    out = proxy_with(fake, clock).receive(bye(f"sip:service@{GATEWAY_IP}:5071"), UAC)
    assert [a for a, _ in out] == [(GATEWAY_IP, 5071)] and fake.calls == []


def test_an_unresolvable_next_hop_is_answered_476(fake, clock):
    out = proxy_with(fake, clock).receive(bye("sip:service@nowhere.test:5071"), UAC)
    assert [(a, d.split(b"\r\n", 1)[0]) for a, d in out] == [(UAC, b"SIP/2.0 476 Unresolvable Destination")]


def test_a_slow_name_holds_the_receiver_no_longer_than_the_timeout(fake, clock):
    fake.hosts["gw.test"] = [GATEWAY_IP]
    fake.gate = gevent.event.Event()
    fp = proxy_with(fake, clock, timeout=0.05)
    start = time.monotonic()
    out = fp.receive(bye("sip:service@gw.test:5071"), UAC)
    assert time.monotonic() - start < 0.5
    assert [d.split(b"\r\n", 1)[0] for _, d in out] == [b"SIP/2.0 476 Unresolvable Destination"]
    fake.gate.set()
    gevent.sleep(0.01)
    # The caller's retry finds the answer the lookup brought meanwhile.
    out = fp.receive(bye("sip:service@gw.test:5071", branch="z9hG4bK-bye-retry"), UAC)
    assert [a for a, _ in out] == [(GATEWAY_IP, 5071)]
