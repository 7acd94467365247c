"""Selection algorithms end to end: real gdispatch, real SIPp gateways, real calls."""

from __future__ import annotations

import socket
import time

import pytest

from gdispatch.dispatcher.hashing import kamailio_hash
from tests.support.wait import wait_for

from . import harness
from .test_proxy_calls import UdpSink

HOST = "127.0.0.1"
# Destinations that are bare UDP sinks never answer keepalives: no probing for them.
NO_PROBING = "[probing]\ninterval = 0\n"


def route(algorithm: int, extra: str = "") -> str:
    return f"[[route]]\nmethods = [\"INVITE\"]\nset = 1\nalgorithm = {algorithm}\n{extra}\n"


def test_weight_75_25(proxy, uas, uac):
    # The weights make a cycle of 4 slots (a, a, b, a: gdispatch.dispatcher.algorithms),
    # so 800 calls (2 s at 400 calls/s) split 600/200 exactly. The tolerance, b within
    # 2 calls of 200 (0.25% of the calls, as 10 of 4000 was), leaves room for a cycle
    # restarted by a state change under load, and still tells 75/25 from 74/26 (208).
    a, b = uas(), uas()
    p = proxy(harness.dispatcher_list(a, b, attrs=["duid=a;weight=75", "duid=b;weight=25"]), config=route(9))
    res = uac(f"{HOST}:{p.port}", calls=800, rate=400, timeout_s=60)
    assert (res.successful, res.failed) == (800, 0), res
    a.stop()
    b.stop()
    ca, cb = a.counts()["INVITE"], b.counts()["INVITE"]
    assert ca + cb == 800 and abs(cb - 200) <= 2, (ca, cb)


@pytest.mark.parametrize("flags,probing", [
    (1, "[probing]\ninterval = 0\n"),  # inactive ("IX"), as if probing had marked it down
    # disabled ("DX"), as set_state dx leaves it: never pinged back up, though pings
    # go out every 0.25 s (eight rounds while the calls last)
    (4, "[probing]\ninterval = 0.25\n"),
])
def test_weight_with_the_heavy_destination_down(proxy, uas, uac, flags, probing):
    # Every call to b, none to a: 400 calls (2 s at 200 calls/s, all to one gateway)
    # would show a leak of 1 in 400 or more.
    a, b = uas(), uas()
    lst = f"1 {a.uri} {flags} 0 duid=a;weight=75\n1 {b.uri} 0 0 duid=b;weight=25\n"
    p = proxy(lst, config=route(9) + probing)
    res = uac(f"{HOST}:{p.port}", calls=400, rate=200, timeout_s=60)
    assert (res.successful, res.failed) == (400, 0), res
    a.stop()
    b.stop()
    assert (a.counts()["INVITE"], a.counts()["OPTIONS"], b.counts()["INVITE"]) == (0, 0, 400)


def test_priority_first_while_it_accepts_then_the_next(proxy, uas, uac):
    hi, lo = uas(), uas()
    p = proxy(f"1 {lo.uri} 0 5\n1 {hi.uri} 0 10\n", config=route(8))
    res = uac(f"{HOST}:{p.port}", calls=200, rate=100, timeout_s=60)
    assert (res.successful, res.failed) == (200, 0), res
    hi.stop()
    lo.stop()
    assert (hi.counts()["INVITE"], lo.counts()["INVITE"]) == (200, 0)


def test_priority_first_answers_503_all_go_to_the_next(proxy, uas, uac):
    hi, lo = uas("uas_503.xml"), uas()
    p = proxy(f"1 {lo.uri} 0 5\n1 {hi.uri} 0 10\n", config=route(8))
    res = uac(f"{HOST}:{p.port}", calls=200, rate=100, timeout_s=60)
    assert (res.successful, res.failed) == (200, 0), res
    hi.stop()
    lo.stop()
    assert hi.counts()["INVITE"] == 200 and lo.counts()["INVITE"] == 200


