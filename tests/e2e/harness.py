"""End-to-end test harness: gdispatch and SIPp as child processes, on 127.0.0.1 only.

* `Proxy` runs ``python -m gdispatch run`` with a dispatcher.list and a TOML file it writes,
  and waits until the proxy answers ``OPTIONS`` with 200.
* `Uas` runs one SIPp UAS (a "gateway", scenarios in ``tests/scenarios``) and reads its
  per-message counts (``-trace_counts``) after it stops.
* `run_uac` runs one bounded SIPp UAC load (``-m`` calls, ``-timeout``, plus a hard
  subprocess time limit) and returns its final statistics.
* `sip_options`, `build_request`, `free_port`: raw SIP over Python sockets.
* `RedisServer`: a redis-server without persistence, for the tests of a pair of nodes.

Every process is started here, is bounded in time, and is stopped by its PID.
"""

from __future__ import annotations

import csv
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import sipmsg
from tests.support.wait import wait_for

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "tests" / "scenarios"

# SIPp transports: "u1" one UDP socket, "t1" one TCP socket.
TRANSPORTS = {"u1": "udp", "t1": "tcp"}


def sipp_path() -> str | None:
    return shutil.which("sipp")


def require_sipp() -> str:
    path = sipp_path()
    if not path:
        raise RuntimeError(
            "SIPp is not installed (no `sipp` on PATH). `make test` installs it; by hand: "
            "apt-get install -y sip-tester"
        )
    return path


# --------------------------------------------------------------------------- ports

def _bind_ok(kind: str, port: int) -> bool:
    st = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    s = socket.socket(socket.AF_INET, st)
    try:
        s.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port(kind: str = "udp") -> int:
    """A port on 127.0.0.1 that is free now for "udp", "tcp" or "both" (same number)."""
    if kind not in ("udp", "tcp", "both"):
        raise ValueError(f"kind must be udp, tcp or both, not {kind!r}")
    first = "tcp" if kind == "tcp" else "udp"
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if first == "udp" else socket.SOCK_STREAM)
        try:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if kind == "both" and not _bind_ok("tcp", port):
            continue
        return port
    raise RuntimeError(f"no free {kind} port found on {HOST}")


def _port_bound(port: int, kind: str) -> bool:
    """True if some socket is bound to 127.0.0.1:port (a listening one for TCP), from /proc/net."""
    want = f"{port:04X}"
    states = ("0A",) if kind == "tcp" else ("07",)  # TCP_LISTEN; UDP sockets show TCP_CLOSE (07)
    for table in (f"/proc/net/{kind}",):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    addr, port_hex = parts[1].split(":")
                    if port_hex == want and parts[3] in states and addr in ("0100007F", "00000000"):
                        return True
        except OSError:
            return False
    return False


# --------------------------------------------------------------------------- raw SIP

def build_request(method: str, ruri: str, *, local_port: int, transport: str = "UDP",
                  call_id: str | None = None, branch: str | None = None, cseq: int = 1,
                  from_tag: str | None = None, to: str | None = None,
                  headers: Iterable[str] = (), body: bytes = b"") -> bytes:
    """A minimal well-formed request from 127.0.0.1:local_port (Via has ;rport), with a
    new Call-ID, branch and From tag unless given (tests.support.sipmsg for others)."""
    call_id = call_id or uuid.uuid4().hex
    branch = branch or "z9hG4bK" + uuid.uuid4().hex[:16]
    from_tag = from_tag or uuid.uuid4().hex[:8]
    return sipmsg.request(method, ruri, vias=f"SIP/2.0/{transport} {HOST}:{local_port};rport;branch={branch}",
                          from_=f"<sip:harness@{HOST}:{local_port}>", from_tag=from_tag, to=to or f"<{ruri}>",
                          call_id=call_id, cseq=cseq, headers=list(headers), body=body)


