"""Faults charged where they belong: an ICMP error affects only the destination or the
caller it came from, never the datagram the proxy sends next (with IP_RECVERR the kernel
returns a socket's pending error to its next sendto, whatever the address), and a reply
that could not be sent does not lose the one after it.

The gateways here are small Python answerers, so that every INVITE they receive is
counted; the caller never retransmits, so a lost 100 Trying or a failover left to a
timer shows as a call that does not complete in time (fr_timer is 10 s here)."""

from __future__ import annotations

import socket
import uuid

import pytest

from gdispatch.sip import parse_message
from tests.support import sipmsg
from tests.support.wait import wait_for

from . import harness
from .harness import HOST

CONFIG = "[probing]\ninterval = 0\n[timers]\nfr_timer = 10.0\n[[route]]\nset = 1\nalgorithm = {alg}\n"


def closed_port() -> int:
    """A UDP port nothing listens on: the kernel answers ICMP port unreachable."""
    return harness.free_port("udp")


def call(p: harness.Proxy, sock: socket.socket, *, via_port: int | None = None, rport: bool = True,
         timeout: float = 5.0) -> list[int | None]:
    """One INVITE from `sock` (never retransmitted); the status codes received until a 200
    or `timeout`. `via_port`: the port the Via names, where the answers go without rport."""
    port = sock.getsockname()[1]
    call_id = uuid.uuid4().hex
    data = sipmsg.request("INVITE", f"sip:svc@{HOST}:{p.port}",
                          vias=f"SIP/2.0/UDP {HOST}:{via_port or port};branch=z9hG4bK{call_id[:12]}"
                               + (";rport" if rport else ""),
                          from_=f"<sip:caller@{HOST}:{port}>", from_tag=call_id[:8], call_id=call_id,
                          contact=f"<sip:caller@{HOST}:{port}>")
    sock.sendto(data, (HOST, p.port))
    return harness.statuses_until(sock, 200, timeout)


def caller() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.settimeout(0.2)
    return s


@pytest.mark.parametrize("alg", [4, 8, 12])
def test_a_closed_destination_costs_only_itself(proxy, answerers, alg):
    """A closed port beside a live gateway: each call reaches the live one at once (the
    closed one's ICMP error ends its own attempt, not the next INVITE or the caller's
    100 Trying), the closed destination is marked down and the live one stays up."""
    live = answerers()
    closed = f"sip:{HOST}:{closed_port()}"
    lst = f"1 {closed} 0 10 duid=closed\n1 {live.uri} 0 5 duid=live\n"
    p = proxy(lst, config=CONFIG.format(alg=alg))
    s = caller()
    try:
        for n in range(2):  # round robin starts on either: two calls meet the closed one
            codes = call(p, s)
            assert codes[-1:] == [200], (n, codes, p.log()[-2000:])
            assert 100 in codes, codes  # the 100 Trying was not lost to the closed one's error
    finally:
        s.close()
    assert len(live.invites) == 2
    states = p.states()
    assert states["live"].startswith("A") and states["closed"].startswith("I"), states
    log = p.log()
    assert "transport error sending to " + live.uri not in log
    if alg != 12:  # serial forking: the failover says what happened, not "answered 503"
        assert f"failover: {closed} (set 1, duid closed) could not be reached (transport error)" in log, log
        assert f"{closed} answered 503" not in log


def test_a_caller_whose_port_is_closed_costs_nobody_else(proxy, answerers):
    """The caller died after its INVITE (its Via names a closed port, no rport), which is
    forked to two gateways (12, parallel): one answers 200, which bounces off the caller,
    and the other, still ringing, must get its CANCEL all the same (RFC 3261 §16.7 step
    10); neither gateway is charged with the caller's ICMP error, and the next caller's
    call completes."""
    answers, rings = answerers(), answerers(rings=True)
    p = proxy(f"1 {rings.uri} 0 0 duid=rings\n1 {answers.uri} 0 0 duid=answers\n", config=CONFIG.format(alg=12))
    s = caller()
    try:
        call(p, s, via_port=closed_port(), rport=False, timeout=0.5)
        wait_for(lambda: rings.cancels, 3, 0.05, message=lambda: p.log()[-2000:])
        assert len(rings.invites) == 1 and len(answers.invites) == 1
        assert len(rings.cancels) == 1, p.log()[-2000:]
        rings.rings = False
        assert call(p, s)[-1:] == [200]
    finally:
        s.close()
    assert all(v.startswith("A") for v in p.states().values()), p.states()


def test_a_caller_that_dies_mid_call_costs_nobody_else(proxy, answerers):
    """A call is up; the caller's port closes; the gateway's BYE to it bounces. The
    gateway stays up and the next call through it completes."""
    gw = answerers()
    p = proxy(f"1 {gw.uri} 0 0 duid=gw\n", config=CONFIG.format(alg=4))
    dead = caller()
    assert call(p, dead)[-1:] == [200]
    invite = parse_message(gw.invites[-1])
    dead.close()
    route = invite.get("record-route").decode()
    contact = invite.get("contact").decode().strip("<>")
    bye = sipmsg.request("BYE", contact, vias=f"SIP/2.0/UDP {HOST}:{gw.port};branch=z9hG4bK{uuid.uuid4().hex[:12]}",
                         routes=[route], from_=invite.get("to").decode(), from_tag=f"gw{gw.port}",
                         to=invite.get("from").decode(), call_id=invite.call_id.decode())
    gw.send(bye, p.port)
    s = caller()
    try:
        for _ in range(3):
            assert call(p, s)[-1:] == [200]
    finally:
        s.close()
    assert len(gw.invites) == 4
    assert p.states()["gw"].startswith("A"), p.states()
