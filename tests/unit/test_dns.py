"""Name resolution policy without a network: resolv.conf/hosts parsing, RFC 2782
ordering, RFC 3263 lookup plans, and DestinationResolver against a scripted resolver
with a fake clock."""

from __future__ import annotations

import logging
import random
import socket
from collections import Counter

import gevent
import gevent.event
import pytest

from gdispatch.dispatcher.listfile import parse_list
from gdispatch.dns import (
    AddressAnswer,
    DestinationResolver,
    DnsLookupError,
    NameNotFound,
    Resolver,
    SrvTarget,
    order_srv,
    parse_hosts,
    parse_nameserver,
    parse_resolv_conf,
    plan_lookup,
)

# -- pure helpers -----------------------------------------------------------------------


@pytest.mark.parametrize("scheme, host, port, transport, srv, default", [
    ("sip", "gw.test", None, "udp", "_sip._udp.gw.test", 5060),
    ("sip", "gw.test", None, "tcp", "_sip._tcp.gw.test", 5060),
    ("sip", "gw.test", None, "TLS", "_sips._tcp.gw.test", 5061),
    ("sips", "gw.test", None, "tls", "_sips._tcp.gw.test", 5061),
    ("sip", "gw.test", None, "sctp", "_sip._sctp.gw.test", 5060),
    ("sip", "gw.test", None, "ws", None, 5060),
    ("sip", "gw.test", 5070, "udp", None, 5060),
    ("sip", "192.0.2.1", None, "udp", None, 5060),
    ("sip", "2001:db8::1", None, "tcp", None, 5060),
])
def test_lookup_plan_follows_rfc3263(scheme, host, port, transport, srv, default):
    plan = plan_lookup(scheme, host, port, transport)
    assert (plan.srv_name, plan.default_port, plan.port) == (srv, default, port)
    assert plan.literal == (host[0].isdigit())


def test_resolv_conf_nameservers_and_options():
    conf = parse_resolv_conf(
        "# comment\nsearch example.com\nnameserver 10.0.0.1\nnameserver bogus\nnameserver ::1 # v6\n"
        "nameserver 10.0.0.2\nnameserver 10.0.0.3\noptions rotate timeout:7 attempts:9 ndots:2\n")
    assert conf.nameservers == [("10.0.0.1", 53), ("::1", 53), ("10.0.0.2", 53)]  # MAXNS = 3
    assert (conf.timeout, conf.attempts) == (7.0, 5)  # attempts clamped like glibc


def test_resolv_conf_without_options_leaves_defaults_to_the_resolver(tmp_path):
    assert parse_resolv_conf("nameserver 127.0.0.53\noptions timeout:0 edns0\n").timeout == 1.0
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.53\n")
    r = Resolver(resolv_conf=str(path))
    assert (r.nameservers, r.timeout, r.attempts, r.use_getaddrinfo) == ([("127.0.0.53", 53)], 2.0, 2, True)


def test_missing_resolv_conf_asks_localhost(tmp_path):
    r = Resolver(resolv_conf=str(tmp_path / "none"))
    assert r.nameservers == [("127.0.0.1", 53)] and r.use_getaddrinfo


def test_explicit_nameservers_are_asked_for_everything():
    r = Resolver([("127.0.0.1", 5353)], timeout=0.5, attempts=1)
    assert (r.nameservers, r.timeout, r.attempts, r.use_getaddrinfo) == ([("127.0.0.1", 5353)], 0.5, 1, False)


@pytest.mark.parametrize("text, expected", [
    ("192.0.2.1", ("192.0.2.1", 53)),
    ("192.0.2.1:5353", ("192.0.2.1", 5353)),
    ("::1", ("::1", 53)),
    ("[2001:db8::1]:5300", ("2001:db8::1", 5300)),
    ("[::1]", ("::1", 53)),
])
def test_nameserver_override_syntax(text, expected):
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize("text", ["ns.example.com", "192.0.2.1:0", "192.0.2.1:dns", "[::1", "[::1]x", ""])
def test_bad_nameserver_override(text):
    with pytest.raises(ValueError):
        parse_nameserver(text)


def test_hosts_file_parsing():
    table = parse_hosts("127.0.0.1 localhost Loopback\n::1 localhost ip6-localhost # v6\nbogus name\n"
                        "# 10.0.0.1 commented\n192.0.2.5 gw.test.\n")
    assert table == {"localhost": ["127.0.0.1", "::1"], "loopback": ["127.0.0.1"],
                     "ip6-localhost": ["::1"], "gw.test": ["192.0.2.5"]}


