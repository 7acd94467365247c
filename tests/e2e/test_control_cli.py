"""`gdispatch rpc` end to end: a control server in its own process (a small script that
runs ControlServer over a fake application), and the real command line against it:
kamcmd's output and faults, --json, exit statuses, the default socket path, the TCP port
with a token, and a second user kept out. (The same list in Kamailio and gdispatch,
kamcmd's text next to ours: test_kamcmd_list.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

LIST = """\
# two sets
1 sip:127.0.0.1:5071 8 0 duid=gw1;weight=75 # Gateway 1
1 sip:127.0.0.1:5072 8 0 duid=gw2;weight=25
2 sip:127.0.0.1:5073
"""

SERVER = r'''
import json, signal, sys, time
import gevent, gevent.event
from gdispatch.control.server import ControlServer
from gdispatch.dispatcher.listfile import load_list

path, list_file = sys.argv[1], sys.argv[2]
token = sys.argv[3] if len(sys.argv) > 3 else None


class App:
    version = "0.0.1-test"
    call_load_routing = False
    sockets = None  # no listen addresses: socket attrs are checked for their form only

    def __init__(self):
        self.dlist = load_list(list_file)
        for d in self.dlist.destinations():
            d.address = (d.sip_uri.host, d.sip_uri.port or 5060)
        self.started_at = time.time()
        self.ping_active = True

    list_file = list_file

    def current_list(self):
        return self.dlist

    def reload(self, reason="reload requested"):
        self.dlist = load_list(list_file)

    def replace_list(self, text, reason):
        print("REPLACE", json.dumps([text, reason]), flush=True)

    def state_changed(self, dest, old_flags, reason):
        print("CHANGED", dest.uri, old_flags, dest.flags, reason, flush=True)

    def stats(self):
        return {"calls": {"active": 2}}


server = ControlServer(App(), None if path == "-" else path,
                       tcp_port=0 if token else None, token=token)
server.start()
stop = gevent.event.Event()
gevent.signal_handler(signal.SIGTERM, stop.set)
print("READY", server.path, server.tcp_address[1] if server.tcp_address else 0, flush=True)
stop.wait()
server.stop()
'''


@pytest.fixture
def run_dir():
    # Short (Unix socket paths are limited) and traversable by other users, so that only
    # the socket's own mode keeps them out.
    d = tempfile.mkdtemp(prefix="gdctl-", dir="/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def server(run_dir):
    """server(path="-"|PATH, token=None, env=None) -> (socket path, tcp port)."""
    procs = []
    script = run_dir / "server.py"
    script.write_text(SERVER)
    (run_dir / "d.list").write_text(LIST)

    def start(path: str | None = None, token: str | None = None, env: dict | None = None):
        path = str(run_dir / "control.sock") if path is None else path
        args = [sys.executable, str(script), path, str(run_dir / "d.list")] + ([token] if token else [])
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **(env or {})})
        procs.append(proc)
        line = proc.stdout.readline().split()
        if not line or line[0] != "READY":
            proc.kill()
            raise AssertionError(f"the control server did not start: {proc.stderr.read()}")
        return line[1], int(line[2])

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def gd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gdispatch", *args], capture_output=True, text=True, timeout=20,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def rpc(sock: str, *args: str) -> subprocess.CompletedProcess:
    return gd("rpc", "--socket", sock, *args)


def test_dispatcher_list_prints_a_tree_like_kamcmd(server):
    sock, _ = server()
    out = rpc(sock, "dispatcher.list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # Set 2 first: Kamailio prints its tree of sets children first.
    assert lines[:6] == ["{", "\tNRSETS: 2", "\tRECORDS: {", "\t\tSET: {", "\t\t\tID: 2", "\t\t\tTARGETS: {"]
    assert lines[-1] == "}"
    assert lines.count("\t\tSET: {") == 2 and lines.count("\t\t\t\tDEST: {") == 3
    assert "\t\t\t\t\tURI: sip:127.0.0.1:5071" in lines
    assert "\t\t\t\t\t\tBODY: duid=gw1;weight=75" in lines
    assert "\t\t\t\t\t\tAVG: 0" in lines  # LATENCY, a double as kamcmd prints one
    assert not [line for line in lines if "DESCRIPTION" in line or "IDX" in line]  # gdispatch's own: extended
    # What the benchmark's state reader takes from kamcmd: a URI: line, then its FLAGS: line.
    pairs = re.findall(r"URI: (\S+)\n\s*FLAGS: (\S+)", out.stdout)
    assert pairs == [("sip:127.0.0.1:5073", "AX"), ("sip:127.0.0.1:5071", "AP"), ("sip:127.0.0.1:5072", "AP")]
    extended = rpc(sock, "dispatcher.list", "extended").stdout
    assert "\t\t\t\t\tDESCRIPTION: Gateway 1\n" in extended and "\t\t\t\t\tIDX: 1\n" in extended


def test_json_output(server):
    sock, _ = server()
    out = rpc(sock, "dispatcher.list", "short", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["NRSETS"] == 2
    assert [t["DEST"]["FLAGS"] for t in data["RECORDS"][1]["SET"]["TARGETS"]] == ["AP", "AP"]
    assert "ATTRS" not in data["RECORDS"][1]["SET"]["TARGETS"][0]["DEST"]


def test_the_seeds_set_state_then_list(server):
    sock, _ = server()
    out = rpc(sock, "dispatcher.set_state", "dx", "1", "sip:127.0.0.1:5071")
    assert (out.returncode, out.stdout) == (0, "Ok. Dispatcher state updated.\n")
    flags = dict(re.findall(r"URI: (\S+)\n\s*FLAGS: (\S+)", rpc(sock, "dispatcher.list", "short").stdout))
    assert flags["sip:127.0.0.1:5071"] == "DX"
    assert rpc(sock, "dispatcher.set_duid_state", "ap", "1", "gw1").stdout == "Ok. Dispatcher state updated.\n"
    assert dict(re.findall(r"URI: (\S+)\n\s*FLAGS: (\S+)", rpc(sock, "dispatcher.list").stdout))[
        "sip:127.0.0.1:5071"] == "AP"


def test_set_state_by_idx_without_quoting(server):
    sock, _ = server()
    out = rpc(sock, "dispatcher.set_state", "ip", "1", "idx=1")  # as typed in a shell, no quotes needed
    assert (out.returncode, out.stdout) == (0, "Ok. Dispatcher state updated.\n")
    flags = re.findall(r"URI: (\S+)\n\s*FLAGS: (\S+)", rpc(sock, "dispatcher.list").stdout)
    assert flags[1:] == [("sip:127.0.0.1:5071", "AP"), ("sip:127.0.0.1:5072", "IP")]


def test_a_fault_prints_as_kamcmd_on_stdout_and_exits_0(server):
    # kamcmd prints "error: CODE - MESSAGE" on its standard output and exits 0: scripts
    # written for it look there. gdispatch's details go to stderr.
    sock, _ = server()
    out = rpc(sock, "dispatcher.set_state", "xx", "1", "all")
    assert (out.returncode, out.stdout) == (0, "error: 500 - Unknown State Value\n")
    assert out.stderr.startswith("  'xx': expected a digit 0-3")
    out = rpc(sock, "no.such.method")
    assert (out.returncode, out.stdout, out.stderr) == (0, "error: 500 - command no.such.method not found\n", "")
    out = rpc(sock, "dispatcher.remove", "1", "sip:127.0.0.1:5999")  # nothing to remove: Ok, as Kamailio
    assert (out.returncode, out.stdout) == (0, "Ok. Dispatcher destination removed.\n")


def test_with_json_a_fault_is_the_error_object_and_exit_status_1(server):
    sock, _ = server()
    out = rpc(sock, "--json", "dispatcher.set_state", "dx", "7", "all")
    assert out.returncode == 1
    assert json.loads(out.stdout) == {"code": 500, "message": "State Update Failed", "data": "no set 7"}


def test_reload_of_a_bad_list_prints_each_problem_once(server, run_dir):
    sock, _ = server()
    (run_dir / "d.list").write_text(LIST + "1 sip:127.0.0.1:5074 x\n2 sip:127.0.0.1:5075 0 -5\n")
    out = rpc(sock, "dispatcher.reload")
    assert (out.returncode, out.stdout) == (0, "error: 500 - Reload Failed\n")
    problems = out.stderr.splitlines()
    assert len(problems) == 2 and len(set(problems)) == 2, out.stderr
    assert problems[0].startswith("  ") and "d.list:5: bad flags 'x'" in problems[0]
    assert "d.list:6: bad priority '-5'" in problems[1]


def test_numbers_travel_as_numbers_and_text_stays_text(server):
    sock, _ = server()
    out = rpc(sock, "dispatcher.hash", "10", "alice", "example.com")
    assert (out.returncode, out.stdout) == (0, "{\n\thashid: 1442294598\n\tslot: 8\n}\n")
    assert rpc(sock, "dispatcher.hash", "10", "s:5060").stdout == rpc(sock, "dispatcher.hash", "10", "5060").stdout


def test_add_with_the_seeds_arguments_reaches_the_list_file(server, run_dir):
    sock, _ = server()
    out = rpc(sock, "dispatcher.add", "1", "sip:mg3:5060", "0", "0", "", "Media Gateway 3", "1")
    assert (out.returncode, out.stdout) == (0, "Ok. Dispatcher destination added.\n")
    assert (run_dir / "d.list").read_text() == LIST.replace(
        "1 sip:127.0.0.1:5072 8 0 duid=gw2;weight=25\n",
        "1 sip:127.0.0.1:5072 8 0 duid=gw2;weight=25\n1 sip:mg3:5060 0 0 # Media Gateway 3\n")


def test_no_socket_exits_2_and_says_where_it_looked(run_dir):
    missing = str(run_dir / "nothing.sock")
    out = rpc(missing, "core.version")
    assert out.returncode == 2
    assert f"{missing}: no such socket" in out.stderr
    assert "--socket PATH" in out.stderr and "GDISPATCH_SOCKET" in out.stderr


def test_the_client_finds_the_servers_default_socket(server, run_dir):
    env = {"RUNTIME_DIRECTORY": str(run_dir / "rt"), "GDISPATCH_SOCKET": ""}
    sock, _ = server("-", env=env)
    assert sock == str(run_dir / "rt" / "control.sock")
    out = gd("rpc", "core.version", env=env)
    assert (out.returncode, out.stdout) == (0, f"gdispatch 0.0.1-test ({os.uname().machine}/linux)\n")
    uptime = gd("rpc", "core.uptime", env=env).stdout.splitlines()
    assert [line.split(":")[0] for line in uptime] == ["{", "\tnow", "\tup_since", "\tuptime", "}"]


def test_tcp_port_with_a_token(server, run_dir):
    token = "a-long-enough-token-for-tests"
    _, port = server(token=token)
    token_file = run_dir / "token"
    token_file.write_text(token + "\n")
    out = gd("rpc", "--tcp", f"127.0.0.1:{port}", "--token-file", str(token_file), "stats")
    assert (out.returncode, out.stdout) == (0, "{\n\tcalls: {\n\t\tactive: 2\n\t}\n}\n")
    out = gd("rpc", "--tcp", f"127.0.0.1:{port}", "stats", env={"GDISPATCH_RPC_TOKEN": token})
    assert out.returncode == 0
    out = gd("rpc", "--tcp", f"127.0.0.1:{port}", "stats", env={"GDISPATCH_RPC_TOKEN": "wrong"})
    assert (out.returncode, out.stdout.splitlines()[0]) == (0, "error: -32001 - Unauthorized")


CONNECT_AS_OTHER_USER = r'''
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("REFUSED", type(e).__name__)
    sys.exit(0)
try:
    s.sendall(b'{"jsonrpc":"2.0","method":"core.version","id":1}\n')
    answer = s.recv(4096).decode().strip()
except (ConnectionResetError, BrokenPipeError):  # closed before or after the write
    answer = ""
print("ANSWER", answer or "<closed>")
'''


def _as_nobody(args: list[str]) -> subprocess.CompletedProcess:
    if shutil.which("setpriv"):
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    else:
        prefix = ["runuser", "-u", "nobody", "--"]
    return subprocess.run(prefix + args, capture_output=True, text=True, timeout=20)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user (nobody) needs root")
def test_another_user_cannot_connect(server, run_dir):
    sock, _ = server()
    # A Python another user can run (the test's may live under /root), stdlib only.
    python = shutil.which("python3", path="/usr/bin:/usr/local/bin:/bin") or sys.executable
    client = run_dir / "client.py"
    client.write_text(CONNECT_AS_OTHER_USER)
    os.chmod(client, 0o644)
    out = _as_nobody([python, str(client), sock])
    assert out.stdout.strip() == "REFUSED PermissionError", out.stderr
    # Even with the mode widened by hand, the server serves only its own user (and root).
    os.chmod(sock, 0o666)
    out = _as_nobody([python, str(client), sock])
    assert out.stdout.strip() == "ANSWER <closed>", out.stderr
    assert rpc(sock, "core.version").returncode == 0  # root still gets in
