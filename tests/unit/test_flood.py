"""Per-source flood limits (gdispatch.flood) with a fake clock, and the kernel filter's
program (gdispatch.sockfilter) on real sockets."""

from __future__ import annotations

import socket

import pytest

from gdispatch import sockfilter
from gdispatch.flood import SourceGuard
from gdispatch.transaction.timers import FakeClock


def guard(rate: int = 10, **kw) -> tuple[SourceGuard, FakeClock, list]:
    clock = FakeClock(100.0)
    changes: list = []
    return SourceGuard(rate, 30.0, clock, on_change=changes.append, **kw), clock, changes


def test_a_source_past_the_rate_is_banned_the_others_go_on():
    g, clock, changes = guard()
    assert all(g.admit("192.0.2.1") for _ in range(10))
    assert not g.admit("192.0.2.1")
    assert changes == [["192.0.2.1"]] and g.bans == 1
    assert all(g.admit("192.0.2.2") for _ in range(10))
    assert not any(g.admit("192.0.2.1") for _ in range(100))
    assert g.dropped == 101


def test_a_ban_lasts_ban_time_across_seconds_then_ends():
    g, clock, changes = guard()
    for _ in range(11):
        g.admit("192.0.2.1")
    for _ in range(29):
        clock.advance(1.0)
        g.tick()
        assert not g.admit("192.0.2.1")  # still banned: the first datagram of a new second is dropped
    clock.advance(1.0)
    g.tick()
    assert changes[-1] == [] and g.admit("192.0.2.1")


def test_a_source_under_the_rate_every_second_is_never_banned():
    g, clock, _ = guard()
    for _ in range(100):
        assert all(g.admit("192.0.2.1") for _ in range(10))
        clock.advance(1.0)
        g.tick()
    assert g.bans == 0


def test_destinations_and_trusted_networks_are_never_banned():
    g, _, changes = guard(trusted=["10.0.0.0/8"])
    g.set_exempt(["192.0.2.10"])
    assert all(g.admit("192.0.2.10") for _ in range(1000))
    assert all(g.admit("10.1.2.3") for _ in range(1000))
    assert changes == [] and g.bans == 0


def test_a_new_list_lifts_the_ban_of_its_destinations():
    g, _, changes = guard()
    for _ in range(11):
        g.admit("192.0.2.10")
    g.set_exempt(["192.0.2.10"])
    assert changes == [["192.0.2.10"], []] and g.admit("192.0.2.10")


def udp_pair(bind_ip: str = "127.0.0.1") -> tuple[socket.socket, socket.socket]:
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    r.settimeout(0.05)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((bind_ip, 0))
    return r, s


def passes(r: socket.socket, s: socket.socket, data: bytes) -> bool:
    s.sendto(data, r.getsockname())
    try:
        return r.recv(65535) == data
    except OSError:
        return False


@pytest.mark.parametrize("data, kept", [
    (b"INVITE sip:a@b SIP/2.0\r\n\r\n", True),
    (b"SIP/2.0 200 OK\r\n\r\n", True),
    (b"\r\n\r\n", True),
    (b"\n", True),
    (b"NEWMETHOD sip:a SIP/2.0\r\n\r\n", True),
    (b"\x00\x01\x00\x00!\x12\xa4B", False),  # a STUN binding request
    (b"\xff" * 200, False),
    (b"invite sip:a SIP/2.0\r\n", False),
    (b"AB", False),
    (b"", False),
])
def test_the_kernel_keeps_what_can_be_sip_and_drops_junk(data, kept):
    r, s = udp_pair()
    try:
        assert sockfilter.attach(r, False) is None
        assert passes(r, s, data) is kept
    finally:
        r.close()
        s.close()


def test_the_kernel_drops_banned_sources_only():
    r, s = udp_pair()
    s2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s2.bind(("127.0.0.66", 0))
    try:
        assert sockfilter.attach(r, False, ["127.0.0.66", "192.0.2.1", "2001:db8::1"]) is None
        assert passes(r, s, b"INVITE x")
        assert not passes(r, s2, b"INVITE x")
        assert sockfilter.attach(r, False, []) is None  # the ban ends: the program is replaced
        assert passes(r, s2, b"INVITE x")
    finally:
        for x in (r, s, s2):
            x.close()


def test_an_ipv6_ban_is_four_words():
    prog = sockfilter.program(True, ["2001:db8::1", "127.0.0.1"])
    loads = [k for op, _jt, _jf, k in prog if op == 0x20]  # LD W ABS: the source address words
    assert len(loads) == 4
    assert len(sockfilter.program(False, ["2001:db8::1"])) == len(sockfilter.program(False, []))
