"""The control socket of a real gdispatch process under a flood of idle local
connections: `gdispatch rpc` still answers (gdispatch.control)."""

from __future__ import annotations

import errno
import json
import socket
import time

IDLE = 1000


def _connect_all(path: str, n: int, within: float) -> list[socket.socket]:
    """Up to `n` connections to the Unix socket `path` that send nothing, within
    `within` seconds (a connect the kernel's full queue refuses is tried again)."""
    socks: list[socket.socket] = []
    deadline = time.monotonic() + within
    while len(socks) < n and time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except OSError as e:
            s.close()
            if e.errno != errno.EAGAIN:
                raise
            time.sleep(0.002)
            continue
        socks.append(s)
    return socks


def test_rpc_answers_while_a_thousand_idle_connections_are_open(proxy):
    p = proxy("1 sip:127.0.0.1:9 0 0\n", config="[probing]\ninterval = 0\n")
    socks = _connect_all(str(p.socket_path), IDLE, within=10)
    try:
        out = p.rpc("core.uptime", json_out=True, timeout=10)
        assert out.returncode == 0, (len(socks), out.stdout, out.stderr)
        assert json.loads(out.stdout)["uptime"] >= 0
        assert len(socks) == IDLE  # all of them were taken, none waits in the kernel's queue
    finally:
        for s in socks:
            s.close()
    assert p.alive()
