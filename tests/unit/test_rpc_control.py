"""The control server in-process under gevent: where the socket is and who may use it,
stale and live sockets, line framing, bad input, the token-protected TCP port, and the
client against it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import time
from functools import partial

import gevent
import pytest
from gevent import socket as gsocket

from gdispatch.control import paths
from gdispatch.control import server as control_server
from gdispatch.control.client import ConnectError, request
from gdispatch.control.jsonrpc import RpcError, handle_line
from gdispatch.control.methods import call
from gdispatch.control.server import ControlError, ControlServer
from gdispatch.dispatcher.listfile import parse_list

TOKEN = "s3cret-token-0123456789"


class Api:
    version = "1.2.3"
    sockets = None  # socket attrs checked for their form only

    def __init__(self):
        self.dlist = parse_list("1 sip:127.0.0.1:5071 0 0 duid=a\n1 sip:127.0.0.1:5072\n", "t.list")
        self.started_at = time.time()
        self.ping_active = True
        self.changes = []

    def current_list(self):
        return self.dlist

    list_file = "t.list"

    def reload(self, reason="reload requested"):
        raise RuntimeError("disk on fire")  # a bug in the application: must not kill the server

    def replace_list(self, text, reason):
        pass

    def state_changed(self, dest, old_flags, reason):
        self.changes.append((dest.uri, reason))

    def stats(self):
        return {"calls": 1}


@pytest.fixture
def short_dir():
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="gdc-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def servers():
    started: list[ControlServer] = []

    def start(path, api=None, **kw) -> ControlServer:
        s = ControlServer(api or Api(), path, **kw)
        s.start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


class Conn:
    """A gevent client connection speaking lines."""

    def __init__(self, address, family=socket.AF_UNIX):
        self.sock = gsocket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(address)
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                rest, self.buf = self.buf, b""
                return rest
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def call(self, method, params=None, req_id=1, **extra) -> dict:
        req = {"jsonrpc": "2.0", "method": method, "params": params or [], "id": req_id, **extra}
        self.send(json.dumps(req).encode() + b"\n")
        return json.loads(self.line())

    def closed(self) -> bool:
        return self.sock.recv(1) == b""

    def close(self):
        self.sock.close()


def in_thread(fn, *args, **kw):
    """Run the blocking client in a thread so the hub keeps serving."""
    return gevent.get_hub().threadpool.apply(fn, args, kw)


# -- where the socket is, and who may use it -----------------------------------------------------------


def test_socket_is_born_0600_in_a_new_0700_directory(short_dir, servers):
    path = os.path.join(short_dir, "run", "control.sock")
    umask = os.umask(0o022)
    try:
        servers(path)
        assert os.umask(0o022) == 0o022  # restored after bind
    finally:
        os.umask(umask)
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert Conn(path).call("core.version")["result"].startswith("gdispatch 1.2.3")


def test_a_stale_socket_file_is_removed(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays; nobody listens
    servers(path)
    assert Conn(path).call("dispatcher.ping_active")["result"] == {"OldPingState": 1}


def test_a_second_server_on_a_live_socket_is_refused(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    servers(path)
    with pytest.raises(ControlError, match="another process .* is listening on"):
        ControlServer(Api(), path).start()
    assert Conn(path).call("core.version")["result"]  # the first one still serves


def test_something_else_at_the_path_is_not_replaced(short_dir):
    path = os.path.join(short_dir, "c.sock")
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(Api(), path).start()
    assert open(path).read() == "precious"


@pytest.mark.parametrize("how", ["world-writable", "symlink", "other-owner"])
def test_an_unsafe_directory_is_refused(short_dir, how):
    d = os.path.join(short_dir, "run")
    os.mkdir(d)
    if how == "world-writable":
        os.chmod(d, 0o777)
        expected = "writable by other users"
    elif how == "symlink":
        os.rename(d, d + ".real")
        os.symlink(d + ".real", d)
        expected = "not a directory"
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to give a directory to another user")
        os.chown(d, 65534, 65534)
        expected = "belongs to uid 65534"
    with pytest.raises(ControlError, match=expected):
        ControlServer(Api(), os.path.join(d, "c.sock")).start()


def test_a_sticky_shared_directory_is_fine(short_dir, servers):
    os.chmod(short_dir, 0o1777)  # like /tmp
    servers(os.path.join(short_dir, "c.sock"))


def test_stop_removes_the_socket_but_not_a_successors(short_dir):
    path = os.path.join(short_dir, "c.sock")
    s = ControlServer(Api(), path)
    s.start()
    s.stop()
    assert not os.path.exists(path)
    s.start()
    os.unlink(path)  # another process took the path meanwhile
    successor = ControlServer(Api(), path)
    successor.start()
    s.stop()
    assert os.path.exists(path)
    successor.stop()


# -- framing and bad input ------------------------------------------------------------------------------


def test_many_requests_on_one_connection_in_order(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    servers(path)
    c = Conn(path)
    c.send(b'{"jsonrpc":"2.0","method":"core.version","id":1}\n'
           b'{"jsonrpc":"2.0","method":"dispatcher.ping_active","params":[0],"id":"two"}\n')
    first, second = json.loads(c.line()), json.loads(c.line())
    assert first["id"] == 1 and first["result"].startswith("gdispatch")
    assert second == {"jsonrpc": "2.0", "id": "two", "result": {"NewPingState": 0, "OldPingState": 1}}


def test_a_request_split_across_writes_is_reassembled(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    servers(path)
    c = Conn(path)
    c.send(b'{"jsonrpc":"2.0","meth')
    gevent.sleep(0.05)
    c.send(b'od":"stats","id":7}\n')
    assert json.loads(c.line()) == {"jsonrpc": "2.0", "id": 7, "result": {"calls": 1}}


def test_malformed_json_is_a_parse_error_and_the_connection_survives(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    servers(path)
    c = Conn(path)
    c.send(b"{this is not json\n")
    err = json.loads(c.line())
    assert err["id"] is None and err["error"]["code"] == -32700
    c.send(b"\xff\xfe\n")
    assert json.loads(c.line())["error"]["code"] == -32700
    c.send(b'"just a string"\n')
    assert json.loads(c.line())["error"]["code"] == -32600
    assert c.call("stats")["result"] == {"calls": 1}


def test_an_exception_in_a_method_is_an_error_and_the_server_keeps_serving(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    servers(path)
    c = Conn(path)
    err = c.call("dispatcher.reload")["error"]
    assert err["code"] == -32603 and "disk on fire" in err["data"]
    assert c.call("stats")["result"] == {"calls": 1}
    assert Conn(path).call("stats")["result"] == {"calls": 1}


def test_a_too_big_request_gets_an_error_and_the_connection_is_closed(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    servers(path, max_request_bytes=4096)
    c = Conn(path)
    c.send(b'{"jsonrpc":"2.0","method":"stats","params":["' + b"x" * 50000)
    err = json.loads(c.line())
    assert err["error"]["message"] == "Request too large"
    assert c.closed()
    assert Conn(path).call("stats")["result"] == {"calls": 1}


def test_a_big_request_line_with_its_newline_is_refused_too(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    servers(path, max_request_bytes=100)
    c = Conn(path)
    c.send(b'{"jsonrpc":"2.0","method":"stats","id":1,"pad":"' + b"y" * 200 + b'"}\n')
    assert json.loads(c.line())["error"]["message"] == "Request too large"


def test_a_last_request_without_newline_is_answered_at_eof(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    servers(path)
    c = Conn(path)
    c.send(b'{"jsonrpc":"2.0","method":"stats","id":3}')
    c.sock.shutdown(socket.SHUT_WR)
    assert json.loads(c.line())["result"] == {"calls": 1}


def test_an_idle_connection_is_closed(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    servers(path, request_timeout=0.2)
    c = Conn(path)
    assert c.closed()


def test_bytes_trickled_in_do_not_extend_the_deadline_of_a_request(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    servers(path, request_timeout=0.5)
    c = Conn(path)
    request = b'{"jsonrpc":"2.0","method":"stats","id":1}\n'
    started = time.monotonic()
    with pytest.raises(OSError):  # EPIPE or a reset once the server has closed
        for byte in request:  # one byte every 0.1 s: the line would take 4 s
            c.send(bytes([byte]))
            gevent.sleep(0.1)
            assert time.monotonic() - started < 3
    # Nothing was answered: the connection closed before its line was complete.
    assert c.sock.recv(100) == b""


def test_the_next_request_on_a_connection_has_its_own_deadline(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    servers(path, request_timeout=0.4)
    c = Conn(path)
    for _ in range(3):
        gevent.sleep(0.25)  # within the deadline, counted from the last answer
        assert c.call("stats")["result"] == {"calls": 1}


def test_when_every_slot_is_taken_the_connection_idle_longest_makes_room(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    servers(path, max_connections=3)
    idle = []
    for _ in range(3):
        idle.append(Conn(path))
        gevent.sleep(0.01)  # accepted in this order
    newcomer = Conn(path)
    assert newcomer.call("stats")["result"] == {"calls": 1}  # at once: it does not wait for a slot
    assert idle[0].closed()
    assert idle[1].call("stats")["result"] == {"calls": 1}


class SlowApi(Api):
    def reload(self, reason="reload requested"):
        gevent.sleep(0.5)


def test_a_connection_whose_request_is_being_answered_is_not_closed_to_make_room(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    servers(path, api=SlowApi(), max_connections=2)
    busy = [Conn(path), Conn(path)]
    for c in busy:
        c.send(b'{"jsonrpc":"2.0","method":"dispatcher.reload","id":1}\n')
    gevent.sleep(0.1)
    assert Conn(path).closed()  # every slot answers a request: the newcomer goes
    for c in busy:
        assert "result" in json.loads(c.line())


class BigApi(Api):
    def stats(self):
        return {"blob": "x" * (16 * 1024 * 1024)}


def test_a_client_that_does_not_read_its_answer_loses_its_connection(short_dir, servers, monkeypatch):
    monkeypatch.setattr(control_server, "ANSWER_TIMEOUT", 0.3)
    path = os.path.join(short_dir, "c.sock")
    server = servers(path, api=BigApi())
    c = Conn(path)
    c.send(b'{"jsonrpc":"2.0","method":"stats","id":1}\n')  # and not read
    with gevent.Timeout(5):
        while not server._waiting:  # served...
            gevent.sleep(0.02)
        while server._waiting:  # ...and given up
            gevent.sleep(0.02)
    received = 0
    with gevent.Timeout(5):
        try:
            while data := c.sock.recv(1 << 20):
                received += len(data)
        except ConnectionResetError:
            pass
    assert received < 16 * 1024 * 1024  # the answer was cut when the connection closed
    assert "1.2.3" in Conn(path).call("core.version")["result"]


def handle(api, line: bytes):
    """A request line as the server hands it over, on the Unix socket (no token)."""
    return handle_line(line, partial(call, api))


def test_handle_line_notifications_batches_and_invalid_requests():
    api = Api()
    assert handle(api, b'{"jsonrpc":"2.0","method":"dispatcher.ping_active","params":[0]}') == (None, False)
    assert api.ping_active is False  # a notification runs, unanswered
    assert handle(api, b"   ") == (None, False)
    out, close = handle(api, b'[{"jsonrpc":"2.0","method":"stats","id":1},'
                                  b'{"jsonrpc":"2.0","method":"stats"},'
                                  b'{"jsonrpc":"2.0","method":"nope","id":2}]')
    answers = json.loads(out)
    assert [a["id"] for a in answers] == [1, 2]
    assert answers[1]["error"] == {"code": -32601, "message": "command nope not found"}
    assert json.loads(handle(api, b"[]")[0])["error"]["code"] == -32600
    for bad in (b'{"jsonrpc":"1.0","method":"stats","id":1}', b'{"method":5,"id":1}',
                b'{"jsonrpc":"2.0","method":"stats","id":{"x":1}}',
                b'{"jsonrpc":"2.0","method":"stats","params":"x","id":1}'):
        assert json.loads(handle(api, bad)[0])["error"]["code"] == -32600, bad
    # jsonrpc may be left out (typed by hand into socat); the answer says 2.0.
    assert json.loads(handle(api, b'{"method":"stats","id":1}')[0])["result"] == {"calls": 1}


def test_faults_carry_kamailios_message_and_the_details():
    out, _ = handle(Api(), b'{"jsonrpc":"2.0","method":"dispatcher.set_state","params":["dx",1,"sip:x"],"id":1}')
    assert json.loads(out)["error"] == {"code": 500, "message": "State Update Failed",
                                        "data": "no destination sip:x in set 1"}


# -- TCP with a token ----------------------------------------------------------------------------------------


def test_tcp_needs_a_long_enough_token_and_a_loopback_address(short_dir):
    path = os.path.join(short_dir, "c.sock")
    with pytest.raises(ControlError, match="needs a token"):
        ControlServer(Api(), path, tcp_port=0)
    with pytest.raises(ControlError, match="needs a token"):
        ControlServer(Api(), path, tcp_port=0, token="short")
    with pytest.raises(ControlError, match="loopback"):
        ControlServer(Api(), path, tcp_port=0, tcp_host="0.0.0.0", token=TOKEN)


def test_tcp_requests_without_the_right_token_are_refused(short_dir, servers):
    s = servers(os.path.join(short_dir, "c.sock"), tcp_port=0, token=TOKEN)
    host, port = s.tcp_address
    assert host == "127.0.0.1" and port > 0
    for extra in ({}, {"token": "wrong"}, {"token": TOKEN[:-1]}, {"token": 12}):
        c = Conn((host, port), socket.AF_INET)
        err = c.call("stats", **extra)["error"]
        assert (err["code"], err["message"]) == (-32001, "Unauthorized")
        assert c.closed()
    c = Conn((host, port), socket.AF_INET)
    assert c.call("stats", token=TOKEN)["result"] == {"calls": 1}
    assert c.call("core.version", token=TOKEN)["result"].startswith("gdispatch")


def test_the_unix_socket_needs_no_token_when_tcp_has_one(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    servers(path, tcp_port=0, token=TOKEN)
    assert Conn(path).call("stats")["result"] == {"calls": 1}


# -- the client ------------------------------------------------------------------------------------------------


def test_client_calls_and_raises_faults(short_dir, servers):
    path = os.path.join(short_dir, "c.sock")
    servers(path)
    assert in_thread(request, "dispatcher.hash", [10, "alice", "example.com"], socket_path=path) == {
        "hashid": 1442294598, "slot": 8}
    with pytest.raises(RpcError) as info:
        in_thread(request, "dispatcher.set_state", ["zz", 1, "all"], socket_path=path)
    assert (info.value.code, info.value.message) == (500, "Unknown State Value")


def test_client_over_tcp_sends_the_token(short_dir, servers):
    s = servers(os.path.join(short_dir, "c.sock"), tcp_port=0, token=TOKEN)
    assert in_thread(request, "stats", tcp=s.tcp_address, token=TOKEN) == {"calls": 1}
    with pytest.raises(RpcError, match="Unauthorized"):
        in_thread(request, "stats", tcp=s.tcp_address, token="nope")


def test_client_tries_the_default_places_and_says_where(short_dir, servers, monkeypatch):
    monkeypatch.delenv("GDISPATCH_SOCKET", raising=False)
    monkeypatch.setenv("RUNTIME_DIRECTORY", os.path.join(short_dir, "rt"))
    monkeypatch.setattr(paths, "SYSTEM_RUN_DIR", os.path.join(short_dir, "system"))
    monkeypatch.setattr(paths, "TMP_RUN_DIR", os.path.join(short_dir, "tmp-{uid}"))
    with pytest.raises(ConnectError) as info:
        in_thread(request, "stats")
    assert [where for where, _ in info.value.tried] == [
        os.path.join(short_dir, "rt", "control.sock"), os.path.join(short_dir, "system", "control.sock"),
        os.path.join(short_dir, f"tmp-{os.getuid()}", "control.sock")]
    assert all(why == "no such socket" for _, why in info.value.tried)
    # A server at the last place is found.
    servers(os.path.join(short_dir, f"tmp-{os.getuid()}", "control.sock"))
    assert in_thread(request, "stats") == {"calls": 1}


def test_client_reports_a_stale_socket(short_dir):
    path = os.path.join(short_dir, "c.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    with pytest.raises(ConnectError) as info:
        in_thread(request, "stats", socket_path=path)
    assert info.value.tried == [(path, "nobody listens there (a stale socket?)")]


# -- the default path -----------------------------------------------------------------------------------------


def test_runtime_directory_from_systemd_wins(monkeypatch):
    env = {"RUNTIME_DIRECTORY": "/run/gd-a:/run/gd-b"}
    assert paths.runtime_dir(env) == "/run/gd-a"
    assert paths.default_socket_path(env) == "/run/gd-a/control.sock"
    assert paths.default_socket_path({**env, "GDISPATCH_SOCKET": "/x/y.sock"}) == "/x/y.sock"
    assert paths.socket_candidates({**env, "GDISPATCH_SOCKET": "/x/y.sock"}) == ["/x/y.sock"]


def test_run_directory_when_writable_else_tmp(short_dir, monkeypatch):
    monkeypatch.setattr(paths, "SYSTEM_RUN_DIR", os.path.join(short_dir, "gdispatch"))
    assert paths.runtime_dir({}) == os.path.join(short_dir, "gdispatch")  # can be created
    os.mkdir(os.path.join(short_dir, "gdispatch"))
    assert paths.runtime_dir({}) == os.path.join(short_dir, "gdispatch")  # exists, writable
    monkeypatch.setattr(paths, "SYSTEM_RUN_DIR", "/nonexistent-parent/gdispatch")
    assert paths.runtime_dir({}) == f"/tmp/gdispatch-{os.getuid()}"
    assert paths.default_socket_path({}) == f"/tmp/gdispatch-{os.getuid()}/control.sock"


def test_candidates_follow_the_servers_order(monkeypatch):
    monkeypatch.setattr(paths, "SYSTEM_RUN_DIR", "/run/gdispatch")
    assert paths.socket_candidates({}) == ["/run/gdispatch/control.sock",
                                             f"/tmp/gdispatch-{os.getuid()}/control.sock"]
    assert paths.socket_candidates({"RUNTIME_DIRECTORY": "/run/gdispatch"}) == [
        "/run/gdispatch/control.sock", f"/tmp/gdispatch-{os.getuid()}/control.sock"]
