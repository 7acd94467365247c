"""HEP v3 capture end to end (gdispatch.hep): a real gdispatch process with `[capture] hep`
pointed at a UDP collector in the test (tests.support.hep decodes what it receives, from
the specification), calls through it, and every message of each call found in the
collector twice, as it came in and as it went out, with its addresses, transport, the
capture agent id and the Call-ID as correlation id.

One proxy for the module, listening on UDP, TCP and TLS, with a SIPp UAS over UDP (set
1, the SIPp caller's "service") and a TLS gateway (set 3, Request-URI user 3...):

    a SIPp call over UDP      caller -UDP- proxy -UDP- SIPp UAS
    a SIPp call over TCP      caller -TCP- proxy -UDP- SIPp UAS
    a TLS call                caller -TLS- proxy -TLS- TLS gateway (the plaintext captured)

And the copies are those Kamailio's siptrace module sends (HEP v3, the Call-ID as
correlation id) of the same request, chunk for chunk, when Kamailio is installed.
"""

from __future__ import annotations

import re
import shutil
import socket
import time
from pathlib import Path

import pytest

from gdispatch.control.client import request as rpc_request
from tests.support.hep import Collector, Packet
from tests.support.tlspeers import Pki, TlsCaller, TlsGateway
from tests.support.wait import wait_for

from . import harness
from .kamailio import SIPTRACE_CFG, Kamailio

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make certificates")

HOST = "127.0.0.1"
CAPTURE_ID = 2022
UDP, TCP, TLS = 17, 6, 22  # the IP protocol IDs, TLS's as Kamailio sends it


class World:
    """The module's collector, gateways and proxy."""

    def __init__(self, directory: Path):
        self.collector = Collector()
        pki = Pki(directory / "pki")
        self.ca = pki.ca
        proxy_cert = pki.cert("proxy", "proxy.test", ips=(HOST,))
        self.tls_gw = TlsGateway(pki.cert("gw", "gw.test", ips=(HOST,)))
        self.uas = harness.Uas(directory, "uas_ok.xml").start()
        self.tls_port = harness.free_port("tcp")
        dlist = f"1 {self.uas.uri} 0 0 duid=uas\n3 {self.tls_gw.uri()} 0 0 duid=tls\n"
        config = (f'[capture]\nhep = "{self.collector.address}"\ncapture_id = {CAPTURE_ID}\n'
                  f'[tls]\ncertificate = "{proxy_cert.cert}"\nprivate_key = "{proxy_cert.key}"\n'
                  f'[tls.client]\nca_list = "{pki.ca}"\n'
                  '[[route]]\nuser_prefix = ["3"]\nset = 3\n[[route]]\nuser_prefix = ["s"]\nset = 1\n')
        self.proxy = harness.Proxy(directory / "proxy", dlist, config,
                                   ("udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}",
                                    f"tls:127.0.0.1:{self.tls_port}"))
        self.proxy.start()

    def close(self) -> None:
        self.proxy.stop()
        self.uas.stop(grace_s=1.0)
        self.tls_gw.close()
        self.collector.close()

    def call(self, call_id: str) -> list[Packet]:
        return [p for p in self.collector.packets if p.correlation_id == call_id.encode()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("hep"))
    yield w
    w.close()


@pytest.fixture(autouse=True)
def _proxy_log_on_failure(request, world):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print("\n----- proxy log -----\n" + "\n".join(world.proxy.log().splitlines()[-60:]))


def first_line(p: Packet) -> str:
    assert p.payload is not None
    return p.payload.split(b"\r\n", 1)[0].decode()


def what(p: Packet) -> str:
    """INVITE, ACK, BYE, or a response as "200 INVITE" (its code and CSeq method)."""
    line = first_line(p)
    if not line.startswith("SIP/2.0 "):
        return line.split(" ", 1)[0]
    cseq = re.search(rb"(?im)^CSeq[ \t]*:[ \t]*\d+[ \t]+(\w+)", p.payload or b"")
    assert cseq is not None
    return f"{line.split(' ')[1]} {cseq.group(1).decode()}"


def flow(packets: list[Packet]) -> set[tuple[str, int, tuple, tuple]]:
    """What was captured: (message, IP protocol ID, source, destination)."""
    return {(what(p), p.ip_protocol, p.source, p.destination) for p in packets}


