"""Live operations without RPC: reload on file change and SIGHUP, a broken write that
hurts nothing, SIGTERM draining, and systemd's notify protocol."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

from tests.support.wait import wait_for

from . import harness

HOST = "127.0.0.1"


def reload_times(log: str) -> list[float]:
    out = []
    for line in log.splitlines():
        if " reloaded (" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            out.append(stamp.timestamp())
    return out


def background_load(uac, target, calls, rate):
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("uac", uac(target, calls=calls, rate=rate, timeout_s=90)))
    t.start()
    return t, result


def calls_sent(p: harness.Proxy) -> dict[str, int]:
    """INVITEs the proxy has sent to each destination of its list, by duid: one snapshot."""
    out = p.rpc("stats", json_out=True)
    assert out.returncode == 0, out.stderr
    return {d["DUID"]: d["CALLS_SENT"] for d in json.loads(out.stdout)["destinations"]}


def test_edit_under_load_add_remove_reweight(proxy, uas, uac):
    a, b, c = uas(), uas(), uas()
    p = proxy(f"1 {a.uri} 0 0 duid=a;weight=50\n1 {b.uri} 0 0 duid=b;weight=50\n",
              config="[[route]]\nset = 1\nalgorithm = 9\n")
    lst = Path(p.list_path)
    # 6 s of calls: 1 s before the edit, then its reload (within 1 s, asserted below),
    # b's counts after it (within 1.5 s) and still about 2.5 s of calls, some 500, to
    # show the new weights. Those split exactly 3 to 1 (a cycle of 4 slots), so the
    # ratio, within 2.5 and 3.5, needs only a few dozen.
    t, result = background_load(uac, f"{HOST}:{p.port}", 1200, 200)
    time.sleep(1)  # the scenario: the edit comes in the middle of the load
    # b removed, c added, a and c at 25/75; written in place, in two writes.
    t_edit = time.time()
    with open(lst, "w") as f:
        f.write(f"# edited under load\n1 {a.uri} 0 0 duid=a;weight=25\n")
        f.flush()
        f.write(f"1 {c.uri} 0 0 duid=c;weight=75\n")
    wait_for(lambda: reload_times(p.log()), 5, 0.05, message=lambda: p.log()[-2000:])
    reloaded = time.time()
    # What a and c had got by now, from the proxy's counters (one instant for both: the
    # gateways write their counts once a second each, at moments of their own).
    mid = calls_sent(p)
    assert mid.keys() == {"a", "c"}, mid
    # b's count after the reload, from a row SIPp wrote after it.
    b_mid = wait_for(lambda: b.counts_since(reloaded), 3, 0.05, message=b.counts)["INVITE"]
    assert t.is_alive(), (mid, b_mid)  # calls still coming
    t.join(60)
    res = result["uac"]
    assert (res.successful, res.failed) == (1200, 0), res
    times = reload_times(p.log())
    assert len(times) == 1, p.log()  # exactly one load of the complete file
    assert times[0] - t_edit < 1.0, (times, t_edit)
    end = calls_sent(p)
    for g in (a, b, c):
        g.stop()
    got = {"a": a.counts()["INVITE"], "b": b.counts()["INVITE"], "c": c.counts()["INVITE"]}
    assert sum(got.values()) == 1200, got
    assert (got["a"], got["c"]) == (end["a"], end["c"]), (got, end)  # the gateways got what was sent
    assert got["b"] == b_mid, (b_mid, got)  # the removed one gets no new call
    da, dc = end["a"] - mid["a"], end["c"] - mid["c"]
    assert da > 0 and 2.5 <= dc / da <= 3.5, (mid, end)  # 75/25 after the edit


def test_broken_write_keeps_old_list_then_recovers(proxy, uas, uac):
    a, b = uas(), uas()
    p = proxy(f"1 {a.uri} 0 0 duid=a\n")
    lst = Path(p.list_path)
    # 3 s of calls: both writes come in the first second or so (each is read 0.3 s
    # after it), and the calls after the second show b in the list.
    t, result = background_load(uac, f"{HOST}:{p.port}", 600, 200)
    time.sleep(0.5)  # the scenario: the broken write comes with calls under way
    lst.write_text(f"1 {a.uri} 0 0 duid=a\n1 {b.uri} 0 high duid=b\n")
    wait_for(lambda: "not reloaded" in p.log(), 5, 0.05, message=lambda: p.log()[-2000:])
    assert re.search(r"dispatcher\.list:2: bad priority 'high'", p.log()), p.log()
    assert "not reloaded" in p.log()
    lst.write_text(f"1 {a.uri} 0 0 duid=a\n1 {b.uri} 0 0 duid=b\n")
    wait_for(lambda: reload_times(p.log()), 5, 0.05, message=lambda: p.log()[-2000:])
    assert t.is_alive()  # calls still coming
    t.join(60)
    res = result["uac"]
    assert (res.successful, res.failed) == (600, 0), res
    a.stop()
    b.stop()
    assert b.counts()["INVITE"] > 0  # the fixed file loaded by itself
    assert len(reload_times(p.log())) == 1


def test_sighup_reloads(proxy, uas):
    a, b = uas(), uas()
    p = proxy(f"1 {a.uri} 0 0 duid=a\n", config="[dispatcher]\nwatch = false\n")
    Path(p.list_path).write_text(f"1 {b.uri} 0 0 duid=b\n")
    time.sleep(0.5)  # the scenario: time for a watcher to see the write, were there one
    assert not reload_times(p.log())  # not watched
    os.kill(p.pid, signal.SIGHUP)
    wait_for(lambda: reload_times(p.log()), 5, 0.05, message=lambda: p.log()[-2000:])
    replies = p.send_udp(harness.build_request("INVITE", f"sip:svc@{HOST}:{p.port}", local_port=0), timeout=3)
    assert harness.status_code(replies[-1]) == 200
    # b's counts as of now (it holds the call open: no ACK comes).
    now = time.time()
    assert wait_for(lambda: b.counts_since(now), 3, 0.1, message=b.counts)["INVITE"] == 1
    b.kill()  # a soft exit would wait for the call


def test_sigterm_drains_calls_in_flight(proxy, uas, uac):
    gw = uas("uas_ring_cancel.xml")  # rings until cancelled: calls stay in progress
    fast = uas()
    p = proxy(harness.dispatcher_list(gw, fast), config="[server]\ndrain_time = 3.0\n[[route]]\nset = 1\n"
                                                         "algorithm = 8\n[timers]\nfr_inv_timer = 2.0\n")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.settimeout(0.2)
    lp = s.getsockname()[1]
    s.sendto(harness.build_request("INVITE", f"sip:svc@{HOST}:{p.port}", local_port=lp, call_id="drain-1"),
             (HOST, p.port))
    harness.statuses_until(s, 180, timeout=3)  # the call rings: in progress
    os.kill(p.pid, signal.SIGTERM)
    wait_for(lambda: "draining" in p.log(), 3, 0.05, message=lambda: p.log()[-2000:])
    # A new call during the drain is refused with 503 and Retry-After.
    new = p.send_udp(harness.build_request("INVITE", f"sip:svc@{HOST}:{p.port}", local_port=0), timeout=2)
    assert harness.status_code(new[-1]) == 503 and b"Retry-After:" in new[-1], new
    # The call in progress finishes: its ringing times out (fr_inv_timer), fails over to
    # the fast gateway and is answered before the proxy exits.
    codes = harness.statuses_until(s, timeout=6)
    s.close()
    assert 200 in codes, codes
    assert p.proc.wait(10) == 0
    assert "draining" in p.log()


def test_sigterm_on_an_idle_proxy_is_not_held_up_by_its_own_pings(proxy, uas):
    """Draining ends once no message came for a moment. The answers to the proxy's own
    pings are no call's: a gateway pinged every 0.2 s must not keep an idle proxy
    draining until drain_time (30 s here) is over."""
    gw = uas()
    p = proxy(harness.dispatcher_list(gw), config="[server]\ndrain_time = 30.0\n[probing]\ninterval = 0.2\n")
    wait_for(lambda: gw.counts()["OPTIONS"] >= 2, 5, 0.1, message=gw.counts)  # pinged, and answering
    os.kill(p.pid, signal.SIGTERM)
    assert p.proc.wait(10) == 0, p.log()[-2000:]
    assert "drain time over" not in p.log()


def test_notify_protocol(tmp_path, proxy, uas):
    gw = uas()
    path = tmp_path / "notify.sock"
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(str(path))
    ns.settimeout(5)
    try:
        p = proxy(harness.dispatcher_list(gw), env={"NOTIFY_SOCKET": str(path)})
        got = [ns.recv(4096).decode()]
        assert "READY=1" in got[0], got
        os.kill(p.pid, signal.SIGHUP)
        got += [ns.recv(4096).decode(), ns.recv(4096).decode()]
        assert "RELOADING=1" in got[1] and "MONOTONIC_USEC=" in got[1] and "READY=1" in got[2], got
        os.kill(p.pid, signal.SIGTERM)
        got.append(ns.recv(4096).decode())
        assert "STOPPING=1" in got[3], got
        assert p.proc.wait(10) == 0
    finally:
        ns.close()


def test_sigterm_under_load_every_dispatched_call_completes(proxy, uas, uac):
    a, b = uas(), uas()
    p = proxy(harness.dispatcher_list(a, b))
    t, result = background_load(uac, f"{HOST}:{p.port}", 300, 100)
    time.sleep(1.5)  # the scenario: SIGTERM comes with calls under way
    os.kill(p.pid, signal.SIGTERM)
    assert p.proc.wait(15) == 0
    t.join(90)
    res = result["uac"]
    a.stop()
    b.stop()
    dispatched = a.counts()["INVITE"] + b.counts()["INVITE"]
    # Every call the proxy had sent on before it stopped went through to its BYE; the
    # calls after SIGTERM were refused or found nobody.
    assert dispatched > 100 and res.successful == dispatched, (dispatched, res)
    assert a.counts()["BYE"] + b.counts()["BYE"] == dispatched
