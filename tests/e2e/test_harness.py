"""The harness and the SIPp scenarios, SIPp to SIPp with no proxy in between.

These pin down what the proxy tests rely on: the scenarios complete, the UAS counts what it
received, and a failing or cancelled call is reported as such.
"""

from __future__ import annotations

import socket

import pytest

from tests.support import sipmsg

from . import harness

TRANSPORTS = ["u1", "t1"]


def test_free_port_both_is_free_for_udp_and_tcp():
    port = harness.free_port("both")
    for st in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, st)
        try:
            s.bind(("127.0.0.1", port))
        finally:
            s.close()


def test_sip_options_gets_200_from_uas_and_none_from_silence(uas):
    gw = uas("uas_ok.xml")
    assert harness.sip_options(gw.port) == 200
    assert harness.sip_options(harness.free_port("udp"), timeout=0.5) is None
    gw.stop()
    assert gw.counts()["OPTIONS"] == 1


def test_sip_options_over_tcp(uas):
    gw = uas("uas_ok.xml", transport="t1")
    assert harness.sip_options(gw.port, transport="tcp") == 200


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_uac_to_uas_ok(uas, uac, transport):
    gw = uas("uas_ok.xml", transport=transport)
    res = uac(f"127.0.0.1:{gw.port}", calls=50, rate=50, transport=transport, timeout_s=30)
    assert res.rc == 0, res
    assert (res.successful, res.failed, res.unfinished) == (50, 0, 0), res
    assert res.retransmissions == 0, res
    gw.stop()
    c = gw.counts()
    assert (c["INVITE"], c["ACK"], c["BYE"], c["CANCEL"], c["OPTIONS"]) == (50, 50, 50, 0, 0), c
    assert c["unexpected"] == 0, c


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_uac_to_uas_503_fails_every_call(uas, uac, transport):
    gw = uas("uas_503.xml", transport=transport)
    res = uac(f"127.0.0.1:{gw.port}", calls=20, rate=20, transport=transport, timeout_s=30)
    assert res.rc != 0, res
    assert (res.successful, res.failed) == (0, 20), res
    gw.stop()
    c = gw.counts()
    assert c["INVITE"] == 20 and c["503_sent"] == 20, c
    assert c["ACK"] == 20, c  # SIPp's UAC acknowledges the 503 on its own


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_uac_cancel_to_uas_ring_cancel(uas, uac, transport):
    gw = uas("uas_ring_cancel.xml", transport=transport)
    res = uac(f"127.0.0.1:{gw.port}", "uac_cancel.xml", calls=10, rate=10, transport=transport,
              timeout_s=30)
    assert res.rc == 0, res
    assert (res.successful, res.failed, res.unfinished) == (10, 0, 0), res
    gw.stop()
    c = gw.counts()
    assert (c["INVITE"], c["CANCEL"], c["ACK"], c["487_sent"]) == (10, 10, 10, 10), c
    assert c["unexpected"] == 0, c


def test_uas_ring_cancel_487_keeps_every_via(uas):
    """A proxy's CANCEL has one Via; the 487 must still carry all the INVITE's Vias."""
    gw = uas("uas_ring_cancel.xml")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(3)
    lp = s.getsockname()[1]
    top_via = f"SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bKharness-top"
    below_via = "SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKharness-below;received=127.0.0.1"
    top, below = f"Via: {top_via}", f"Via: {below_via}"
    dialog = dict(from_="<sip:a@127.0.0.1>", from_tag="ht", to="<sip:gw@127.0.0.1>", call_id="harness-via-test",
                  cseq=7)

    try:
        ruri = f"sip:gw@127.0.0.1:{gw.port}"
        s.sendto(sipmsg.request("INVITE", ruri, vias=[top_via, below_via], **dialog), ("127.0.0.1", gw.port))
        assert s.recv(65535).startswith(b"SIP/2.0 180 ")
        s.sendto(sipmsg.request("CANCEL", ruri, vias=[top_via], **dialog), ("127.0.0.1", gw.port))
        got = {}
        while len(got) < 2:
            r = s.recv(65535)
            got[harness.status_code(r)] = r.decode()
        assert "CSeq: 7 CANCEL" in got[200]
        r487 = got[487]
        assert top in r487 and below in r487, r487
        assert r487.index(top) < r487.index(below), r487
        assert "CSeq: 7 INVITE" in r487, r487
        tag = r487.split("To: <sip:gw@127.0.0.1>;tag=", 1)[1].split("\r\n", 1)[0]
        ack = sipmsg.request("ACK", ruri, vias=[top_via], **dialog, to_tag=tag)
        s.sendto(ack, ("127.0.0.1", gw.port))
    finally:
        s.close()
    gw.stop()
    c = gw.counts()
    assert (c["INVITE"], c["CANCEL"], c["ACK"]) == (1, 1, 1), c


def test_uas_stop_is_quick_and_kill_works(uas):
    gw = uas("uas_ok.xml")
    assert gw.alive()
    gw.kill()
    assert not gw.alive()


def test_proxy_start_fails_loudly_when_nothing_answers(tmp_path):
    """A proxy command that never answers OPTIONS makes Proxy.start raise with the log."""
    p = harness.Proxy(tmp_path, "", args=["--this-flag-does-not-exist"], ready_timeout=3)
    with pytest.raises(RuntimeError, match="gdispatch"):
        p.start()
    assert not p.alive()
