"""Operating a running gdispatch like Kamailio: `gdispatch rpc` with Kamailio's method
names against a real proxy, the seed's set_state sequence, state kept across edits and
the operator's states across restarts (the state file)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.support.wait import wait_for

from . import harness

HOST = "127.0.0.1"


def call_ok(p, *args):
    out = p.rpc(*args)
    # A fault exits 0 too, as with kamcmd: it is the "error: " line on stdout.
    assert out.returncode == 0 and not out.stdout.startswith("error: "), (args, out.stdout, out.stderr)
    return out.stdout


def test_every_rpc_method(proxy, uas):
    a, b = uas(), uas()
    p = proxy(f"1 {a.uri} 0 0 duid=a # Media Gateway 1\n1 {b.uri} 0 0 duid=b;maxload=9\n",
              config="[probing]\ninterval = 0.5\n")
    # The first pings answered: a destination active and probed, with its latency.
    tree = wait_for(lambda: (lambda t: "FLAGS: AP" in t and "LATENCY" in t and t)(call_ok(p, "dispatcher.list")),
                    5, 0.1)
    assert "URI: " + a.uri in tree and "FLAGS: AP" in tree and "DUID: a" in tree and "LATENCY" in tree
    full = json.loads(p.rpc("dispatcher.list", "extended", json_out=True).stdout)
    dest = next(t["DEST"] for t in full["RECORDS"][0]["SET"]["TARGETS"] if t["DEST"]["ATTRS"]["DUID"] == "a")
    assert dest["HOST"] == HOST and dest["DESCRIPTION"] == "Media Gateway 1"
    assert "Dispatcher successfully reloaded" in call_ok(p, "dispatcher.reload")
    # Pings off first: a ping answered between two commands would set "a" back to AP.
    pa = json.loads(p.rpc("dispatcher.ping_active", "0", json_out=True).stdout)
    assert pa == {"NewPingState": 0, "OldPingState": 1}
    assert "state updated" in call_ok(p, "dispatcher.set_state", "ip", "1", a.uri)
    assert p.states()["a"] == "IP"
    assert "state updated" in call_ok(p, "dispatcher.set_duid_state", "dx", "1", "b")
    assert p.states()["b"] == "DX"
    call_ok(p, "dispatcher.ping_active", "1")
    c = uas()
    assert "added" in call_ok(p, "dispatcher.add", "2", c.uri, "0", "0", "duid=c")
    assert p.states()["c"] in ("AX", "AP")
    assert "removed" in call_ok(p, "dispatcher.remove", "2", c.uri)
    assert "c" not in p.states()
    h = json.loads(p.rpc("dispatcher.hash", "3", "a", "example.com", json_out=True).stdout)
    assert h == {"hashid": -389237290, "slot": 0}  # Kamailio's own answer for these keys
    assert "gdispatch" in call_ok(p, "core.version")
    up = json.loads(p.rpc("core.uptime", json_out=True).stdout)
    assert up["uptime"] >= 1
    st = json.loads(p.rpc("stats", json_out=True).stdout)
    assert "requests" in st and {d["DUID"] for d in st["destinations"]} == {"a", "b"}
    bad = p.rpc("dispatcher.set_state", "zz", "1", a.uri)
    assert (bad.returncode, bad.stdout) == (0, "error: 500 - Unknown State Value\n")


def test_seed_set_state_dx_then_ap_moves_traffic_off_and_back(proxy, uas, uac):
    mg1, mg2 = uas(), uas()
    p = proxy(f"1 {mg1.uri} 0 0 duid=mg1\n1 {mg2.uri} 0 0 duid=mg2\n")
    target = f"{HOST}:{p.port}"
    assert uac(target, calls=100, rate=100, timeout_s=30).successful == 100
    call_ok(p, "dispatcher.set_state", "dx", "1", mg1.uri)  # kamcmd dispatcher.set_state dx 1 sip:mg1:5060
    assert p.states()["mg1"] == "DX"
    # (the UAS rewrite their counts every second)
    wait_for(lambda: mg1.counts()["INVITE"] + mg2.counts()["INVITE"] == 100, 5, 0.1,
             message=lambda: (mg1.counts(), mg2.counts()))
    before = mg1.counts()["INVITE"]
    assert uac(target, calls=100, rate=100, timeout_s=30).successful == 100
    wait_for(lambda: mg2.counts()["INVITE"] == 200 - before, 5, 0.1, message=lambda: (mg1.counts(), mg2.counts()))
    assert mg1.counts()["INVITE"] == before  # maintenance: no new call
    call_ok(p, "dispatcher.set_state", "ap", "1", mg1.uri)
    assert uac(target, calls=100, rate=100, timeout_s=30).successful == 100
    mg1.stop()
    mg2.stop()
    assert mg1.counts()["INVITE"] == before + 50


def test_state_survives_edits_under_load(proxy, uas, uac):
    a, b, d = uas(), uas(), uas()
    p = proxy(f"1 {a.uri} 0 0 duid=a\n1 {b.uri} 0 0 duid=b\n1 {d.uri} 0 0 duid=d\n")
    call_ok(p, "dispatcher.set_state", "dx", "1", d.uri)
    # 4 s of calls: the two edits come after 1 s and each is seen within a second or so.
    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "uac", harness.run_uac(f"{HOST}:{p.port}", calls=800, rate=200, timeout_s=60, workdir=p.dir / "uac")))
    t.start()
    time.sleep(1)  # the scenario: the edits come with calls under way
    Path(p.list_path).write_text(f"1 {a.uri} 0 0 duid=a\n1 {d.uri} 0 0 duid=d\n")  # b removed

    def b_gone_d_still_disabled() -> bool:  # "a" is AX until its first ping, then AP
        states = p.states()
        return states.keys() == {"a", "d"} and states["a"] in ("AX", "AP") and states["d"] == "DX"

    wait_for(b_gone_d_still_disabled, 5, 0.1, message=p.states)
    # A broken write: the running list does not change.
    Path(p.list_path).write_text(f"1 {a.uri} 0 0 duid=a\n1 {d.uri} zz\n")
    wait_for(lambda: ":2: bad flags 'zz'" in p.log(), 5, 0.1, message=lambda: p.log()[-2000:])
    assert b_gone_d_still_disabled(), p.states()
    assert t.is_alive()  # all of it under load
    t.join(60)
    res = result["uac"]
    assert (res.successful, res.failed) == (800, 0), res
    d.stop()
    assert d.counts()["INVITE"] == 0


# No pings (interval 0): the states the tests set stay as set, and no gateway is needed.
GATEWAYS = harness.dispatcher_list("sip:127.0.0.1:5071", "sip:127.0.0.1:5072", "sip:127.0.0.1:5073")
NO_PINGS = "[probing]\ninterval = 0\n"


def restart(p: harness.Proxy) -> None:
    """Stop the proxy by its PID (SIGTERM, as systemctl does) and start it again."""
    assert p.stop() == 0, p.log()[-2000:]
    p.start()


def test_the_operators_states_survive_a_restart(proxy):
    p = proxy(GATEWAYS, config=NO_PINGS)
    call_ok(p, "dispatcher.set_state", "dx", "1", "sip:127.0.0.1:5071")  # maintenance
    call_ok(p, "dispatcher.set_duid_state", "ix", "1", "gw2")
    call_ok(p, "dispatcher.set_state", "dx", "1", "sip:127.0.0.1:5073")
    call_ok(p, "dispatcher.set_state", "ax", "1", "sip:127.0.0.1:5073")  # back to the file's state
    assert p.states() == {"gw1": "DX", "gw2": "IX", "gw3": "AX"}
    # The list is edited while the proxy is stopped: gw2 gets another priority, same set,
    # URI and duid, so its state still applies.
    p.stop()
    p.list_path.write_text(GATEWAYS.replace("5072 0 0", "5072 0 10"))
    p.start()
    assert p.states() == {"gw2": "IX", "gw1": "DX", "gw3": "AX"}
    assert "destination sip:127.0.0.1:5071 (set 1, duid gw1) is DX as the operator set it (rpc " \
        "dispatcher.set_state dx at " in p.log()
    saved = json.loads((p.dir / "dispatcher.list.state").read_text())  # $STATE_DIRECTORY (the harness's)
    assert [(r["duid"], r["state"], r["flags"]) for r in saved["states"]] == [("gw1", "DX", 4), ("gw2", "IX", 1)]
    # Back in service: the next restart has nothing to restore.
    call_ok(p, "dispatcher.set_state", "ap", "1", "sip:127.0.0.1:5071")
    call_ok(p, "dispatcher.set_duid_state", "a", "1", "gw2")
    restart(p)
    assert p.states() == {"gw1": "AX", "gw2": "AX", "gw3": "AX"}
    assert json.loads((p.dir / "dispatcher.list.state").read_text())["states"] == []


def test_with_persistent_state_off_a_restart_forgets_them_as_kamailio_does(proxy):
    p = proxy(GATEWAYS, config=NO_PINGS + "[dispatcher]\npersistent_state = false\n")
    call_ok(p, "dispatcher.set_state", "dx", "1", "sip:127.0.0.1:5071")
    assert p.states()["gw1"] == "DX"
    restart(p)
    assert p.states() == {"gw1": "AX", "gw2": "AX", "gw3": "AX"}
    assert not (p.dir / "dispatcher.list.state").exists()


def test_a_reload_that_resets_states_still_applies_the_operators(proxy):
    p = proxy(GATEWAYS, config=NO_PINGS + "[dispatcher]\nreload_keeps_state = false\n")
    call_ok(p, "dispatcher.set_state", "dx", "1", "sip:127.0.0.1:5071")
    call_ok(p, "dispatcher.reload")
    assert p.states()["gw1"] == "DX"


def test_a_corrupt_state_file_is_a_warning_not_a_failed_start(tmp_path):
    p = harness.Proxy(tmp_path / "proxy", GATEWAYS, NO_PINGS)  # the file is written before the start
    state = p.dir / "dispatcher.list.state"
    state.write_text('{"states": [{"set": 1, "uri": "sip:127.0.0.1:5071", "flags": "DX"')
    try:
        p.start()
        assert p.states() == {"gw1": "AX", "gw2": "AX", "gw3": "AX"}
        assert f"{state}: not valid JSON" in p.log() and f"the file is kept as {state}.bad" in p.log()
        assert (p.dir / "dispatcher.list.state.bad").read_text().startswith('{"states": [{"set": 1,')
        call_ok(p, "dispatcher.set_state", "dx", "1", "sip:127.0.0.1:5072")  # kept again from here on
        restart(p)
        assert p.states()["gw2"] == "DX"
    finally:
        p.stop()


def test_control_socket_is_private(proxy, uas):
    # The socket in a directory everybody may enter: only the socket's own mode protects it.
    where = Path(tempfile.mkdtemp(prefix="gd-ctl-", dir="/tmp"))
    where.chmod(0o755)
    path = where / "control.sock"
    try:
        p = proxy(harness.dispatcher_list(uas()), env={"GDISPATCH_SOCKET": str(path)})
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o600, oct(mode)
        assert os.stat(path).st_uid == os.getuid()
        assert p.alive()
        if os.getuid() != 0:
            pytest.skip("checking another user needs root to switch to `nobody`")
        code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
                "try:\n    s.connect(sys.argv[1])\n    s.sendall(b'{\"jsonrpc\":\"2.0\",\"id\":1,"
                "\"method\":\"core.version\"}\\n')\n    print('answer', s.recv(100))\n"
                "except OSError as e:\n    print('refused', e.errno)\n")
        out = subprocess.run(["/usr/bin/python3", "-c", code, str(path)], capture_output=True, text=True,
                             timeout=10, user="nobody", check=False)
        assert out.stdout.startswith("refused 13"), out  # EACCES: the socket is 0600
        # root (the owner here) still gets in.
        out = subprocess.run([sys.executable, "-m", "gdispatch", "rpc", "--socket", str(path), "core.version"],
                             capture_output=True, text=True, timeout=10, check=False,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        assert out.returncode == 0 and "gdispatch" in out.stdout, out
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_list_add_and_rm_are_picked_up_live(proxy, uas):
    a, c = uas(), uas()
    p = proxy(f"# gateways\n1 {a.uri} 0 0 duid=a\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    def gd(*args):
        return subprocess.run([sys.executable, "-m", "gdispatch", "list", *args, "--list", str(p.list_path)],
                              capture_output=True, text=True, timeout=20, env=env, check=False)

    out = gd("add", "1", c.uri, "0", "0", "", "Media Gateway 3")  # the seed's kamctl line
    assert out.returncode == 0, out
    text = Path(p.list_path).read_text()
    assert text.startswith("# gateways\n") and text.rstrip().endswith("# Media Gateway 3")
    wait_for(lambda: c.uri in p.states(), 3, 0.1, message=p.states)
    assert gd("rm", "1", c.uri).returncode == 0
    wait_for(lambda: c.uri not in p.states(), 3, 0.1, message=p.states)
    assert set(p.states()) == {"a"}