def status_code(data: bytes) -> int | None:
    """Status code of a SIP response, None for anything else."""
    m = re.match(rb"SIP/2\.0 (\d{3}) ", data)
    return int(m.group(1)) if m else None


def statuses_until(sock: socket.socket, status: int = 200, timeout: float = 3.0) -> list[int | None]:
    """Status codes of what `sock` receives (None for a request), until one is `status` or
    `timeout` seconds pass; the socket needs a timeout of its own (settimeout)."""
    codes: list[int | None] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and status not in codes:
        try:
            codes.append(status_code(sock.recvfrom(65535)[0]))
        except TimeoutError:
            pass
    return codes


def _check_loopback(host: str) -> None:
    if not (host.startswith("127.") or host.strip("[]") == "::1"):
        raise ValueError(f"refusing non-loopback address {host}")


def _udp_exchange(data: bytes, host: str, port: int, timeout: float, local_port: int | None = None,
                  retransmit: float | None = None) -> list[bytes]:
    """Send from a fresh UDP socket, collect datagrams until a final response or the timeout."""
    _check_loopback(host)
    out: list[bytes] = []
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((HOST, local_port or 0))
        deadline = time.monotonic() + timeout
        next_send = 0.0  # send at once
        while True:
            now = time.monotonic()
            if now >= deadline:
                return out
            resend = retransmit is not None and not out
            if now >= next_send and (next_send == 0.0 or resend):
                try:
                    s.sendto(data, (host, port))
                except OSError:
                    pass
                next_send = now + (retransmit or timeout)
            wake = min(deadline, next_send) if (retransmit is not None and not out) else deadline
            s.settimeout(max(0.001, wake - now))
            try:
                pkt = s.recv(65535)
            except OSError:  # timeout, or ICMP port unreachable after an earlier send
                continue
            out.append(pkt)
            code = status_code(pkt)
            if code is not None and code >= 200:
                return out
    finally:
        s.close()


def _tcp_exchange(data: bytes, host: str, port: int, timeout: float, source_ip: str | None = None) -> list[bytes]:
    _check_loopback(host)
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        s = socket.create_connection((host, port), timeout=timeout,
                                     source_address=(source_ip, 0) if source_ip else None)
    except OSError:
        return out
    buf = b""
    try:
        s.sendall(data)
        while time.monotonic() < deadline:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = s.recv(65535)
            except OSError:  # timeout or reset
                break
            if not chunk:
                break
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, rest = buf.split(b"\r\n\r\n", 1)
                m = re.search(rb"^(?:Content-Length|l)[ \t]*:[ \t]*(\d+)", head, re.MULTILINE | re.IGNORECASE)
                n = int(m.group(1)) if m else 0
                if len(rest) < n:
                    break
                msg, buf = head + b"\r\n\r\n" + rest[:n], rest[n:]
                out.append(msg)
                code = status_code(msg)
                if code is not None and code >= 200:
                    return out
    finally:
        s.close()
    return out


class Answerer:
    """A gateway: answers INVITE, BYE and OPTIONS with 200 and counts the requests; one
    that `rings` answers INVITE with 180 only, and CANCEL with 200 and 487. Each answer
    goes where its request came from (RFC 3261 §18.2.2 with `received`; SIPp's UAS
    answers a call's later requests where its first came from)."""

    def __init__(self, rings: bool = False):
        self.rings = rings
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.uri = f"sip:gw@{HOST}:{self.port}"
        self.received: list[bytes] = []
        self.sources: list[tuple[str, int]] = []  # where each of `received` came from
        self.invites: list[bytes] = []
        self.cancels: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                continue
            self.received.append(data)
            self.sources.append(addr)
            if data.startswith((b"INVITE ", b"BYE ", b"OPTIONS ", b"CANCEL ")):
                req = _sip().parse_message(data)
                headers = [b"Record-Route: " + v for v in req.get_all("record-route")]
                headers.append(f"Contact: <{self.uri}>".encode())
                tag = "gw%d" % self.port
                if req.method == "INVITE":
                    self.invites.append(data)
                    if self.rings:
                        self.sock.sendto(_sip().build_response(req, 180, "Ringing", to_tag=tag, headers=headers), addr)
                        continue
                elif req.method == "CANCEL":
                    self.cancels.append(data)
                    invite = _sip().parse_message(self.invites[-1])
                    self.sock.sendto(_sip().build_response(invite, 487, "Request Terminated", to_tag=tag), addr)
                self.sock.sendto(_sip().build_response(req, 200, "OK", to_tag=tag, headers=headers), addr)

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, (HOST, port))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _sip():
    """gdispatch's own SIP layer, to read and answer requests like a gateway would."""
    import gdispatch.sip

    return gdispatch.sip


