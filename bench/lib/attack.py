"""How one proxy stands up to attacks from one source on the loopback. Run through
bench/attack.sh, once per proxy (gdispatch with N workers, or Kamailio through PROXY_CMD).

Every scenario gets a new rig (2 SIPp UAS gateways, tests/scenarios/uas_ok.xml, and the
proxy in front of them with a dispatcher.list of them, round robin), except that
amplification, forged relay and control share one, so no scenario inherits another's
damage. The scenarios (SCENARIOS picks them, by name or number):

1. junk: a legitimate SIPp UAC (tests/scenarios/uac.xml) from 127.0.0.1 places CALLS
   calls at RATE calls/s while bench/lib/flood.py sends random non-SIP datagrams from
   127.0.0.66 for FLOOD_S seconds, pinned with taskset to FLOOD_CPU.
2. invite: the same, the flooder sending well-formed INVITEs to sip:NNNN@proxy, each a new
   call (an extension scanner).
3. tcp: first one connection that sends 70,000 bytes of a message without an end (what
   comes back); then bench/lib/tcphold.py opens up to TCP_HOLD idle connections from
   127.0.0.66 (several processes when one process's descriptor limit is lower), and while
   they are held: (a) OPTIONS over a new TCP connection from 127.0.0.1, (b) OPTIONS over
   UDP, (c) the control command, each with 5 s to answer; the connections held are
   counted at the end of the opening and 10 s later.
4. amp: one request of each refusal kind from its own UDP socket on 127.0.0.77 (the
   "forged" source, the victim of a reflection), every byte and datagram that comes back
   counted for AMP_WAIT seconds, all kinds at once.
5. relay: a BYE, an INVITE and an ACK inside a dialog that does not exist, routed through
   the proxy (Route: <sip:proxy;lr>) to a listening UDP socket on 127.0.0.5: does each
   reach it?
6. ctl: 1,000 idle connections to the control socket (gdispatch's Unix socket,
   Kamailio's ctl socket), then one control command, timed.

Writes result.txt (key=value, read by attack_summary.py) and one folder per scenario
under OUT. Every process is started here as a child, bounded in time, and stopped by PID.

Environment: PY, NAME, OUT, PROXY_CMD (Kamailio's start script; empty: gdispatch),
CHILDREN, WORKERS, GD_CONFIG, CALLS, RATE, FLOOD_S, FLOOD_RATE, FLOOD_CPU, TCP_HOLD, TCP_OPEN_S,
AMP_WAIT, CTL_IDLE, SCENARIOS, ALG.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import maxcps  # noqa: E402 - found through the sys.path set above

from tests.e2e import harness  # noqa: E402

LIB = Path(__file__).resolve().parent
FLOOD_SRC = "127.0.0.66"
FORGED_SRC = "127.0.0.77"
RELAY_HOST = "127.0.0.5"
ANSWER_S = 5.0
SETTLE_S = 3.0  # what "answers while attacked" allows: the brief's 5 s
# The counters that say what a proxy did with a flood (the whole set is saved to a file).
GDISPATCH_STATS = ("requests", "bad_messages_dropped", "overload_rejected", "no_destination", "dispatched")
KAMAILIO_STATS = ("rcv_requests", "err_requests", "drop_requests", "5xx_replies", "sent_replies")
SCENARIO_NAMES = ["junk", "invite", "tcp", "amp", "relay", "ctl"]
log = maxcps.log
env = maxcps.env


def status_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode("latin-1")[:80]


def code_of(data: bytes) -> int | None:
    return harness.status_code(data)


# ---------------------------------------------------------------------------------- the rig


class Rig:
    """2 SIPp UAS and the proxy in front of them, in `workdir`; stopped by PID."""

    def __init__(self, workdir: Path, life_s: float):
        self.dir = workdir
        self.life_s = life_s
        self.gateways: list[harness.Uas] = []
        self.proxy: harness.Proxy | maxcps.ExternalProxy | None = None
        self.external = os.environ.get("PROXY_CMD", "").strip()

    def start(self) -> Rig:
        for i in range(2):
            self.gateways.append(harness.Uas(self.dir, "uas_ok.xml", time_limit_s=self.life_s, name=f"uas{i + 1}",
                                             extra_args=maxcps.SIPP_BUFFERS).start())
        ds = harness.dispatcher_list(*self.gateways)
        alg = env("ALG", "4")
        if self.external:
            self.proxy = maxcps.ExternalProxy(self.dir / "proxy", self.external, ds, alg, int(env("CHILDREN", "1")))
        else:
            base = Path(env("GD_CONFIG", str(ROOT / "bench" / "compare.toml"))).read_text()
            sock = self.dir / "proxy" / "control.sock"
            # The control socket in the run directory: the scenarios time commands through it.
            config = base + f'\n[control]\nsocket = "{sock}"\n'
            self.proxy = harness.Proxy(self.dir / "proxy", ds, config=config,
                                       listen=["udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}"],
                                       args=["--algorithm", alg, "--workers", env("WORKERS", "1")],
                                       ready_timeout=30)
        self.proxy.start()
        # The attack starts on a proxy that has settled (its first pings to the gateways
        # answered), not on one still starting: its start-up is not what is measured.
        time.sleep(SETTLE_S)
        log(f"rig in {self.dir.name}: proxy pid {self.proxy.pid} on 127.0.0.1:{self.port} (udp+tcp), "
            f"UAS on {', '.join(str(g.port) for g in self.gateways)}")
        return self

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def control_path(self) -> str:
        if self.external:
            return str(self.dir / "proxy" / "kamailio_ctl")
        return str(self.proxy.socket_path)

    def control(self, timeout: float = ANSWER_S) -> tuple[bool, float, str]:
        """The operator's control command (core.uptime) through the proxy's control socket,
        with the operator's tool: (answered, seconds, what it printed or why not)."""
        if self.external:
            cmd = ["kamcmd", "-s", f"unix:{self.control_path()}", "core.uptime"]
        else:
            cmd = [sys.executable, "-m", "gdispatch", "rpc", "--socket", self.control_path(),
                   "--timeout", f"{timeout:g}", "core.uptime"]
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 2, check=False,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False, time.monotonic() - t0, "no answer (killed)"
        dt = time.monotonic() - t0
        text = (p.stdout.strip() or p.stderr.strip()).replace("\n", " ")[:120]
        return p.returncode == 0 and dt <= timeout, dt, text

    def stats(self, path: Path) -> dict[str, int]:
        """The proxy's own counters, saved to `path`; returns those that say what it did
        with a flood: gdispatch's (summed over workers when it gives them per worker),
        Kamailio's replies by class and dropped messages."""
        if self.external:
            cmd = ["kamcmd", "-s", f"unix:{self.control_path()}", "stats.get_statistics", "all"]
        else:
            cmd = [sys.executable, "-m", "gdispatch", "rpc", "--socket", self.control_path(), "--json", "stats"]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return {}
        path.write_text(p.stdout + p.stderr)
        found: dict[str, int] = {}
        if self.external:
            for m in re.finditer(r"^\s*([\w.]+):([\w.]+) = (\d+)", p.stdout, re.MULTILINE):
                if m.group(2) in KAMAILIO_STATS:
                    found[m.group(2)] = found.get(m.group(2), 0) + int(m.group(3))
            return found

        def walk(x: object) -> None:
            if isinstance(x, dict):
                for k, v in x.items():
                    if k in GDISPATCH_STATS and isinstance(v, int):
                        found[k] = found.get(k, 0) + v
                    else:
                        walk(v)
            elif isinstance(x, list):
                for v in x:
                    walk(v)

        try:
            walk(json.loads(p.stdout))
        except ValueError:
            pass
        return found

    def alive(self) -> bool:
        return self.proxy is not None and self.proxy.alive()

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for g in self.gateways:
            g.stop()