def check_common(packets: list[Packet], call_id: str, since: float) -> None:
    """What every copy of a call carries, whatever its direction."""
    for p in packets:
        assert (p.ip_family, p.protocol_type, p.capture_id) == (2, 1, CAPTURE_ID), p
        assert re.search(rb"(?im)^(?:Call-ID|i)[ \t]*:[ \t]*" + re.escape(call_id.encode()) + rb"\r?$",
                         p.payload or b""), p
        assert p.time_sec is not None and p.time_usec is not None and 0 <= p.time_usec < 1_000_000
        stamp = p.time_sec + p.time_usec / 1e6
        assert since - 1 <= stamp <= time.time() + 1, (stamp, since)


def both_ways(caller: tuple, proto_in: int, proxy_in: tuple, proxy_out: tuple, proto_out: int,
              gateway: tuple, provisional: str) -> set[tuple[str, int, tuple, tuple]]:
    """Each message of a call (INVITE, its provisional, 200, ACK, BYE, 200) as it came
    in and as it went out, and the proxy's own 100 Trying to the caller."""
    out = {("100 INVITE", proto_in, proxy_in, caller)}
    for request in ("INVITE", "ACK", "BYE"):
        out.add((request, proto_in, caller, proxy_in))
        out.add((request, proto_out, proxy_out, gateway))
    for response in (provisional, "200 INVITE", "200 BYE"):
        out.add((response, proto_out, gateway, proxy_out))
        out.add((response, proto_in, proxy_in, caller))
    return out


def sipp_call(world: World, transport: str) -> tuple[str, float]:
    """One SIPp call through the proxy: its Call-ID, and when it began."""
    since = time.time()
    before = len(world.collector.packets)
    res = harness.run_uac(f"{HOST}:{world.proxy.port}", calls=1, rate=1, transport=transport, timeout_s=10)
    assert (res.successful, res.failed) == (1, 0), res
    invites = wait_for(lambda: [p for p in world.collector.packets[before:]
                                if what(p) == "INVITE" and p.destination == (HOST, world.proxy.port)], 5)
    assert len(invites) == 1, [first_line(p) for p in world.collector.packets[before:]]
    call_id = (invites[0].correlation_id or b"").decode()
    assert call_id, invites[0]
    return call_id, since


def captured(world: World, call_id: str, expected: set) -> list[Packet]:
    """The copies of a call, once every expected one came (UDP: a copy may overtake another)."""
    wait_for(lambda: flow(world.call(call_id)) >= expected, 5,
             message=lambda: sorted(expected - flow(world.call(call_id))))
    return world.call(call_id)


def test_a_udp_call_is_captured_as_each_message_came_in_and_went_out(world):
    call_id, since = sipp_call(world, "u1")
    invite = next(p for p in world.call(call_id) if what(p) == "INVITE" and p.destination == (HOST, world.proxy.port))
    caller, proxy, gateway = invite.source, (HOST, world.proxy.port), (HOST, world.uas.port)
    expected = both_ways(caller, UDP, proxy, proxy, UDP, gateway, "180 INVITE")
    packets = captured(world, call_id, expected)
    check_common(packets, call_id, since)
    assert flow(packets) == expected
    assert not world.collector.errors


def test_a_tcp_caller_is_captured_over_tcp_and_the_gateway_side_over_udp(world):
    call_id, since = sipp_call(world, "t1")
    invite = next(p for p in world.call(call_id) if what(p) == "INVITE" and p.destination == (HOST, world.proxy.port))
    assert invite.ip_protocol == TCP and invite.src_ip == HOST
    caller, proxy, gateway = invite.source, (HOST, world.proxy.port), (HOST, world.uas.port)
    expected = both_ways(caller, TCP, proxy, proxy, UDP, gateway, "180 INVITE")
    packets = captured(world, call_id, expected)
    check_common(packets, call_id, since)
    assert flow(packets) == expected


def test_a_tls_call_is_captured_in_plaintext_with_the_tls_protocol_id(world):
    since = time.time()
    caller = TlsCaller((HOST, world.tls_port), ca=world.ca)
    try:
        assert caller.call(f"sip:300@{HOST}:{world.tls_port};transport=tls") == (200, 200)
        call_id, local = caller.last_call_id, caller.local
    finally:
        caller.close()
    # The connection to the gateway is named by the proxy's TLS socket, as the one from
    # the caller (Kamailio's siptrace names the socket too). The gateway's 100 stops at
    # the proxy (RFC 3261 §16.7), which sent its own.
    proxy, gateway = (HOST, world.tls_port), (HOST, world.tls_gw.port)
    expected = both_ways((local[0], local[1]), TLS, proxy, proxy, TLS, gateway, "100 INVITE")
    packets = captured(world, call_id, expected)
    check_common(packets, call_id, since)
    assert flow(packets) == expected
    assert all(p.payload and p.payload[:1] != b"\x16" for p in packets)  # no TLS record: the plaintext