# A dialog key the tests know (gdispatch.recordroute), to write the Route of a dialog as a
# caller copies it from the 200 without setting the dialog up first.
TEST_KEY_ID, TEST_KEY = "test", bytes(range(32))


def key_config(directory: Path | str) -> str:
    """A ``[security]`` table naming a key file with the test key, written in `directory`."""
    path = Path(directory) / "test-dialog.key"
    path.write_text(f"{TEST_KEY_ID} {TEST_KEY.hex()}\n")
    path.chmod(0o600)
    return f'[security]\nkey_file = "{path}"\n'


def signed_route(port: int, call_id: str, caller_tag: str, destination: str, host: str = HOST) -> str:
    """Our Route value for a dialog created by `caller_tag` and sent to `destination` (an
    IP address), signed with the test key."""
    from gdispatch.recordroute import Keyring, packed_address

    token = Keyring([(TEST_KEY_ID, TEST_KEY)]).token(call_id.encode(), caller_tag.encode(),
                                                    packed_address(destination))
    return f"<sip:{host}:{port};lr;gds={token.decode()}>"


def sip_options(port: int, host: str = HOST, timeout: float = 1.0, transport: str = "udp",
                source_ip: str | None = None) -> int | None:
    """Send ``OPTIONS sip:host:port`` (retransmitted every 0.2 s on UDP) and return the final
    status code, or None if nothing final came back within `timeout` seconds. `source_ip`
    (TCP): the loopback address the connection comes from (127.0.0.2...)."""
    if transport == "udp":
        lp = free_port("udp")
        msg = build_request("OPTIONS", f"sip:{host}:{port}", local_port=lp)
        replies = _udp_exchange(msg, host, port, timeout, local_port=lp, retransmit=0.2)
    else:
        if source_ip:
            _check_loopback(source_ip)
        msg = build_request("OPTIONS", f"sip:{host}:{port}", local_port=9, transport="TCP")
        replies = _tcp_exchange(msg, host, port, timeout, source_ip)
    for r in replies:
        code = status_code(r)
        if code is not None and code >= 200:
            return code
    return None


# --------------------------------------------------------------------------- processes