def srv(target, port, priority, weight, ttl=300):
    return SrvTarget(target, port, priority, weight, ttl)


def test_srv_order_is_by_priority_first():
    records = [srv("c", 3, 30, 50), srv("a", 1, 10, 0), srv("b", 2, 20, 100)]
    assert [r.target for r in order_srv(records, random.Random(1))] == ["a", "b", "c"]


def test_srv_weights_share_first_place_in_proportion():
    # RFC 2782: within a priority, the chance of being first is weight / total.
    rng = random.Random(2782)
    records = [srv("a", 1, 10, 90), srv("b", 2, 10, 10), srv("z", 9, 20, 5)]
    firsts = Counter()
    for _ in range(5000):
        ordered = order_srv(records, rng)
        assert ordered[-1].target == "z" and len(ordered) == 3
        firsts[ordered[0].target] += 1
    assert 0.87 < firsts["a"] / 5000 < 0.93


def test_srv_weight_zero_is_rarely_first_when_others_have_weight():
    rng = random.Random(7)
    records = [srv("zero", 1, 1, 0), srv("w", 2, 1, 50)]
    firsts = Counter(order_srv(records, rng)[0].target for _ in range(2000))
    assert firsts["zero"] < 2000 * 0.05 and firsts["w"] > 2000 * 0.95


def test_srv_all_weights_zero_still_gives_every_order():
    rng = random.Random(9)
    records = [srv("a", 1, 1, 0), srv("b", 2, 1, 0)]
    firsts = Counter(order_srv(records, rng)[0].target for _ in range(400))
    assert firsts["a"] > 100 and firsts["b"] > 100


# -- DestinationResolver with a scripted resolver ----------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedResolver:
    """Answers from dicts; records every call."""

    def __init__(self):
        self.srv: dict[str, list[SrvTarget]] = {}
        self.hosts: dict[str, list[str]] = {}
        self.ttl: float | None = None
        self.failing: set[str] = set()
        self.calls: list[tuple] = []
        self.gate: gevent.event.Event | None = None
        self.active = 0
        self.most_active = 0

    def resolve_srv(self, name):
        self.calls.append(("SRV", name))
        if name in self.failing:
            raise DnsLookupError(f"SRV {name}: no answer from 127.0.0.1:53 within 2s")
        return list(self.srv.get(name, []))

    def lookup_address(self, host, port, family=0):
        self.calls.append(("A", host, port))
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            if self.gate is not None:
                self.gate.wait()
            if host in self.failing:
                raise DnsLookupError(f"A {host}: no answer from 127.0.0.1:53 within 2s")
            if host not in self.hosts:
                raise NameNotFound(f"{host}: no such name (NXDOMAIN)")
            return AddressAnswer([(ip, port) for ip in self.hosts[host]], self.ttl)
        finally:
            self.active -= 1


@pytest.fixture
def fake():
    return ScriptedResolver()


@pytest.fixture
def clock():
    return FakeClock()


def make(fake, clock, **kw):
    kw.setdefault("refresh_interval", 600.0)
    kw.setdefault("retry_interval", 30.0)
    return DestinationResolver(fake, clock=clock, **kw)


def dests(text):
    dlist = parse_list(text, "d.list")
    return dlist, list(dlist.destinations())


def test_ip_literal_needs_no_lookup(fake, clock):
    dlist, (v4, v6) = dests("1 sip:192.0.2.1:5070\n1 sip:[2001:db8::1];transport=tcp\n")
    make(fake, clock).resolve_all(dlist)
    assert fake.calls == []
    assert (v4.address, v4.unusable) == (("192.0.2.1", 5070), "")
    assert v6.address == ("2001:db8::1", 5060)


def test_hostname_with_port_is_an_address_lookup_without_srv(fake, clock):
    fake.hosts["gw.test"] = ["192.0.2.1", "192.0.2.2"]
    dlist, (d,) = dests("1 sip:gw.test:5080\n")
    r = make(fake, clock)
    r.resolve_all(dlist)
    assert fake.calls == [("A", "gw.test", 5080)]
    assert d.address == ("192.0.2.1", 5080)
    assert r.addresses(d) == [("192.0.2.1", 5080), ("192.0.2.2", 5080)]


