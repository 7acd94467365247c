"""RFC 3261 §16 rules a running gdispatch applies to requests it does not dispatch, and
its robustness against bad input (RFC 4475 torture messages, garbage, oversize)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.support.wait import wait_for

from . import harness
from .test_proxy_calls import UdpSink

HOST = "127.0.0.1"
RFC4475 = Path(__file__).parent.parent / "data" / "rfc4475"


def ask(p, method, ruri, **kw) -> list[int]:
    msg = harness.build_request(method, ruri, local_port=0, **kw)
    return [harness.status_code(r) for r in p.send_udp(msg, timeout=3.0)]


def reason_of(p, msg: bytes) -> tuple[int | None, bytes]:
    replies = p.send_udp(msg, timeout=3.0)
    assert replies, "no answer"
    first_line = replies[-1].split(b"\r\n", 1)[0]
    return harness.status_code(replies[-1]), first_line.split(b" ", 2)[2]


@pytest.fixture
def one_gw(proxy, uas):
    gw = uas()
    return proxy(harness.dispatcher_list(gw), listen=("udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}")), gw


def test_options_to_the_proxy_itself(proxy, uas):
    gw = uas()
    p = proxy(harness.dispatcher_list(gw), config="[probing]\ninterval = 0\n")  # no keepalives to count
    assert ask(p, "OPTIONS", f"sip:{HOST}:{p.port}") == [200]
    # Max-Forwards 0 on an OPTIONS asks about us too (RFC 3261 §11).
    msg = harness.build_request("OPTIONS", f"sip:someone@{HOST}:{p.port}", local_port=0).replace(
        b"Max-Forwards: 70", b"Max-Forwards: 0")
    assert reason_of(p, msg)[0] == 200
    gw.stop()
    assert gw.counts()["OPTIONS"] == 0


def test_max_forwards_zero_is_483(one_gw):
    p, _ = one_gw
    msg = harness.build_request("INVITE", f"sip:service@{HOST}:{p.port}", local_port=0).replace(
        b"Max-Forwards: 70", b"Max-Forwards: 0")
    assert reason_of(p, msg)[0] == 483


def test_no_open_relay(one_gw):
    p, gw = one_gw
    assert ask(p, "INVITE", "sip:someone@example.com")[-1] == 403
    assert ask(p, "MESSAGE", f"sip:someone@{HOST}:{p.port + 1}")[-1] == 403
    gw.stop()
    assert gw.counts()["INVITE"] == 0


def test_unrouted_method_gets_no_route_reply(one_gw):
    p, _ = one_gw
    assert ask(p, "MESSAGE", f"sip:someone@{HOST}:{p.port}")[-1] == 404


def test_malformed_request_with_usable_via_gets_400_with_reason(one_gw):
    p, _ = one_gw
    msg = harness.build_request("INVITE", f"sip:service@{HOST}:{p.port}", local_port=0).replace(
        b"CSeq: 1 INVITE", b"CSeq: one INVITE")
    code, reason = reason_of(p, msg)
    assert code == 400 and reason.strip(), reason
    assert harness.sip_options(p.port) == 200


def test_loop_is_detected(proxy):
    port = harness.free_port("both")
    # The only destination is the proxy itself: the second pass sees its own Via.
    p = proxy(harness.dispatcher_list(f"sip:{HOST}:{port}"), port=port)
    assert ask(p, "INVITE", f"sip:service@{HOST}:{port}")[-1] == 482


def test_no_destination_gives_503(proxy):
    p = proxy("# empty\n")
    assert ask(p, "INVITE", f"sip:service@{HOST}:{p.port}")[-1] == 503


def test_all_destinations_fail_gives_best_response(proxy, uas):
    gws = [uas("uas_503.xml"), uas("uas_503.xml")]
    p = proxy(harness.dispatcher_list(*gws))
    codes = ask(p, "INVITE", f"sip:service@{HOST}:{p.port}")
    # RFC 3261 §16.7 step 6: a 503 from downstream goes upstream as 500.
    assert codes[-1] == 500, codes
    for g in gws:
        g.stop()
    assert [g.counts()["INVITE"] for g in gws] == [1, 1]


def test_in_dialog_requests_leave_in_arrival_order(proxy, tmp_path):
    sink = UdpSink()
    try:
        p = proxy("1 sip:127.0.0.1:9 0 0\n", config="[probing]\ninterval = 0\n" + harness.key_config(tmp_path))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        lp = s.getsockname()[1]
        for i in range(100):
            route = [f"Route: {harness.signed_route(p.port, f'order-{i}', 'a', HOST)}"]
            common = dict(local_port=lp, call_id=f"order-{i}", from_tag="a", to=f"<sip:b@{HOST}>;tag=b",
                          headers=route)
            s.sendto(harness.build_request("REFER", f"sip:b@{HOST}:{sink.port}", cseq=2, **common),
                     (HOST, p.port))
            s.sendto(harness.build_request("BYE", f"sip:b@{HOST}:{sink.port}", cseq=3, **common),
                     (HOST, p.port))
        wait_for(lambda: len(sink.per_call(b"BYE")) >= 100, 5, 0.05)
        s.close()
        first_seen = []
        for m in sink.received:
            method = m.split(b" ", 1)[0]
            cid = [ln for ln in m.split(b"\r\n") if ln.startswith(b"Call-ID:")][0]
            if (method, cid) not in first_seen:
                first_seen.append((method, cid))
        for i in range(100):
            cid = b"Call-ID: order-%d" % i
            assert first_seen.index((b"REFER", cid)) < first_seen.index((b"BYE", cid))
        # Our Route was popped and Max-Forwards decremented on the way.
        m = sink.received[0]
        assert b"Route:" not in m and b"Max-Forwards: 69" in m
    finally:
        sink.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_rfc4475_torture_messages_do_not_hurt(one_gw, transport):
    p, gw = one_gw
    files = sorted(RFC4475.glob("*.dat"))
    assert len(files) >= 49
    # Garbage, an empty datagram's cousin, and an oversize message.
    messages = [f.read_bytes() for f in files] + [
        b"\x00\xff garbage \r\n\r\n", b"INVITE sip:x@" + b"a" * 65000 + b" SIP/2.0\r\n\r\n"]
    if transport == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for m in messages:
                s.sendto(m, (HOST, p.port))
        finally:
            s.close()
    else:
        for m in messages:  # a connection each: a stream that cannot be framed is closed
            with socket.create_connection((HOST, p.port), timeout=2) as c:
                c.sendall(m)
    time.sleep(0.5)  # the scenario: time for the messages to do harm, if they could
    assert p.alive()
    assert harness.sip_options(p.port) == 200 and harness.sip_options(p.port, transport="tcp") == 200
    assert "Traceback" not in p.log()


# RFC 4475 §3.1.2 and §3.3: what the proxy answers to invalid requests whose Via it can
# read. Each message's top Via is pointed at the test's socket (with rport) so the answer
# comes back to us; the rest of the message is sent byte for byte.
ANSWERED = {
    "badinv01.dat": 400, "scalar02.dat": 400, "quotbal.dat": 400, "ltgtruri.dat": 400,
    "escruri.dat": 400, "badaspec.dat": 400, "baddn.dat": 400, "mismatch01.dat": 400,
    "regbadct.dat": 400, "insuf.dat": 400, "multi01.dat": 400,
    "badvers.dat": 505, "mismatch02.dat": 501, "unkscm.dat": 416, "novelsc.dat": 416,
    # An OPTIONS with Max-Forwards 0: the proxy may answer it as its final recipient
    # (RFC 3261 §16.3 step 3, §11), which gdispatch does; any other method would get 483.
    "zeromf.dat": 200,
}


@pytest.fixture(scope="module")
def answering(tmp_path_factory):
    """One proxy (UDP and TCP) in front of one gateway for all the answered torture
    messages: none of them may reach the gateway (checked when the module is done)."""
    d = tmp_path_factory.mktemp("rfc4475")
    gw = harness.Uas(d, "uas_ok.xml").start()
    try:
        p = harness.Proxy(d / "proxy", harness.dispatcher_list(gw),
                          listen=("udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}")).start()
    except Exception:
        gw.stop()
        raise
    yield p
    p.stop()
    gw.stop()
    assert gw.counts()["INVITE"] == 0


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
@pytest.mark.parametrize("name,status", sorted(ANSWERED.items()))
def test_rfc4475_requests_get_their_answer(answering, name, status, transport):
    p = answering
    data = (RFC4475 / name).read_bytes()
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    i = next(n for n, ln in enumerate(lines) if ln.lower().startswith((b"via:", b"v:", b"via :")))
    while i + 1 < len(lines) and lines[i + 1][:1] in (b" ", b"\t"):
        del lines[i + 1]  # a folded Via continues on the next line
    lines[i] = b"Via: SIP/2.0/%s 127.0.0.1:9;rport;branch=z9hG4bK-t-%s" % (transport.encode(), name.encode())
    data = b"\r\n".join(lines) + sep + body
    if transport == "UDP":
        replies = p.send_udp(data, timeout=2.0)
    else:
        # A stream needs the empty line that ends the head (RFC 3261 §18.3); baddn.dat
        # ends where its datagram ends.
        replies = harness._tcp_exchange(data if sep else data + b"\r\n\r\n", HOST, p.port, 2.0)
    codes = [harness.status_code(r) for r in replies]
    assert codes and codes[-1] == status, codes
    first_line = replies[-1].split(b"\r\n", 1)[0]
    assert len(first_line.split(b" ", 2)) == 3  # a reason phrase


def test_ipv6_caller_to_ipv4_destination_double_record_route(proxy, uas):
    gw = uas()
    p = proxy(harness.dispatcher_list(gw), listen=("udp:127.0.0.1:{port}", "udp:[::1]:{port}"))
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::1", 0))
    s.settimeout(0.5)
    lp = s.getsockname()[1]
    invite = harness.build_request("INVITE", f"sip:service@[::1]:{p.port}", local_port=lp).replace(
        b"SIP/2.0/UDP 127.0.0.1:", b"SIP/2.0/UDP [::1]:")
    try:
        s.sendto(invite, ("::1", p.port))
        final = None
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and final is None:
            try:
                data = s.recvfrom(65535)[0]
            except TimeoutError:
                continue
            if harness.status_code(data) == 200:
                final = data
    finally:
        s.close()
    assert final is not None
    rr = [ln for ln in final.split(b"\r\n") if ln.lower().startswith(b"record-route:")]
    # One Record-Route per side of the proxy: the gateway's side first, then the caller's.
    values = [v.strip() for ln in rr for v in ln.split(b":", 1)[1].split(b",")]
    prefixes = [b"<sip:127.0.0.1:%d;lr;gds=" % p.port, b"<sip:[::1]:%d;lr;gds=" % p.port]
    assert [v[:len(x)] for v, x in zip(values, prefixes)] == prefixes and len(values) == 2, rr
    # Both sign the same dialog alike (gdispatch.recordroute).
    assert values[0][len(prefixes[0]):] == values[1][len(prefixes[1]):]


def test_a_refused_invite_is_answered_once_not_resent(one_gw):
    """No amplification towards a forged source: a 403 for a foreign domain is sent once
    per copy received, not resent by a transaction (RFC 3261 Timer G: at 0.5, 1.5, 3.5 s;
    watched for 2 s, past the first two)."""
    p, gw = one_gw
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.settimeout(0.2)
    try:
        s.sendto(harness.build_request("INVITE", "sip:x@example.org", local_port=s.getsockname()[1]),
                 (HOST, p.port))
        got = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                got.append(harness.status_code(s.recv(65535)))
            except OSError:
                pass
    finally:
        s.close()
    assert got == [403]