# ----------------------------------------------------------------------- kernel figures


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped at the sockets bound to 127.0.0.1:port (a full
    receive buffer), from /proc/net/udp's drops column."""
    want = f"0100007F:{port:04X}"
    total = 0
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[1] == want:
                total += int(parts[-1])
    return total


def tcp_established(port: int, remote_ips: set[str]) -> int:
    """Established TCP connections to 127.0.0.1:port from `remote_ips`, as the kernel
    sees them on the proxy's side (accepted or still in the accept queue)."""
    want = f"0100007F:{port:04X}"
    remotes = {socket.inet_aton(ip)[::-1].hex().upper() for ip in remote_ips}
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split(None, 4)
            if parts[1] == want and parts[3] == "01" and parts[2].split(":")[0] in remotes:
                n += 1
    return n


def tree_fds(pid: int) -> int:
    n = 0
    for p in [pid, *harness._children(pid)]:
        try:
            n += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return n


# ---------------------------------------------------------------------------- raw SIP


def request(method: str, ruri: str, host: str, port: int, *, headers: tuple[str, ...] | list[str] = (),
            cseq: str | None = None, to: str | None = None, call_id: bool = True,
            branch: str | None = None, max_forwards: int = 70, transport: str = "UDP") -> bytes:
    """A minimal request sent by host:port (Via with rport, so answers come back there)."""
    lines = [f"{method} {ruri} SIP/2.0",
             f"Via: SIP/2.0/{transport} {host}:{port};branch={branch or 'z9hG4bK' + uuid.uuid4().hex[:16]};rport",
             f"Max-Forwards: {max_forwards}",
             f"From: <sip:attack@{host}>;tag={uuid.uuid4().hex[:8]}",
             f"To: {to or '<' + ruri + '>'}"]
    if call_id:
        lines.append(f"Call-ID: {uuid.uuid4().hex}@{host}")
    lines += [f"CSeq: {cseq or '1 ' + method}", *headers, "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def in_dialog(method: str, sender: tuple[str, int], target: tuple[str, int], proxy: tuple[str, int]) -> bytes:
    """A request of a dialog that does not exist, loose-routed through the proxy to target."""
    th, tp = target
    branch = f"z9hG4bK-dlg-{method.lower()}-{uuid.uuid4().hex[:8]}"
    lines = [f"{method} sip:x@{th}:{tp} SIP/2.0",
             f"Via: SIP/2.0/UDP {sender[0]}:{sender[1]};branch={branch};rport",
             "From: <sip:a@127.0.0.1>;tag=1",
             f"To: <sip:x@{th}:{tp}>;tag=zz",
             f"Call-ID: dlg-{uuid.uuid4().hex[:8]}",
             f"CSeq: 1 {method}",
             "Max-Forwards: 70",
             f"Route: <sip:{proxy[0]}:{proxy[1]};lr>"]
    if method == "INVITE":
        lines.append(f"Contact: <sip:a@{sender[0]}:{sender[1]}>")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def udp_socket(host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    return s


def tcp_options(port: int, timeout: float = ANSWER_S) -> tuple[bool, float, str]:
    """OPTIONS sip:127.0.0.1:port over a new TCP connection: (a final response within
    `timeout`, seconds, its status line or what happened)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as e:
        return False, time.monotonic() - t0, f"connect: {e.strerror or e}"
    with s:
        msg = request("OPTIONS", f"sip:127.0.0.1:{port}", "127.0.0.1", s.getsockname()[1], transport="TCP")
        buf = b""
        try:
            s.sendall(msg)
            while time.monotonic() < deadline:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = s.recv(65536)
                if not chunk:
                    return False, time.monotonic() - t0, "closed by the proxy"
                buf += chunk
                for m in re.finditer(rb"SIP/2\.0 (\d{3}) [^\r\n]*", buf):
                    if int(m.group(1)) >= 200:
                        return True, time.monotonic() - t0, m.group(0).decode("latin-1")
        except socket.timeout:
            pass
        except OSError as e:
            return False, time.monotonic() - t0, f"{e.strerror or e}"
    return False, time.monotonic() - t0, "no answer"


def udp_options(port: int, timeout: float = ANSWER_S) -> tuple[bool, float, str]:
    t0 = time.monotonic()
    code = harness.sip_options(port, timeout=timeout)
    dt = time.monotonic() - t0
    return code is not None, dt, f"{code}" if code else "no answer"


def oversized(port: int, size: int = 70_000, wait: float = ANSWER_S) -> str:
    """One TCP connection sends `size` bytes of a request whose header never ends: what
    comes back (a status line, the proxy closing or resetting, or nothing)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    except OSError as e:
        return f"connect failed: {e.strerror or e}"
    with s:
        head = (f"INVITE sip:1000@127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/TCP 127.0.0.1:{s.getsockname()[1]};branch=z9hG4bK-big\r\n"
                "From: <sip:big@127.0.0.1>;tag=big\r\nTo: <sip:1000@127.0.0.1>\r\nCall-ID: big\r\n"
                "CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nX-Pad: ").encode()
        data = head + b"a" * (size - len(head))
        sent_all = "sent all"
        try:
            s.settimeout(wait)
            s.sendall(data)
        except socket.timeout:
            sent_all = "the proxy stopped reading"
        except OSError as e:
            return f"{errno.errorcode.get(e.errno, e)} while sending"
        buf = b""
        end = time.monotonic() + wait
        how = f"nothing within {wait:g} s, still open"
        try:
            while time.monotonic() < end:
                s.settimeout(max(0.01, end - time.monotonic()))
                chunk = s.recv(65536)
                if not chunk:
                    how = "then closed"
                    break
                buf += chunk
        except socket.timeout:
            pass
        except ConnectionResetError:
            how = "then reset"
        except OSError as e:
            how = f"then {errno.errorcode.get(e.errno, e)}"
        first = status_line(buf) if buf else "no response"
        return f"{first}; {how} ({sent_all})"


# ------------------------------------------------------------------------------ processes


def pinned(cmd: list[str]) -> list[str]:
    cpu = env("FLOOD_CPU", str((os.cpu_count() or 1) - 1))
    return (["taskset", "-c", cpu] if shutil.which("taskset") else []) + cmd


def start(cmd: list[str], out: Path) -> subprocess.Popen:
    with open(out, "ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def finish(proc: subprocess.Popen, wait_s: float) -> None:
    """Wait up to wait_s for proc to end by itself, then stop it by PID."""
    try:
        proc.wait(timeout=max(0.0, wait_s))
    except subprocess.TimeoutExpired:
        harness._stop_process(proc, signal.SIGTERM, 5.0)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------ scenarios


def scenario_flood(kind: str, out: Path, res: dict) -> None:
    calls, rate, flood_s = int(env("CALLS", "1500")), int(env("RATE", "50")), float(env("FLOOD_S", "30"))
    d = out / kind
    d.mkdir(parents=True, exist_ok=True)
    rig = Rig(d, life_s=calls / rate + flood_s + 120).start()
    try:
        flood_rate = env("FLOOD_RATE", "0")
        drops0, cpu0, t0 = udp_drops(rig.port), maxcps.tree_cpu_s([rig.proxy.pid]), time.monotonic()
        box0 = maxcps.box_busy_s()
        flood = start(pinned([sys.executable, str(LIB / "flood.py"), kind, "--src", FLOOD_SRC, "--dst", rig.target,
                              "--seconds", f"{flood_s:g}", "--rate", flood_rate, "--out", str(d / "flood.json")]),
                      d / "flood.out")
        log(f"{kind} flood from {FLOOD_SRC} for {flood_s:g} s (pid {flood.pid}, "
            f"{'as fast as it can' if float(flood_rate) <= 0 else flood_rate + '/s'}); {calls} calls at {rate}/s")
        time.sleep(1)  # the flood is at full rate before the first call
        uac = harness.run_uac(rig.target, "uac.xml", calls=calls, rate=rate, timeout_s=calls / rate + 30,
                              workdir=d / "uac", extra_args=(*maxcps.SIPP_BUFFERS, "-trace_counts"))
        finish(flood, flood_s + 10 - (time.monotonic() - t0))
        wall = time.monotonic() - t0
        fl = read_json(d / "flood.json")
        # Why the caller's calls failed: the error responses it got, and its receive timeouts
        # (a rejected call also ends on one: uac.xml waits for nothing after its ACK).
        st = rig.stats(d / "proxy_stats.txt")
        files = sorted((d / "uac").glob("*_counts.csv"))
        counts = harness.parse_counts(files[-1]) if files else {}
        got = [f"{k}:{v}" for k, v in sorted(counts.items()) if k.isdigit() and int(k) >= 300 and v]
        res.update({
            f"{kind}_calls": calls, f"{kind}_ok": uac.successful, f"{kind}_failed": uac.failed,
            f"{kind}_unfinished": uac.unfinished, f"{kind}_retrans": uac.retransmissions,
            f"{kind}_flood_sent": fl.get("sent", "NA"), f"{kind}_flood_rate": fl.get("rate", "NA"),
            f"{kind}_flood_errors": fl.get("errors", "NA"), f"{kind}_flood_replies": fl.get("replies", "NA"),
            f"{kind}_flood_reply_bytes": fl.get("reply_bytes", "NA"),
            f"{kind}_proxy_udp_drops": udp_drops(rig.port) - drops0,
            f"{kind}_proxy_cpu_pct": round(100 * (maxcps.tree_cpu_s([rig.proxy.pid]) - cpu0) / wall, 1),
            f"{kind}_proxy_alive": int(rig.alive()),
            f"{kind}_box_cpu_pct": round(100 * (maxcps.box_busy_s() - box0) / wall, 1),
            f"{kind}_caller_errors": ",".join(got) or "none",
            f"{kind}_caller_timeouts": counts.get("timeout", "NA"),
            f"{kind}_proxy_stats": ",".join(f"{k}:{v}" for k, v in st.items()) or "NA",
        })
        log(f"{kind}: " + " ".join(f"{k[len(kind) + 1:]}={v}" for k, v in res.items() if k.startswith(kind + "_")))
    finally:
        rig.stop()


def scenario_tcp(out: Path, res: dict) -> None:
    want = int(env("TCP_HOLD", "25000"))
    open_s = float(env("TCP_OPEN_S", "60"))
    d = out / "tcp"
    d.mkdir(parents=True, exist_ok=True)
    rig = Rig(d, life_s=open_s + 180).start()
    holders: list[subprocess.Popen] = []
    try:
        for name, fn in (("base_tcp", tcp_options), ("base_udp", udp_options)):
            ok, dt, what = fn(rig.port)
            res[f"tcp_{name}"] = f"{'yes' if ok else 'no'}/{dt:.2f}s"
        ok, dt, what = rig.control()
        res["tcp_base_ctl"] = f"{'yes' if ok else 'no'}/{dt:.2f}s"
        res["tcp_oversized"] = oversized(rig.port)
        log(f"tcp: 70,000-byte message without end: {res['tcp_oversized']}")
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        per = want if hard == resource.RLIM_INFINITY else max(1, hard - 200)
        nproc = max(1, math.ceil(want / per))
        res["tcp_asked"] = want
        res["tcp_holders"] = nproc
        res["tcp_holder_nofile"] = "unlimited" if hard == resource.RLIM_INFINITY else hard
        share = math.ceil(want / nproc)
        log(f"tcp: opening up to {want} connections from {FLOOD_SRC} in {nproc} process(es) of {share} "
            f"(RLIMIT_NOFILE hard {res['tcp_holder_nofile']}), at most {open_s:g} s")
        t0 = time.monotonic()
        for i in range(nproc):
            holders.append(start(pinned([sys.executable, str(LIB / "tcphold.py"), "--src", FLOOD_SRC,
                                         "--dst", rig.target, "--count", str(min(share, want - i * share)),
                                         "--open-s", f"{open_s:g}", "--hold-s", "60",
                                         "--status", str(d / f"hold{i}.json")]), d / f"hold{i}.out"))
        deadline = t0 + open_s + 20
        while time.monotonic() < deadline:
            sts = [read_json(d / f"hold{i}.json") for i in range(nproc)]
            if all(s.get("phase") in ("holding", "done") for s in sts) or not any(
                    h.poll() is None for h in holders):
                break
            time.sleep(0.5)
        opened = time.monotonic()
        sts = [read_json(d / f"hold{i}.json") for i in range(nproc)]
        res["tcp_open_s"] = round(opened - t0, 1)
        res["tcp_held_peak"] = tcp_established(rig.port, {FLOOD_SRC})
        res["tcp_client_held"] = sum(s.get("held", 0) for s in sts)
        res["tcp_client_peak"] = sum(s.get("peak", 0) for s in sts)
        res["tcp_stop_reasons"] = ",".join(s.get("stop_reason", "?") for s in sts)
        res["tcp_connect_failed"] = sum(s.get("failed", 0) for s in sts)
        res["tcp_connect_timed_out"] = sum(s.get("timed_out", 0) for s in sts)
        res["tcp_closed_by_proxy"] = sum(s.get("closed_by_peer", 0) for s in sts)
        errs: dict[str, int] = {}
        for s in sts:
            for k, v in s.get("errors", {}).items():
                errs[k] = errs.get(k, 0) + v
        res["tcp_connect_errors"] = ",".join(f"{k}:{v}" for k, v in sorted(errs.items())) or "none"
        res["tcp_proxy_fds"] = tree_fds(rig.proxy.pid)
        log(f"tcp: held {res['tcp_held_peak']} (proxy side), {res['tcp_client_held']} (client side) after "
            f"{res['tcp_open_s']} s; stop: {res['tcp_stop_reasons']}; proxy fds {res['tcp_proxy_fds']}")
        for name, fn in (("tcp", lambda: tcp_options(rig.port)), ("udp", lambda: udp_options(rig.port)),
                         ("ctl", rig.control)):
            ok, dt, what = fn()
            res[f"tcp_held_{name}"] = f"{'yes' if ok else 'no'}/{dt:.2f}s"
            res[f"tcp_held_{name}_said"] = what
            log(f"tcp: while held, {name}: {res[f'tcp_held_{name}']} {what}")
        time.sleep(max(0.0, opened + 10 - time.monotonic()))
        res["tcp_held_10s"] = tcp_established(rig.port, {FLOOD_SRC})
        res["tcp_client_held_10s"] = sum(read_json(d / f"hold{i}.json").get("held", 0) for i in range(nproc))
        res["tcp_proxy_alive"] = int(rig.alive())
        log(f"tcp: 10 s later held {res['tcp_held_10s']} (proxy side), {res['tcp_client_held_10s']} (client side)")
    finally:
        for h in holders:
            harness._stop_process(h, signal.SIGTERM, 10.0)
        rig.stop()


def amplification(rig: Rig, res: dict, sink: socket.socket) -> None:
    wait = float(env("AMP_WAIT", "35"))
    p = rig.port
    me = f"sip:127.0.0.1:{p}"
    socks = {k: udp_socket(FORGED_SRC) for k in ("foreign", "noroute", "malformed", "maxfwd0", "options", "bye")}

    def port_of(k: str) -> int:
        return socks[k].getsockname()[1]

    h = FORGED_SRC
    reqs = {
        "foreign": request("INVITE", "sip:x@example.org", h, port_of("foreign")),
        "noroute": request("REGISTER", me, h, port_of("noroute"), to=f"<sip:attack@127.0.0.1:{p}>",
                           headers=[f"Contact: <sip:attack@{h}:{port_of('noroute')}>"]),
        "malformed": request("INVITE", f"sip:1000@127.0.0.1:{p}", h, port_of("malformed"), cseq="x INVITE"),
        "maxfwd0": request("INVITE", f"sip:1000@127.0.0.1:{p}", h, port_of("maxfwd0"), max_forwards=0),
        "options": request("OPTIONS", me, h, port_of("options")),
        "bye": in_dialog("BYE", (h, port_of("bye")), sink.getsockname(), ("127.0.0.1", p)),
    }
    got = {k: [0, 0, []] for k in socks}
    sel = selectors.DefaultSelector()
    for k, s in socks.items():
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, k)
        s.sendto(reqs[k], ("127.0.0.1", p))
    log(f"amp: 6 requests sent from {FORGED_SRC}; counting what comes back for {wait:g} s")
    end = time.monotonic() + wait
    while time.monotonic() < end:
        for key, _ in sel.select(max(0.0, end - time.monotonic())):
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                continue
            g = got[key.data]
            g[0] += len(data)
            g[1] += 1
            if len(g[2]) < 3:
                g[2].append(status_line(data).replace(" ", "_"))
    for k, s in socks.items():
        sel.unregister(s)
        s.close()
        rx, n, first = got[k]
        res[f"amp_{k}_req_bytes"] = len(reqs[k])
        res[f"amp_{k}_rx_bytes"] = rx
        res[f"amp_{k}_rx_dgrams"] = n
        res[f"amp_{k}_ratio"] = round(rx / len(reqs[k]), 2)
        res[f"amp_{k}_first"] = ",".join(dict.fromkeys(first)) or "nothing"
        log(f"amp: {k}: {len(reqs[k])} bytes sent, {rx} bytes in {n} datagrams back "
            f"(x{res[f'amp_{k}_ratio']}): {res[f'amp_{k}_first']}")


def forged_relay(rig: Rig, res: dict) -> None:
    # Every target listens until the three are done: a target closed after the first
    # request would make the proxy's retransmissions draw ICMP errors, and those must not
    # be what decides whether the next forged request goes out.
    targets = {m: udp_socket(RELAY_HOST) for m in ("BYE", "INVITE", "ACK")}
    try:
        for method, target in targets.items():
            sender = udp_socket("127.0.0.1")
            try:
                sender.sendto(in_dialog(method, sender.getsockname(), target.getsockname(), ("127.0.0.1", rig.port)),
                              ("127.0.0.1", rig.port))
                target.settimeout(3.0)
                try:
                    target.recv(65536)
                    reached = "yes"
                except socket.timeout:
                    reached = "no"
                sender.settimeout(0.5 if reached == "yes" else 0.1)
                try:
                    answer = status_line(sender.recv(65536)).replace(" ", "_")
                except OSError:
                    answer = "nothing"
                res[f"relay_{method.lower()}"] = reached
                res[f"relay_{method.lower()}_answer"] = answer
                log(f"relay: forged in-dialog {method} to {RELAY_HOST}:{target.getsockname()[1]}: "
                    f"reached it: {reached}; the sender got {answer}")
            finally:
                sender.close()
    finally:
        for t in targets.values():
            t.close()


def control_idle(rig: Rig, res: dict) -> None:
    n = int(env("CTL_IDLE", "1000"))
    path = rig.control_path()
    ok, dt, _ = rig.control()
    res["ctl_base"] = f"{'yes' if ok else 'no'}/{dt:.2f}s"
    conns: list[socket.socket] = []
    refused = 0
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
                conns.append(s)
            except OSError:
                # EAGAIN: the listen queue is full (the server stopped accepting)
                refused += 1
                s.close()
        res["ctl_idle_open"] = len(conns)
        res["ctl_idle_refused"] = refused
        time.sleep(1)
        ok, dt, what = rig.control()
        res["ctl_idle"] = f"{'yes' if ok else 'no'}/{dt:.2f}s"
        res["ctl_idle_said"] = what
        log(f"ctl: {len(conns)} idle connections open ({refused} refused); control command "
            f"{res['ctl_idle']}: {what} (with none: {res['ctl_base']})")
    finally:
        for s in conns:
            s.close()


def scenario_shared(out: Path, res: dict, which: set[str]) -> None:
    d = out / "amp_relay_ctl"
    d.mkdir(parents=True, exist_ok=True)
    rig = Rig(d, life_s=float(env("AMP_WAIT", "35")) + 120).start()
    sink = udp_socket(RELAY_HOST)
    try:
        if "amp" in which:
            amplification(rig, res, sink)
            sink.setblocking(False)
            n = 0
            while True:
                try:
                    sink.recv(65536)
                    n += 1
                except OSError:
                    break
            res["amp_bye_reached_target"] = n
        if "relay" in which:
            forged_relay(rig, res)
        if "ctl" in which:
            control_idle(rig, res)
        res["shared_proxy_alive"] = int(rig.alive())
    finally:
        sink.close()
        rig.stop()


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    name = env("NAME", "gdispatch")
    out = Path(env("OUT", str(ROOT / "bench-results" / time.strftime("attack_%Y%m%d_%H%M%S") / name))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    harness.require_sipp()
    picked = env("SCENARIOS", "all").replace(",", " ").split()
    which = set(SCENARIO_NAMES) if "all" in picked else {
        SCENARIO_NAMES[int(x) - 1] if x.isdigit() and 1 <= int(x) <= 6 else x for x in picked}
    unknown = which - set(SCENARIO_NAMES)
    if unknown:
        print(f"attack.py: unknown scenario(s) {sorted(unknown)}; known: 1-6 or {SCENARIO_NAMES}", file=sys.stderr)
        return 2
    res: dict[str, object] = {"mode": name, "scenarios": " ".join(s for s in SCENARIO_NAMES if s in which)}
    status = 0
    steps = [("junk", lambda: scenario_flood("junk", out, res)), ("invite", lambda: scenario_flood("invite", out, res)),
             ("tcp", lambda: scenario_tcp(out, res))]
    if which & {"amp", "relay", "ctl"}:
        steps.append(("shared", lambda: scenario_shared(out, res, which)))
    try:
        for key, run in steps:
            if key != "shared" and key not in which:
                continue
            try:
                run()
            except RuntimeError as e:
                # The proxy did not start, or a SIPp gateway failed: the other scenarios still run.
                log(f"ERROR in {key}: {e}")
                res[f"{key}_error"] = str(e).splitlines()[0][:200]
                status = 1
            time.sleep(2)
    finally:
        (out / "result.txt").write_text("".join(f"{k}={v}\n" for k, v in res.items()))
    print(f"results: {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