def test_hostname_without_port_uses_srv_targets_in_order(fake, clock):
    fake.srv["_sip._udp.gw.test"] = [srv("b.test", 5072, 10, 0), srv("c.test", 5073, 20, 0)]
    fake.hosts.update({"b.test": ["192.0.2.2"], "c.test": ["192.0.2.3"]})
    dlist, (d,) = dests("1 sip:gw.test\n")
    r = make(fake, clock)
    r.resolve_all(dlist)
    assert d.address == ("192.0.2.2", 5072)
    assert r.addresses(d) == [("192.0.2.2", 5072), ("192.0.2.3", 5073)]


def test_without_srv_records_the_default_port_is_used(fake, clock):
    fake.hosts["gw.test"] = ["192.0.2.1"]
    dlist, (udp, tcp, tls) = dests("1 sip:gw.test\n2 sip:gw.test;transport=tcp\n3 sips:gw.test\n")
    make(fake, clock).resolve_all(dlist)
    assert ("SRV", "_sip._udp.gw.test") in fake.calls and ("SRV", "_sip._tcp.gw.test") in fake.calls
    assert ("SRV", "_sips._tcp.gw.test") in fake.calls
    assert (udp.address, tcp.address, tls.address) == (("192.0.2.1", 5060), ("192.0.2.1", 5060),
                                                       ("192.0.2.1", 5061))


def test_srv_target_that_does_not_resolve_is_skipped(fake, clock):
    fake.srv["_sip._udp.gw.test"] = [srv("gone.test", 5071, 10, 0), srv("b.test", 5072, 20, 0)]
    fake.hosts["b.test"] = ["192.0.2.2"]
    dlist, (d,) = dests("1 sip:gw.test\n")
    make(fake, clock).resolve_all(dlist)
    assert d.address == ("192.0.2.2", 5072)


def test_unresolvable_name_stays_listed_with_a_reason(fake, clock, caplog):
    fake.srv["_sip._udp.bad.test"] = [srv("gone.test", 5071, 10, 0)]
    dlist, (d, e) = dests("1 sip:nowhere.test\n1 sip:bad.test\n")
    with caplog.at_level(logging.WARNING, "gdispatch.dns"):
        make(fake, clock).resolve_all(dlist)
    assert d.address is None and d.unusable == "cannot resolve nowhere.test: no such name (NXDOMAIN)"
    assert e.address is None and "no SRV target of _sip._udp.bad.test resolves" in e.unusable
    assert len(dlist.get(1).destinations) == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert warnings[0].startswith("d.list:1: destination sip:nowhere.test: cannot resolve nowhere.test")
    assert "retry every 30s" in warnings[0]


def test_check_filters_addresses_and_names_the_reason(fake, clock, caplog):
    fake.hosts["dual.test"] = ["2001:db8::1", "192.0.2.1"]
    fake.hosts["v6.test"] = ["2001:db8::2"]
    dlist, (dual, v6) = dests("1 sip:dual.test:5060\n1 sip:v6.test:5060\n")

    def check(dest, ip):
        return "no UDP IPv6 listen address to send from" if ":" in ip else ""

    r = make(fake, clock)
    with caplog.at_level(logging.WARNING, "gdispatch.dns"):
        r.resolve_all(dlist, check)
    assert dual.address == ("192.0.2.1", 5060) and r.addresses(dual) == [("192.0.2.1", 5060)]
    assert v6.address is None and v6.unusable == "no UDP IPv6 listen address to send from"
    assert [rec.getMessage() for rec in caplog.records] == [
        "d.list:2: destination sip:v6.test:5060 cannot be reached: no UDP IPv6 listen address to send from"]


def test_literal_refused_by_check_is_not_retried(fake, clock):
    dlist, (d,) = dests("1 sip:127.0.0.1:5999;transport=tcp\n")
    r = make(fake, clock)
    r.resolve_all(dlist, lambda dest, ip: "no TCP IPv4 listen address")
    assert d.unusable == "no TCP IPv4 listen address"
    clock.now += 10_000
    assert r.resolve_now(d) == [] and fake.calls == []