def test_the_copies_are_counted_in_the_stats(world):
    stats = rpc_request("stats", socket_path=str(world.proxy.socket_path), timeout=5)
    assert stats["hep_sent"] >= len(world.collector.packets) > 0 and stats["hep_send_failures"] == 0, stats


def test_with_two_workers_each_sends_the_copies_of_the_calls_it_handles(world, tmp_path):
    collector = Collector()
    p = harness.Proxy(tmp_path / "workers", f"1 {world.uas.uri} 0 0 duid=uas\n",
                      f'[capture]\nhep = "{collector.address}"\ncapture_id = {CAPTURE_ID}\n', args=("--workers", "2"))
    try:
        p.start()
        since = time.time()
        before = len(collector.packets)
        res = harness.run_uac(f"{HOST}:{p.port}", calls=10, rate=20, timeout_s=10)
        assert (res.successful, res.failed) == (10, 0), res
        invites = [x for x in collector.packets[before:] if what(x) == "INVITE" and x.destination == (HOST, p.port)]
        assert len(invites) == 10
        for invite in invites:
            # A worker's requests leave from its own socket (its port in its Via), so
            # that their responses come back to it: the copies name that socket.
            call_id = (invite.correlation_id or b"").decode()
            out = wait_for(lambda: next((x for x in collector.packets  # noqa: B023
                                         if what(x) == "INVITE" and x.correlation_id == call_id.encode()  # noqa: B023
                                         and x.destination == (HOST, world.uas.port)), None), 5)
            expected = both_ways(invite.source, UDP, (HOST, p.port), out.source, UDP, (HOST, world.uas.port),
                                 "180 INVITE")
            packets = wait_for(lambda: (lambda c: c if flow(c) >= expected else None)(  # noqa: B023
                [x for x in collector.packets if x.correlation_id == call_id.encode()]), 5)  # noqa: B023
            check_common(packets, call_id, since)
            assert flow(packets) == expected
        # The primary's counters and the other worker's (its last report) summed.
        wait_for(lambda: rpc_request("stats", socket_path=str(p.socket_path), timeout=5).get("hep_sent", 0) >= 130, 5)
    finally:
        p.stop()
        collector.close()


def request_and_reply(collector: Collector, call_id: str) -> list[Packet]:
    """The two copies of an OPTIONS and its 200, once both came."""
    def both() -> list[Packet] | None:
        found = [p for p in collector.packets if call_id.encode() in (p.payload or b"")]
        return found if len(found) == 2 else None
    return wait_for(both, 5)


def test_the_copies_have_the_chunks_kamailios_siptrace_sends(world, tmp_path):
    kamailio_collector = Collector()
    kam = Kamailio(tmp_path / "kamailio", "", cfg=SIPTRACE_CFG,
                   defines={"HEP_URI": f'"sip:{HOST}:{kamailio_collector.port}"', "HEP_CAPTURE_ID": str(CAPTURE_ID)})
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        kam.start()
        caller.bind((HOST, 0))
        caller.settimeout(5)
        copies = {}
        for name, port, collector in (("kamailio", kam.port, kamailio_collector),
                                      ("gdispatch", world.proxy.port, world.collector)):
            call_id = f"siptrace-{name}-{time.monotonic_ns()}"
            request = harness.build_request("OPTIONS", f"sip:{HOST}:{port}", local_port=caller.getsockname()[1],
                                            call_id=call_id)
            caller.sendto(request, (HOST, port))
            assert harness.status_code(caller.recv(65535)) == 200
            copies[name] = request_and_reply(collector, call_id)
            request_copy = next(p for p in copies[name] if what(p) == "OPTIONS")
            assert (request_copy.payload, request_copy.correlation_id) == (request, call_id.encode())
            assert (request_copy.source, request_copy.destination) == (caller.getsockname(), (HOST, port))
    finally:
        caller.close()
        kam.stop()
        kamailio_collector.close()

    def chunks(name: str, kind: str) -> list[tuple[int, int]]:
        return [(v, t) for v, t, _ in next(p for p in copies[name] if what(p) == kind).chunks]

    def fixed(p: Packet) -> tuple:
        return p.ip_family, p.ip_protocol, p.protocol_type, p.capture_id

    assert chunks("gdispatch", "OPTIONS") == chunks("kamailio", "OPTIONS")
    # Kamailio's copy of a stateless reply has no correlation id; gdispatch gives every copy one.
    assert [c for c in chunks("gdispatch", "200 OPTIONS") if c != (0, 0x11)] == chunks("kamailio", "200 OPTIONS")
    assert {fixed(p) for name in copies for p in copies[name]} == {(2, UDP, 1, CAPTURE_ID)}