def _children(pid: int) -> list[int]:
    """All live descendants of pid, from /proc."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                parent[int(d)] = int(st[st.rfind(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out: list[int] = []
    frontier = [pid]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier and p not in out]
        out += frontier
    return out


def _stop_process(proc: subprocess.Popen, first_signal: int, grace_s: float) -> None:
    """Signal proc (by PID), wait grace_s, then SIGKILL it and any descendant still alive."""
    if proc.poll() is not None:
        return
    kids = _children(proc.pid)
    try:
        os.kill(proc.pid, first_signal)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)
    for k in kids:  # workers left behind by a parent that died
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no {path.name})"
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------- the proxy

class Proxy:
    """gdispatch under test, as a child process.

    ``listen`` entries may contain ``{port}``: it is replaced by `self.port`, a port free for
    UDP and TCP. The first ``udp:`` (else ``tcp:``) entry is where readiness is checked.
    The harness passes the list file with ``--list``; `config` is written as is to
    ``gdispatch.toml`` and passed with ``--config`` (None: no configuration file at all).
    """

    def __init__(self, tmp_path: Path | str, dispatcher_list: str, config: str | None = "",
                 listen: Sequence[str] = ("udp:127.0.0.1:{port}",), args: Sequence[str] = (),
                 *, port: int | None = None, ready_timeout: float = 15.0, env: dict | None = None,
                 open_files: tuple[int, int] | None = None):
        self.dir = Path(tmp_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port("both")
        self.listen = [x.format(port=self.port) for x in listen]
        for x in self.listen:
            _check_loopback(x.split(":", 1)[1].strip("[]").rsplit(":", 1)[0])
        self.list_path = self.dir / "dispatcher.list"
        self.socket_path = self.dir / "control.sock"
        self.config_path = self.dir / "gdispatch.toml"
        self.log_path = self.dir / "proxy.log"
        self.list_path.write_text(dispatcher_list)
        self.config = config
        if config is not None:
            self.config_path.write_text(config)
        self.args = list(args)
        self.ready_timeout = ready_timeout
        self.env = env
        self.open_files = open_files  # (soft, hard) RLIMIT_NOFILE of the proxy process
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "proxy not started"
        return self.proc.pid

    @property
    def cmd(self) -> list[str]:
        cmd = [sys.executable, "-m", "gdispatch", "run"]
        if self.config is not None:
            cmd += ["--config", str(self.config_path)]
        cmd += ["--list", str(self.list_path)]
        for x in self.listen:
            cmd += ["--listen", x]
        return cmd + self.args

    def _ready_check(self) -> tuple[str, str, int]:
        for want in ("udp", "tcp"):
            for x in self.listen:
                if x.startswith(want + ":"):
                    host, port = x.split(":", 1)[1].rsplit(":", 1)
                    return want, host if host.startswith("127.") else HOST, int(port)
        return "udp", HOST, self.port

    def start(self) -> Proxy:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        # Each proxy has its own control socket, so tests never meet another one's, and
        # its own dialog key file (gdispatch.recordroute), made at its first start.
        env["GDISPATCH_SOCKET"] = str(self.socket_path)
        env["STATE_DIRECTORY"] = str(self.dir)
        env.update(self.env or {})
        limits = self.open_files

        def set_limits() -> None:
            if limits is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, limits)

        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.cmd, cwd=self.dir, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         preexec_fn=set_limits if limits is not None else None)
        transport, host, port = self._ready_check()
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gdispatch exited with {self.proc.returncode} during start-up:\n"
                                   f"{' '.join(self.cmd)}\n{_tail(self.log_path)}")
            if sip_options(port, host=host, timeout=0.3, transport=transport) == 200:
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gdispatch did not answer OPTIONS sip:{host}:{port} ({transport}) with 200 "
                           f"within {self.ready_timeout:g} s:\n{' '.join(self.cmd)}\n{_tail(self.log_path)}")

    def rpc(self, *args: str, json_out: bool = False, timeout: float = 10.0) -> subprocess.CompletedProcess:
        """`gdispatch rpc METHOD ARGS...` against this proxy's control socket."""
        cmd = [sys.executable, "-m", "gdispatch", "rpc", "--socket", str(self.socket_path)]
        if json_out:
            cmd.append("--json")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)

    def rpc_json(self, *args: str) -> Any:
        """`gdispatch rpc --json METHOD ARGS...`, its answer decoded; a fault fails."""
        out = self.rpc(*args, json_out=True)
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)

    def states(self) -> dict[str, str]:
        """{duid or URI: FLAGS} from dispatcher.list over RPC."""
        out = self.rpc("dispatcher.list", json_out=True)
        if out.returncode:
            raise RuntimeError(out.stdout + out.stderr)  # with --json, the error object is on stdout
        tree = json.loads(out.stdout)
        states = {}
        for rec in tree["RECORDS"]:
            for target in rec["SET"]["TARGETS"]:
                d = target["DEST"]
                duid = (d.get("ATTRS") or {}).get("DUID") or d["URI"]
                states[duid] = d["FLAGS"]
        return states

    def stop(self) -> int | None:
        """SIGTERM, 5 s grace, then SIGKILL (by PID). Returns the exit code."""
        if self.proc is None:
            return None
        _stop_process(self.proc, signal.SIGTERM, 5.0)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL (by PID), its workers too: the end of a test that does not look at how
        the proxy stops (a SIGTERM drains for a second at least)."""
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGKILL, 5.0)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def send_udp(self, data: bytes, timeout: float = 2.0, local_port: int | None = None) -> list[bytes]:
        """Send one raw datagram to the proxy from a fresh socket (bound to `local_port` if
        given) and return every datagram received until a final response or `timeout`."""
        return _udp_exchange(data, HOST, self.port, timeout, local_port=local_port)

    def __enter__(self) -> Proxy:  # noqa: PYI034 - no typing.Self before Python 3.11
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- SIPp UAS

class Uas:
    """One SIPp UAS ("gateway") on 127.0.0.1, in its own directory.

    It exits by itself after `time_limit_s`. `stop()` sends SIGUSR1 (SIPp's soft exit, which
    writes a final row to the counts file), then SIGKILL after 5 s. The counts file is also
    rewritten every second (``-fd 1``), so `counts()` works while it runs, up to 1 s late.
    """

    def __init__(self, tmp_path: Path | str, scenario: str = "uas_ok.xml", *, port: int | None = None,
                 transport: str = "u1", time_limit_s: float = 300, extra_args: Sequence[str] = (),
                 name: str | None = None):
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {sorted(TRANSPORTS)}")
        self.transport = transport
        self.kind = TRANSPORTS[transport]
        self.port = port or free_port(self.kind)
        self.scenario = Path(scenario) if os.sep in scenario else SCENARIOS / scenario
        self.name = name or f"uas_{self.port}"
        self.dir = Path(tmp_path) / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.time_limit_s = time_limit_s
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "UAS not started"
        return self.proc.pid

    @property
    def uri(self) -> str:
        return f"sip:{HOST}:{self.port}" + (";transport=tcp" if self.kind == "tcp" else "")

    @property
    def cmd(self) -> list[str]:
        return [require_sipp(), "-sf", str(self.scenario), "-i", HOST, "-p", str(self.port),
                "-t", self.transport, "-nostdin", "-nd", "-trace_counts", "-fd", "1", "-trace_err",
                "-timeout", f"{int(self.time_limit_s)}s", *self.extra_args]

    def start(self, ready_timeout: float = 5.0) -> Uas:
        with open(self.dir / "sipp.out", "ab") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SIPp UAS {self.name} exited with {self.proc.returncode}:\n"
                                   f"{' '.join(self.cmd)}\n{self.log()[-3000:]}")
            if _port_bound(self.port, self.kind):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"SIPp UAS {self.name} did not bind {self.kind} {HOST}:{self.port}")

    def stop(self, grace_s: float = 5.0) -> int | None:
        """SIGUSR1 (SIPp's soft exit: it writes its final counts once its calls are over),
        `grace_s` to do so, then SIGKILL."""
        if self.proc is None:
            return None
        _stop_process(self.proc, signal.SIGUSR1, grace_s)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL now (a gateway that dies): counts stay as of the last 1 s dump."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return (self.dir / "sipp.out").read_text(errors="replace")
        except OSError:
            return ""

    def errors(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("*_errors.log")))

    def counts(self) -> dict[str, int]:
        """Message counts from the last row of SIPp's ``-trace_counts`` file.

        Keys: each received request method (``INVITE``, ``ACK``, ``BYE``, ``CANCEL``,
        ``OPTIONS``; 0 when the scenario does not have it), ``"<code>_sent"`` for each
        response code sent (e.g. ``"200_sent"``, ``"503_sent"``), ``retrans`` (retransmissions
        received plus sent), ``timeout`` and ``unexpected``.
        """
        return self._counts()[0]

    def counts_since(self, t: float, margin: float = 0.5) -> dict[str, int] | None:
        """`counts()` from a row SIPp wrote at least `margin` seconds after `t` (a
        time.time()), else None. So a test reads what a UAS had received by `t` without
        stopping it: a call the UAS still holds open (an INVITE never ACKed) would make
        its soft exit wait out the whole grace. Poll it with wait_for: a row comes every
        second. The margin leaves SIPp time to read a datagram sent just before `t`."""
        counts, written = self._counts()
        return counts if written >= t + margin else None

    def _counts(self) -> tuple[dict[str, int], float]:
        """(counts, when SIPp wrote the row they come from; 0 for no row)."""
        counts = {m: 0 for m in ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS")}
        counts.update(retrans=0, timeout=0, unexpected=0)
        files = sorted(self.dir.glob("*_counts.csv"), key=lambda p: p.stat().st_mtime)
        got = _last_row(files[-1]) if files else None
        if got is None:
            return counts, 0.0
        return _sum_row(*got, counts), _row_time(got[1])

    def __enter__(self) -> Uas:  # noqa: PYI034 - no typing.Self before Python 3.11
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _last_row(path: Path) -> tuple[list[str], list[str]] | None:
    """The header and the last complete row of a SIPp CSV (a row SIPp is still writing,
    shorter than the header, gives way to the one before it); None before any row."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter=";") if r]
    while len(rows) >= 2 and len(rows[-1]) < len(rows[0]):
        rows.pop()
    return (rows[0], rows[-1]) if len(rows) >= 2 else None


def _row_time(row: list[str]) -> float:
    """When SIPp wrote a row of a counts CSV, from the epoch seconds that end its first
    field (``2026-12-04<TAB>04:11:24.704258<TAB>1796357484.704258``)."""
    try:
        return float(row[0].rsplit("\t", 1)[-1])
    except ValueError:
        return 0.0


def parse_counts(path: Path, counts: dict[str, int] | None = None) -> dict[str, int]:
    """Sum the last row of a SIPp counts CSV (headers like ``1_INVITE_Recv``, ``4_200_Sent``)."""
    got = _last_row(path)
    return _sum_row(*got, counts or {}) if got else dict(counts or {})


def _sum_row(header: list[str], row: list[str], counts: dict[str, int]) -> dict[str, int]:
    counts = dict(counts)
    for name, value in zip(header, row):
        m = re.fullmatch(r"\d+_(.+)_(Recv|Sent|Retrans|Timeout|Unexp)", name)
        if not m or not value.strip().isdigit():
            continue
        what, kind = m.groups()
        n = int(value)
        if kind == "Recv":
            counts[what] = counts.get(what, 0) + n
        elif kind == "Sent":
            counts[f"{what}_sent"] = counts.get(f"{what}_sent", 0) + n
        elif kind == "Retrans":
            counts["retrans"] = counts.get("retrans", 0) + n
        elif kind == "Timeout":
            counts["timeout"] = counts.get("timeout", 0) + n
        else:
            counts["unexpected"] = counts.get("unexpected", 0) + n
    return counts


def dispatcher_list(*targets: Uas | str, setid: int = 1, attrs: Sequence[str] | None = None) -> str:
    """A Kamailio dispatcher.list text, one line per UAS (or URI): ``1 sip:127.0.0.1:P 0 0 duid=gwN``."""
    lines = []
    for i, t in enumerate(targets):
        uri = t.uri if isinstance(t, Uas) else t
        a = attrs[i] if attrs else f"duid=gw{i + 1}"
        lines.append(f"{setid} {uri} 0 0 {a}".rstrip())
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- SIPp UAC

@dataclass
class UacResult:
    rc: int
    calls: int
    successful: int
    failed: int
    retransmissions: int
    created: int
    stdout: str
    stat: dict[str, str] = field(default_factory=dict)  # final row of the -trace_stat file
    errors: str = ""
    dir: Path | None = None
    timed_out: bool = False  # the subprocess time limit was hit

    @property
    def unfinished(self) -> int:
        return max(0, self.calls - self.successful - self.failed)

    def __str__(self) -> str:
        return (f"UAC rc={self.rc} calls={self.calls} ok={self.successful} failed={self.failed} "
                f"unfinished={self.unfinished} retrans={self.retransmissions} timed_out={self.timed_out}"
                + (f"\nerrors:\n{self.errors[-2000:]}" if self.errors else ""))


def run_uac(target: str, scenario: str = "uac.xml", *, calls: int, rate: int, transport: str = "u1",
            timeout_s: float, extra_args: Sequence[str] = (), workdir: Path | str | None = None,
            service: str = "service", recv_timeout_ms: int | None = None,
            local_port: int | None = None) -> UacResult:
    """Run a SIPp UAC to completion: `calls` calls (-m) at `rate` per second against
    ``target`` ("127.0.0.1:PORT"), SIPp's own limit `timeout_s` (-timeout), plus a hard
    subprocess limit of timeout_s + 15 s. Files go to `workdir` (default: a new temp dir)."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {sorted(TRANSPORTS)}")
    _check_loopback(target.rsplit(":", 1)[0])
    wd = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="gdispatch-uac-"))
    wd.mkdir(parents=True, exist_ok=True)
    scen = Path(scenario) if os.sep in scenario else SCENARIOS / scenario
    stat_path = wd / "stat.csv"
    if stat_path.exists():
        stat_path.unlink()
    for old in wd.glob("*_errors.log"):
        old.unlink()
    lport = local_port or free_port(TRANSPORTS[transport])
    rt = recv_timeout_ms if recv_timeout_ms is not None else int(min(8.0, timeout_s) * 1000)
    cmd = [require_sipp(), target, "-sf", str(scen), "-s", service, "-i", HOST, "-p", str(lport),
           "-t", transport, "-m", str(calls), "-r", str(rate), "-rp", "1000",
           "-nostdin", "-nd", "-max_retrans", "5", "-recv_timeout", f"{rt}ms",
           "-timeout", f"{max(1, round(timeout_s))}s", "-timeout_error",
           "-trace_stat", "-stf", str(stat_path), "-fd", "1", "-trace_err"]
    if "-l" not in extra_args:
        cmd += ["-l", str(max(1000, rate))]
    cmd += list(extra_args)
    timed_out = False
    with open(wd / "uac.out", "wb") as out:
        proc = subprocess.Popen(cmd, cwd=wd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            proc.wait(timeout=timeout_s + 15)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_process(proc, signal.SIGUSR1, 3.0)
    stdout = (wd / "uac.out").read_text(errors="replace")
    stat = _last_stat_row(stat_path)

    def num(key: str) -> int:
        try:
            return int(stat.get(key, "0") or 0)
        except ValueError:
            return 0

    errors = "".join(p.read_text(errors="replace") for p in sorted(wd.glob("*_errors.log")))
    return UacResult(rc=proc.returncode, calls=calls, successful=num("SuccessfulCall(C)"),
                     failed=num("FailedCall(C)"), retransmissions=num("Retransmissions(C)"),
                     created=num("OutgoingCall(C)"), stdout=stdout, stat=stat, errors=errors, dir=wd,
                     timed_out=timed_out)


def _last_stat_row(path: Path) -> dict[str, str]:
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f, delimiter=";") if r]
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1]))


class RedisServer:
    """redis-server on 127.0.0.1:`port`, without persistence, stopped by its PID."""

    def __init__(self, port: int, workdir):
        self.port = port
        self.dir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        assert exe
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        wait_for(self.answers, 5.0, message="redis-server answers PING")
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
