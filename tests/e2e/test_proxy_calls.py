"""Whole calls through a real gdispatch process, between real SIPp UAC and UAS processes.

Each test proves one promise of the proxy core end to end: dialog-correct round robin over
UDP and TCP, failover on 503 and on silence, CANCEL, and retransmission absorption.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter

import pytest

from tests.support.wait import wait_for

from . import harness

HOST = "127.0.0.1"


def both_gateways_saw_whole_dialogs(gws, total):
    counts = [g.counts() for g in gws]
    assert sum(c["INVITE"] for c in counts) == total, counts
    for c in counts:
        # Every ACK and BYE came back through the proxy to the gateway that took the call.
        assert c["ACK"] == c["INVITE"] and c["BYE"] == c["INVITE"], counts
        assert c["unexpected"] == 0, counts
    return counts


@pytest.mark.parametrize("caller,gateways", [
    ("u1", "u1"),  # UDP all the way
    ("t1", "u1"),  # TCP from the caller to the proxy
    ("u1", "t1"),  # TCP from the proxy to destinations written with ;transport=tcp
])
def test_round_robin_400_calls(proxy, uas, uac, caller, gateways):
    # Round robin is exact (no sampling): 400 calls, 2 s at 200 calls/s, leave each
    # gateway within one call of 200.
    gws = [uas(transport=gateways), uas(transport=gateways)]
    p = proxy(harness.dispatcher_list(*gws), listen=("udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}"))
    res = uac(f"{HOST}:{p.port}", calls=400, rate=200, transport=caller, timeout_s=60)
    assert (res.successful, res.failed) == (400, 0), res
    for g in gws:
        g.stop()
    counts = both_gateways_saw_whole_dialogs(gws, 400)
    assert all(abs(c["INVITE"] - 200) <= 1 for c in counts), counts
    assert p.alive()


def test_503_destination_fails_over_to_the_other(proxy, uas, uac):
    bad, good = uas("uas_503.xml"), uas()
    p = proxy(harness.dispatcher_list(bad, good))
    res = uac(f"{HOST}:{p.port}", calls=200, rate=100, timeout_s=60)
    assert (res.successful, res.failed) == (200, 0), res
    bad.stop()
    good.stop()
    b, g = bad.counts(), good.counts()
    assert g["INVITE"] == g["ACK"] == g["BYE"] == 200, g
    # Round robin tried the 503 one first for half of the calls, and the proxy ACKed each 503.
    assert b["INVITE"] == 100 and b["ACK"] == 100, b
    assert "failover" in p.log()


class UdpSink:
    """A destination that never answers: it only counts what it receives, per Call-ID."""

    def __init__(self, host: str = HOST):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.arrivals: list[float] = []  # time.monotonic() of each datagram
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65535)
            except OSError:
                continue
            self.arrivals.append(time.monotonic())
            self.received.append(data)

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def per_call(self, method: bytes = b"INVITE") -> Counter:
        c = Counter()
        for m in self.received:
            if m.startswith(method + b" "):
                for line in m.split(b"\r\n"):
                    if line.lower().startswith((b"call-id:", b"i:")):
                        c[line.split(b":", 1)[1].strip()] += 1
        return c


def test_silent_destination_fails_over_after_fr_timer(proxy, uas, uac):
    sink = UdpSink()
    good = uas()
    try:
        p = proxy(harness.dispatcher_list(f"sip:{HOST}:{sink.port}", good),
                  config="[timers]\nfr_timer = 2.0\n[probing]\ninterval = 0\n")
        t0 = time.monotonic()
        res = uac(f"{HOST}:{p.port}", calls=10, rate=5, timeout_s=60)
        elapsed = time.monotonic() - t0
        assert (res.successful, res.failed) == (10, 0), res
        good.stop()
        assert good.counts()["INVITE"] == 10
        # Half the calls went to the silent one first and waited out fr_timer there.
        per_call = sink.per_call()
        assert len(per_call) == 5, per_call
        # RFC 3261 §17.1.1.2: within fr_timer = 2 s with T1 = 0.5 s, Timer A allows the
        # INVITE at 0, 0.5 and 1.5 s: three sends per call, no more.
        assert max(per_call.values()) <= 3, per_call
        assert elapsed >= 2.0
    finally:
        sink.close()


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_cancel_before_answer(proxy, uas, uac, transport):
    gw = uas("uas_ring_cancel.xml")
    p = proxy(harness.dispatcher_list(gw), listen=("udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}"))
    res = uac(f"{HOST}:{p.port}", "uac_cancel.xml", calls=20, rate=10, transport=transport, timeout_s=60)
    # The scenario checks the caller got 200 for its CANCEL and 487 for its INVITE.
    assert (res.successful, res.failed) == (20, 0), res
    gw.stop()
    c = gw.counts()
    assert c["INVITE"] == 20 and c["CANCEL"] == 20 and c["ACK"] == 20, c


def test_retransmitted_invite_is_absorbed(proxy, uas):
    gw = uas()
    p = proxy(harness.dispatcher_list(gw))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.settimeout(0.3)
    port = s.getsockname()[1]
    invite = harness.build_request("INVITE", f"sip:service@{HOST}:{p.port}", local_port=port)
    try:
        s.sendto(invite, (HOST, p.port))
        statuses = harness.statuses_until(s, 100)  # the proxy has its transaction
        s.sendto(invite, (HOST, p.port))  # the same INVITE again (same branch)
        statuses += harness.statuses_until(s)
    finally:
        s.close()
    assert 200 in statuses, statuses
    # The retransmission was answered with the last provisional, not forwarded.
    assert statuses.count(100) + statuses.count(180) >= 2, statuses
    stats = json.loads(p.rpc("stats", json_out=True).stdout)
    assert stats["retransmissions_absorbed"] == 1, stats
    # The gateway's counts as of now (it holds the call open: no ACK comes).
    now = time.time()
    counts = wait_for(lambda: gw.counts_since(now), 3, 0.1, message=gw.counts)
    gw.kill()  # a soft exit would wait for the call
    assert counts["INVITE"] == 1, counts