def test_flag_16_is_not_resolved_at_load_but_on_demand(fake, clock):
    fake.srv["_sip._udp.gw.test"] = [srv("b.test", 5072, 10, 0, ttl=60)]
    fake.hosts["b.test"] = ["192.0.2.2"]
    dlist, (d,) = dests("1 sip:gw.test 16\n")
    r = make(fake, clock)
    r.resolve_all(dlist)
    assert fake.calls == [] and d.address is None and d.unusable == ""
    assert r.resolve_now(d) == [("192.0.2.2", 5072)]
    assert d.address == ("192.0.2.2", 5072)
    calls = len(fake.calls)
    clock.now += 59
    assert r.resolve_now(d) == [("192.0.2.2", 5072)] and len(fake.calls) == calls  # cached for the TTL
    clock.now += 2
    r.resolve_now(d)
    assert len(fake.calls) > calls


def test_short_ttls_are_floored_at_five_seconds(fake, clock):
    fake.hosts["gw.test"] = ["192.0.2.1"]
    fake.ttl = 1
    dlist, (d,) = dests("1 sip:gw.test:5060\n")
    r = make(fake, clock)
    r.resolve_all(dlist)
    clock.now += 4.9
    r.resolve_now(d)
    assert len(fake.calls) == 1
    clock.now += 0.2
    r.resolve_now(d)
    assert len(fake.calls) == 2


def test_refresh_interval_caps_a_long_ttl(fake, clock):
    fake.hosts["gw.test"] = ["192.0.2.1"]
    fake.ttl = 86400
    dlist, (d,) = dests("1 sip:gw.test:5060\n")
    r = make(fake, clock, refresh_interval=10)
    r.resolve_all(dlist)
    clock.now += 10
    r.resolve_now(d)
    assert len(fake.calls) == 2


def test_failed_refresh_keeps_the_last_good_address(fake, clock, caplog):
    fake.hosts["gw.test"] = ["192.0.2.1"]
    dlist, (d,) = dests("1 sip:gw.test:5060\n")
    changes = []
    r = make(fake, clock, on_change=changes.append)
    r.resolve_all(dlist)
    fake.failing.add("gw.test")
    clock.now += 600
    with caplog.at_level(logging.WARNING, "gdispatch.dns"):
        assert r.resolve_now(d) == [("192.0.2.1", 5060)]
        clock.now += 30
        r.resolve_now(d)
    assert (d.address, d.unusable) == (("192.0.2.1", 5060), "")
    assert changes == []
    # One warning for the outage, not one per retry.
    assert len(caplog.records) == 1 and "keeping the last good address 192.0.2.1:5060" in caplog.text
    # Retried every retry_interval, then the new answer wins.
    fake.failing.clear()
    fake.hosts["gw.test"] = ["192.0.2.9"]
    clock.now += 29
    r.resolve_now(d)
    assert d.address == ("192.0.2.1", 5060)
    clock.now += 1
    assert r.resolve_now(d) == [("192.0.2.9", 5060)]
    assert changes == [d]


def test_nxdomain_on_refresh_also_keeps_the_last_good_address(fake, clock):
    fake.hosts["gw.test"] = ["192.0.2.1"]
    dlist, (d,) = dests("1 sip:gw.test:5060\n")
    r = make(fake, clock)
    r.resolve_all(dlist)
    del fake.hosts["gw.test"]
    clock.now += 600
    assert r.resolve_now(d) == [("192.0.2.1", 5060)] and d.unusable == ""


def test_never_resolved_failure_is_asked_again_only_after_retry_interval(fake, clock):
    dlist, (d,) = dests("1 sip:gw.test:5060 16\n")
    r = make(fake, clock)
    r.resolve_all(dlist)
    assert r.resolve_now(d) == [] and d.unusable.startswith("cannot resolve gw.test")
    assert r.resolve_now(d) == [] and len(fake.calls) == 1
    fake.hosts["gw.test"] = ["192.0.2.1"]
    clock.now += 30
    assert r.resolve_now(d) == [("192.0.2.1", 5060)] and d.unusable == ""


def test_srv_server_failure_does_not_fall_back_to_a_guess(fake, clock):
    fake.failing.add("_sip._udp.gw.test")
    fake.hosts["gw.test"] = ["192.0.2.1"]
    dlist, (d,) = dests("1 sip:gw.test\n")
    make(fake, clock).resolve_all(dlist)
    assert d.address is None and "no answer" in d.unusable
    assert ("A", "gw.test", 5060) not in fake.calls


