"""Keepalive probing end to end: real gdispatch, SIPp gateways answering (or not) the
OPTIONS pings, and a plugin recording every `gdispatch_destination_state_changed` event."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from tests.support.wait import wait_for

from . import harness
from .test_proxy_calls import UdpSink

HOST = "127.0.0.1"

RECORDER = '''
import json, os, time
from gdispatch.hookspecs import hookimpl

@hookimpl
def gdispatch_destination_state_changed(destination, old_state, new_state, reason):
    with open(os.environ["GD_EVENTS"], "a") as f:
        f.write(json.dumps({"t": time.time(), "uri": destination.uri, "duid": destination.duid,
                            "iuid": destination.probe.iuid if destination.probe else None,
                            "old": old_state, "new": new_state, "reason": reason}) + "\\n")
'''


class Recorder:
    def __init__(self, tmp_path: Path):
        self.dir = tmp_path / "hooks"
        self.dir.mkdir()
        (self.dir / "recorder.py").write_text(RECORDER)
        self.events_path = tmp_path / "events.jsonl"

    def config(self, probing: str) -> str:
        return f'[plugins]\nhooks_dir = "{self.dir}"\nenabled = ["recorder"]\n[probing]\n{probing}\n'

    @property
    def env(self) -> dict:
        return {"GD_EVENTS": str(self.events_path)}

    def events(self, duid: str | None = None) -> list[dict]:
        if not self.events_path.exists():
            return []
        evs = [json.loads(x) for x in self.events_path.read_text().splitlines() if x.strip()]
        return [e for e in evs if duid is None or e["duid"] == duid]

    def states(self, duid: str) -> list[str]:
        return [e["new"] for e in self.events(duid)]

    def wait_for(self, duid: str, state: str, timeout: float, after: float = 0.0) -> dict:
        """The first event of `duid` entering `state` at `after` or later (the test fails
        if none comes within `timeout` seconds)."""
        return wait_for(lambda: next((e for e in self.events(duid) if e["new"] == state and e["t"] >= after), None),
                        timeout, 0.05, message=lambda: self.events())


def test_killed_destination_goes_down_and_comes_back(tmp_path, proxy, uas, uac):
    rec = Recorder(tmp_path)
    a, b = uas(), uas()
    interval, threshold, timeout = 0.5, 2, 1.0
    p = proxy(harness.dispatcher_list(a, b),
              config=rec.config(f"interval = {interval}\ntimeout = {timeout}\nprobing_threshold = {threshold}\n"
                                "inactive_threshold = 1\nmode = 1"), env=rec.env)
    assert rec.wait_for("gw1", "AP", 3) and rec.wait_for("gw2", "AP", 3)

    # 6 s of calls: the kill comes after 1 s, its detection within 2.5 s (the bound
    # below), and the gateway is down for 1 s more with calls still coming. A call caught
    # in flight by the kill fails when nothing came for 3 s (SIPp's -recv_timeout; the
    # default, 8 s, only made the caller wait longer for it); the others take
    # milliseconds.
    result = {}
    load = threading.Thread(target=lambda: result.setdefault(
        "uac", uac(f"{HOST}:{p.port}", calls=600, rate=100, timeout_s=60, recv_timeout_ms=3000)))
    load.start()
    time.sleep(1)  # the scenario: the gateway dies with calls in flight
    t_kill = time.time()
    a.kill()
    assert load.is_alive()
    down = rec.wait_for("gw1", "IP", 10, after=t_kill)
    # Down within interval x threshold + ping timeout (+ one interval for where the kill
    # fell in the ping cycle).
    assert down["t"] - t_kill <= interval * threshold + timeout + interval, (down, t_kill)
    time.sleep(2 * interval)  # the scenario: it stays down a while (two ping rounds)
    t_restart = time.time()
    a2 = uas(port=a.port)
    up = rec.wait_for("gw1", "AP", 10, after=t_restart)
    assert up["t"] - t_restart <= 1 * interval + timeout + interval
    print(f"\nkilled gateway: IP after {down['t'] - t_kill:.2f} s, AP again {up['t'] - t_restart:.2f} s "
          f"after its restart")
    load.join(90)
    res = result["uac"]
    # Only calls already in flight to the killed gateway may fail (a BYE it never answers);
    # new calls fail over and then avoid it.
    assert res.successful + res.failed == 600 and res.failed <= 5, res
    print(f"calls: {res.successful} ok, {res.failed} failed (in flight to it when it died)")
    # The hook saw the initial state and then every transition, in order. Read before
    # the gateways stop: the next pings would find them gone.
    evs = rec.events("gw1")
    b.stop()
    a2.stop()
    assert evs[0]["old"] is None and evs[0]["new"] == "AX" and evs[0]["reason"] == "initial state"
    for prev, cur in zip(evs, evs[1:]):
        assert cur["old"] == prev["new"], evs
    seq = [e["new"] for e in evs]
    assert seq[:2] == ["AX", "AP"] and "IP" in seq and seq[-1] == "AP", seq
    assert "down" in p.log() and "up" in p.log()


def options_scenario(tmp_path: Path, status: str) -> str:
    """A copy of uas_options.xml answering OPTIONS with `status` (SIPp reads codes at load)."""
    text = (Path(__file__).parent.parent / "scenarios" / "uas_options.xml").read_text()
    path = tmp_path / f"uas_options_{status.split()[0]}.xml"
    path.write_text(text.replace("OPTIONS_STATUS", status))
    return str(path)


def test_options_reply_codes(tmp_path, proxy, uas):
    rec = Recorder(tmp_path)
    busy = uas(options_scenario(tmp_path, "503 Service Unavailable"))
    picky = uas(options_scenario(tmp_path, "405 Method Not Allowed"))
    other = uas(options_scenario(tmp_path, "405 Method Not Allowed"))
    lst = f"1 {busy.uri} 0 0 duid=busy\n2 {picky.uri} 0 0 duid=picky\n"
    proxy(lst, config=rec.config('interval = 0.25\ntimeout = 1\nreply_codes = ["code=405"]'), env=rec.env)
    # Without code=405 configured, a 405 is a failure: a second proxy, at the same time.
    (tmp_path / "second").mkdir()
    rec2 = Recorder(tmp_path / "second")
    proxy(f"1 {other.uri} 0 0 duid=other\n", config=rec2.config("interval = 0.25\ntimeout = 1"), env=rec2.env)
    rec.wait_for("busy", "IP", 5)
    rec.wait_for("picky", "AP", 5)
    rec2.wait_for("other", "IP", 5)
    time.sleep(0.75)  # the scenario: three more pings of picky answered 405, and no change
    assert "IP" not in rec.states("picky") and "TP" not in rec.states("picky")


def test_same_uri_twice_keeps_separate_states(tmp_path, proxy):
    """Both records ping the same address; the responder answers only the pings of
    record a, recognised by the record id in the From tag."""
    rec = Recorder(tmp_path)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(0.2)
    port = sock.getsockname()[1]
    stop = threading.Event()
    answered, ignored = [], []

    def responder():
        iuid_a = None
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(65535)
            except OSError:
                continue
            if iuid_a is None:  # the initial-state events are written before any ping
                iuid_a = next((e["iuid"] for e in rec.events("a")), None)
            tag = data.split(b";tag=", 1)[1].split(b"\r\n", 1)[0].decode() if b";tag=" in data else ""
            if iuid_a is not None and tag.startswith(iuid_a + "-"):
                head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
                keep = [h for h in head[1:] if h.split(b":", 1)[0].lower() in (b"via", b"from", b"to", b"call-id",
                                                                                  b"cseq")]
                sock.sendto(b"\r\n".join([b"SIP/2.0 200 OK", *keep, b"Content-Length: 0", b"", b""]), addr)
                answered.append(tag)
            else:
                ignored.append(tag)

    t = threading.Thread(target=responder, daemon=True)
    t.start()
    try:
        lst = f"1 sip:{HOST}:{port} 0 0 duid=a\n1 sip:{HOST}:{port} 0 0 duid=b\n"
        proxy(lst, config=rec.config("interval = 0.5\ntimeout = 0.5"), env=rec.env)
        rec.wait_for("b", "IP", 5)
        rec.wait_for("a", "AP", 5)
        time.sleep(1.0)  # the scenario: two more pings each, and no change
        assert rec.states("a") == ["AX", "AP"], rec.events("a")
        assert answered and ignored
    finally:
        stop.set()
        t.join(2)
        sock.close()


def test_pings_are_spread_over_the_interval_and_flags_respected(tmp_path, proxy):
    rec = Recorder(tmp_path)
    sinks = [UdpSink() for _ in range(4)]
    never = UdpSink()
    try:
        lst = "".join(f"1 sip:{HOST}:{s.port} 0 0 duid=s{i}\n" for i, s in enumerate(sinks))
        lst += f"2 sip:{HOST}:{never.port} 4 0 duid=disabled\n2 sip:{HOST}:{never.port} 32 0 duid=noping\n"
        proxy(lst, config=rec.config("interval = 2\ntimeout = 1.5"), env=rec.env)
        wait_for(lambda: all(s.arrivals for s in sinks), 4, 0.05, message=lambda: [s.arrivals for s in sinks])
        firsts = sorted(s.arrivals[0] for s in sinks)
        gaps = [b - a for a, b in zip(firsts, firsts[1:])]
        # Four destinations, a 2 s interval: one ping every 0.5 s, not four at once.
        assert all(g > 0.3 for g in gaps), gaps
        assert not never.received
        assert rec.states("disabled") == ["DX"] and rec.states("noping") == ["AN"]
    finally:
        for s in sinks + [never]:
            s.close()


assert os  # (used by the recorder plugin through the environment)


def test_icmp_unreachable_fails_over_and_marks_at_once(tmp_path, proxy, uas):
    """A destination whose port is closed answers with ICMP port unreachable: the call
    moves on at once (not after fr_timer) and the destination is marked down."""
    rec = Recorder(tmp_path)
    good = uas()
    closed = harness.free_port("udp")
    lst = f"1 sip:{HOST}:{closed} 0 10 duid=closed\n1 {good.uri} 0 5 duid=good\n"
    cfg = rec.config("interval = 0") + "[timers]\nfr_timer = 10.0\n[[route]]\nset = 1\nalgorithm = 8\n"
    p = proxy(lst, config=cfg, env=rec.env)
    t0 = time.monotonic()
    replies = p.send_udp(harness.build_request("INVITE", f"sip:svc@{HOST}:{p.port}", local_port=0), timeout=8)
    elapsed = time.monotonic() - t0
    assert harness.status_code(replies[-1]) == 200, replies
    assert elapsed < 5.0, elapsed  # far below fr_timer: the ICMP error ended the attempt
    ev = rec.wait_for("closed", "IP", 2)
    assert ev["reason"] == "transport error", rec.events("closed")


def test_a_gateway_started_a_second_after_the_proxy_is_up_in_seconds_not_a_ping_interval(tmp_path, proxy, uas):
    """The README's recipe: the proxy first, its gateway a moment later. The first ping
    finds nobody (IP); the sooner retries (1 s, then 2 s, 4 s...) find the gateway well
    before the 10 s interval brings the next regular ping."""
    rec = Recorder(tmp_path)
    port = harness.free_port("udp")
    proxy(f"1 sip:{HOST}:{port} 0 0 duid=gw\n", config=rec.config("interval = 10\ntimeout = 2"), env=rec.env)
    rec.wait_for("gw", "IP", 3)  # the first ping: the port is closed
    time.sleep(1.0)  # the scenario: the gateway starts a second after the proxy
    t_up = time.time()
    uas(port=port)
    up = rec.wait_for("gw", "AP", 9, after=t_up)
    print(f"\ngateway started after the proxy: AP {up['t'] - t_up:.2f} s after it listens")
    assert up["t"] - t_up < 4.5, rec.events("gw")
    assert rec.states("gw")[:3] == ["AX", "IP", "AP"], rec.events("gw")
