"""TCP on a public address, with a real gdispatch process on the loopback: the caps on
connections (total and per source), the idle and message deadlines, the 413 of an
oversized message, and the cap fitted to the open-files limit (gdispatch.tcplimits)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from tests.support.wait import wait_for

from . import harness

HOST = "127.0.0.1"
LIST = "1 sip:127.0.0.1:9 0 0 duid=gw1\n"
BOTH = ("udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}")


def _config(**tcp) -> str:
    return "[probing]\ninterval = 0\n[tcp]\n" + "".join(f"{k} = {v}\n" for k, v in tcp.items())


def _stats(p) -> dict:
    out = p.rpc("stats", json_out=True, timeout=10)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _wait_stat(p, key: str, value: int, within: float = 5.0) -> dict:
    """The stats once `key` is `value` (the test fails after `within` seconds)."""
    return wait_for(lambda: (lambda st: st.get(key) == value and st)(_stats(p)), within, 0.05,
                    message=lambda: _stats(p))


def _connect(port: int, source_ip: str = HOST) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=5, source_address=(source_ip, 0))


def _connect_or_reset(port: int, source_ip: str = HOST) -> socket.socket | None:
    """A connection the proxy may refuse: None when its reset came before connect() returned."""
    try:
        return _connect(port, source_ip)
    except ConnectionResetError:
        return None


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """True when the proxy closes (or resets) `s` within `seconds`, whatever it sends first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not s.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def _options(port: int) -> bytes:
    return harness.build_request("OPTIONS", f"sip:{HOST}:{port}", local_port=9, transport="TCP")


def _read_response(s: socket.socket, within: float = 3.0) -> int | None:
    """The status of the first response on `s` (None if none came within `within`)."""
    deadline = time.monotonic() + within
    buf = b""
    while b"\r\n\r\n" not in buf and time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except (OSError, TimeoutError):
            break
        if not chunk:
            break
        buf += chunk
    return harness.status_code(buf)


def test_a_source_at_its_cap_is_refused_while_another_source_udp_and_rpc_are_served(proxy):
    p = proxy(LIST, config=_config(max_connections_per_source=5), listen=BOTH)
    held = [_connect(p.port) for _ in range(5)]
    try:
        assert _wait_stat(p, "tcp_connections_open", 5)["tcp_connections_open"] == 5
        extra = _connect_or_reset(p.port)  # the kernel completes it; the proxy accepts and closes it
        if extra is not None:
            assert _closed_within(extra, 3.0)
            extra.close()
        # Another source (127.0.0.2) still gets in and is answered over TCP.
        assert harness.sip_options(p.port, transport="tcp", source_ip="127.0.0.2", timeout=3.0) == 200
        assert harness.sip_options(p.port, transport="udp", timeout=3.0) == 200
        st = _stats(p)
        assert st["tcp_refused_per_source"] == 1 and st["tcp_refused_max_connections"] == 0
        # The connections held are still served.
        held[0].sendall(_options(p.port))
        assert _read_response(held[0]) == 200
    finally:
        for s in held:
            s.close()


def test_a_connection_trickling_a_message_is_closed_at_the_message_deadline(proxy):
    p = proxy(LIST, config=_config(message_timeout=1, idle_timeout=30), listen=BOTH)
    message = _options(p.port)
    s = _connect(p.port)
    started = time.monotonic()
    closed = False
    try:
        for i in range(len(message)):  # a byte every 0.1 s: the whole message would take 25 s
            try:
                s.sendall(message[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if _closed_within(s, 0.1):
                closed = True
                break
            if time.monotonic() - started > 6:
                break
    finally:
        s.close()
    assert closed, "still open after 6 s"
    assert _wait_stat(p, "tcp_closed_slow", 1)["tcp_closed_slow"] == 1


def test_a_connection_idle_after_its_last_message_is_closed_even_if_bytes_trickle_in(proxy):
    p = proxy(LIST, config=_config(idle_timeout=1, message_timeout=30), listen=BOTH)
    silent, trickling = _connect(p.port), _connect(p.port)
    try:
        for s in (silent, trickling):
            s.sendall(_options(p.port))
            assert _read_response(s) == 200
        assert _closed_within(silent, 5.0)
        started = time.monotonic()
        closed = False
        for byte in b"OPTIONS sip:x SIP/2.0\r\n":  # the start of a message, a byte every 0.2 s
            try:
                trickling.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if _closed_within(trickling, 0.2):
                closed = True
                break
        assert closed and time.monotonic() - started < 4.5
    finally:
        silent.close()
        trickling.close()
    st = _wait_stat(p, "tcp_closed_idle", 2)
    assert st["tcp_closed_idle"] == 2 and st["tcp_closed_slow"] == 0


def test_an_oversized_message_gets_413_then_the_connection_closes(proxy):
    p = proxy(LIST, config=_config(), listen=BOTH)
    head = _options(p.port).replace(b"Content-Length: 0", b"Content-Length: 70000")
    s = _connect(p.port)
    try:
        s.sendall(head + b"x" * 1000)  # the start of a body that would go past 65,535 bytes
        assert _read_response(s) == 413
        assert _closed_within(s, 3.0)
    finally:
        s.close()
    assert _stats(p)["tcp_oversized"] == 1


def _open_files(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


def test_the_total_cap_fits_the_open_files_limit_and_leaves_room_for_udp_and_rpc(proxy, tmp_path):
    # A soft limit of 64 under a hard one of 400: the proxy raises it to 400 and keeps
    # 128 descriptors for the rest, so it takes 272 connections and refuses the others
    # instead of running out of descriptors.
    p = proxy(LIST, config=_config(max_connections_per_source=2048), listen=BOTH, open_files=(64, 400))
    assert _open_files(p.pid) == (400, 400)
    assert "capped at 272" in p.log()
    socks = []
    try:
        for i in range(320):
            if (s := _connect_or_reset(p.port, f"127.0.0.{2 + i % 4}")) is not None:
                socks.append(s)
        st = _wait_stat(p, "tcp_connections_open", 272)
        assert st["tcp_connections_open"] == 272
        assert _wait_stat(p, "tcp_refused_max_connections", 48)["tcp_refused_max_connections"] == 48
        assert harness.sip_options(p.port, transport="udp", timeout=3.0) == 200
        out = p.rpc("core.uptime", timeout=10)
        assert out.returncode == 0, out.stderr
    finally:
        for s in socks:
            s.close()


def test_with_two_workers_each_enforces_half_of_the_per_source_cap(proxy):
    p = proxy(LIST, config=_config(max_connections_per_source=4), listen=BOTH, args=["--workers", "2"])
    socks = [s for _ in range(10) if (s := _connect_or_reset(p.port)) is not None]
    try:
        # (the other worker reports its counters every second)
        st = wait_for(lambda: (lambda x: x["tcp_connections_open"] + x["tcp_refused_per_source"] == 10 and x)(
            _stats(p)), 6, 0.1, message=lambda: _stats(p))
        # Each worker holds at most 2 (the kernel spreads the 10 over both).
        assert 2 <= st["tcp_connections_open"] <= 4, st
        assert st["tcp_connections_open"] + st["tcp_refused_per_source"] == 10, st
    finally:
        for s in socks:
            s.close()