def test_reload_during_an_outage_keeps_the_last_good_address(fake, clock):
    fake.hosts["gw.test"] = ["192.0.2.1"]
    dlist, _ = dests("1 sip:gw.test:5060\n")
    r = make(fake, clock)
    r.resolve_all(dlist)
    fake.failing.add("gw.test")
    reloaded, (d, other) = dests("1 sip:gw.test:5060\n2 sip:other.test:5060\n")
    r.resolve_all(reloaded)
    assert d.address == ("192.0.2.1", 5060) and d.unusable == ""
    assert other.address is None and "no such name" in other.unusable


def test_same_name_in_two_sets_is_looked_up_once_at_a_time(fake, clock):
    fake.hosts["gw.test"] = ["192.0.2.1"]
    fake.gate = gevent.event.Event()
    dlist, (a, b) = dests("1 sip:gw.test:5060\n2 sip:gw.test:5060\n")
    r = make(fake, clock)
    job = gevent.spawn(r.resolve_all, dlist)
    gevent.sleep(0.01)
    fake.gate.set()
    job.get(timeout=2)
    assert fake.calls == [("A", "gw.test", 5060)]
    assert a.address == b.address == ("192.0.2.1", 5060)


def test_resolve_all_bounds_its_concurrency(fake, clock):
    fake.gate = gevent.event.Event()
    text = "".join(f"1 sip:gw{i}.test:5060\n" for i in range(10))
    for i in range(10):
        fake.hosts[f"gw{i}.test"] = [f"192.0.2.{i + 1}"]
    dlist, ds = dests(text)
    r = make(fake, clock, concurrency=3)
    job = gevent.spawn(r.resolve_all, dlist)
    gevent.sleep(0.01)
    assert fake.active == 3
    fake.gate.set()
    job.get(timeout=2)
    assert fake.most_active == 3 and all(d.address for d in ds)


def test_on_change_is_called_for_changes_after_load_only(fake, clock):
    fake.hosts["gw.test"] = ["192.0.2.1"]
    dlist, (d,) = dests("1 sip:gw.test:5060\n")
    changes = []
    r = make(fake, clock, on_change=changes.append)
    r.resolve_all(dlist)
    clock.now += 600
    r.resolve_now(d)
    assert changes == []  # same answer
    fake.hosts["gw.test"] = ["192.0.2.1", "192.0.2.2"]
    clock.now += 600
    r.resolve_now(d)
    assert changes == [d] and d.address == ("192.0.2.1", 5060)


def test_on_usable_change_when_a_name_resolves_at_last_not_for_flag_16(fake, clock):
    dlist, (d, on_demand) = dests("1 sip:gw.test:5060\n1 sip:later.test:5060 16\n")
    usable_changes = []
    r = make(fake, clock, on_usable_change=usable_changes.append)
    r.resolve_all(dlist)
    assert not d.usable and d.state_letters() == "IX" and usable_changes == []  # the loader knows
    clock.now += 30
    r.resolve_now(d)  # the retry: still failing, no change
    assert usable_changes == []
    fake.hosts["gw.test"] = ["192.0.2.1"]
    fake.hosts["later.test"] = ["192.0.2.2"]
    clock.now += 30
    r.resolve_now(d)
    assert usable_changes == [d] and d.usable and d.state_letters() == "AX"
    r.resolve_now(on_demand)  # flag 16: usable before and after its address
    assert usable_changes == [d] and on_demand.address == ("192.0.2.2", 5060)


def test_intervals_must_be_positive(fake):
    with pytest.raises(ValueError):
        DestinationResolver(fake, refresh_interval=0)


def test_resolver_address_lookup_of_literals_and_localhost(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("192.0.2.50 gw.test\n")
    r = Resolver([("127.0.0.1", 9)], hosts_file=str(hosts), timeout=0.2, attempts=1)
    assert r.resolve_address("192.0.2.1", 5060) == [("192.0.2.1", 5060)]
    assert r.resolve_address("::1", 5061) == [("::1", 5061)]
    assert r.resolve_address("gw.test", 5070) == [("192.0.2.50", 5070)]
    # RFC 6761: localhost is loopback even when the hosts file does not say so.
    assert r.resolve_address("localhost", 5060) == [("127.0.0.1", 5060), ("::1", 5060)]
    assert r.resolve_address("localhost", 5060, socket.AF_INET6) == [("::1", 5060)]