def test_hash_of_call_id_is_sticky_and_kamailio_compatible(proxy):
    sinks = [UdpSink(), UdpSink()]
    try:
        lst = "".join(f"1 sip:{HOST}:{s.port} 0 0\n" for s in sinks)
        p = proxy(lst, config=route(0, "limit = 1") + NO_PROBING)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        lp = s.getsockname()[1]
        call_ids = [f"sticky-{i}@host" for i in range(30)]
        for _ in range(3):  # three separate INVITEs (new branch, new From tag) per Call-ID
            for cid in call_ids:
                s.sendto(harness.build_request("INVITE", f"sip:svc@{HOST}:{p.port}", local_port=lp, call_id=cid),
                         (HOST, p.port))
        wait_for(lambda: sum(len(x.per_call()) for x in sinks) >= 30, 5, 0.05)
        s.close()
        for cid in call_ids:
            got = [i for i, x in enumerate(sinks) if x.per_call().get(cid.encode())]
            # One destination per Call-ID, the one Kamailio's hash picks with both active:
            # slot h % 2 of the set, in Kamailio's order (equal priorities, the file's
            # reversed: slot 0 is the second line).
            assert got == [1 - kamailio_hash(cid.encode()) % 2], (cid, got)
    finally:
        for x in sinks:
            x.close()


def test_call_load_respects_maxload_and_counts_fall_back(proxy, uas, uac):
    a, b = uas(), uas()
    p = proxy(harness.dispatcher_list(a, b, attrs=["duid=a;maxload=5", "duid=b;maxload=5"]), config=route(10))
    # 12 long calls (2 s each, started within 0.25 s) at once: 10 fit, the 11th and
    # 12th find every destination at maxload and get 503.
    res = uac(f"{HOST}:{p.port}", calls=12, rate=50, timeout_s=60, extra_args=("-d", "2000"))
    assert (res.successful, res.failed) == (10, 2), res
    assert (a.counts()["INVITE"], b.counts()["INVITE"]) == (5, 5)
    # After the BYEs the counts are back to 0: ten more calls fit again.
    res = uac(f"{HOST}:{p.port}", calls=10, rate=50, timeout_s=60, extra_args=("-d", "1000"))
    assert (res.successful, res.failed) == (10, 0), res
    a.stop()
    b.stop()
    assert (a.counts()["INVITE"], b.counts()["INVITE"]) == (10, 10)


def test_parallel_first_answer_wins_other_is_cancelled(proxy, uas, uac):
    ringer, answerer = uas("uas_ring_cancel.xml"), uas()
    p = proxy(harness.dispatcher_list(ringer, answerer), config=route(12))
    res = uac(f"{HOST}:{p.port}", calls=20, rate=10, timeout_s=60)
    assert (res.successful, res.failed) == (20, 0), res
    ringer.stop()
    answerer.stop()
    r, w = ringer.counts(), answerer.counts()
    assert w["INVITE"] == w["ACK"] == w["BYE"] == 20, w
    assert r["INVITE"] == r["CANCEL"] == r["ACK"] == 20, r


def test_domain_routes_and_domain_mode(proxy):
    """The seed's "pbx1.xx.com to ast1, pbx2.xx.com to ast2", as two routes; in domain
    mode the destination also becomes the Request-URI host."""
    ast1, ast2 = UdpSink(), UdpSink()
    try:
        lst = f"1 sip:{HOST}:{ast1.port} 0 0\n2 sip:{HOST}:{ast2.port} 0 0\n"
        cfg = ('[[route]]\ndomains = ["pbx1.xx.com"]\nset = 1\nlimit = 1\n'
               '[[route]]\ndomains = ["pbx2.xx.com"]\nset = 2\nlimit = 1\nmode = "domain"\n')
        p = proxy(lst, config=NO_PROBING + cfg)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        lp = s.getsockname()[1]
        for host, cid in (("pbx1.xx.com", "d1"), ("pbx2.xx.com", "d2"), ("pbx3.xx.com", "d3")):
            s.sendto(harness.build_request("INVITE", f"sip:100@{host}", local_port=lp, call_id=cid),
                     (HOST, p.port))
        codes = []
        s.settimeout(0.5)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                codes.append(harness.status_code(s.recvfrom(65535)[0]))
            except socket.timeout:
                if ast1.received and ast2.received:
                    break
        s.close()
        assert 403 in codes  # pbx3 is nobody's: no open relay
        assert set(ast1.per_call()) == {b"d1"} and set(ast2.per_call()) == {b"d2"}
        assert ast1.received[0].startswith(b"INVITE sip:100@pbx1.xx.com SIP/2.0")
        assert ast2.received[0].startswith(b"INVITE sip:100@%s:%d SIP/2.0" % (HOST.encode(), ast2.port))
        assert p.alive()
    finally:
        ast1.close()
        ast2.close()
