"""The TLS load generator of the bench (SIPp as Debian builds it has no TLS): a gateway
that answers calls over TLS and a caller that makes them at a paced rate over a few
long-lived TLS connections, both on Python's `ssl` with threads.

    gw = Gateway(cert, key).start()           # INVITE 180 200, ACK, BYE 200, OPTIONS 200
    caller = Caller(("127.0.0.1", port), ca=ca_pem, conns=4).connect()
    res = caller.step(rate=200, calls=1000, grace_s=5)   # offered and completed, latency
    caller.close()

The gateway runs in its own process (`python tlsload.py gateway --cert C --key K`, which
prints ``ready PORT`` and then one ``accepted HOST:PORT`` line per TLS connection), so its
CPU is apart from the caller's. The dialog is that of the UDP bench's ``own`` shape
(tests/scenarios/uac.xml against bench/scenarios/uas_shapes.xml): an INVITE with SDP, 180,
200 with SDP carrying the INVITE's Record-Route, ACK and BYE sent to the 200's Contact with
the route set (RFC 3261 §12.1.2), 200 for the BYE. Over a reliable transport nobody
retransmits (RFC 3261 §17.1.1.2: timer A is not started), so a proxy that falls behind
shows as calls that complete late or not at all: `step` counts the calls offered, the
ones whose BYE got its 200 before the step's end, and the rate they completed at.

`python tlsload.py call HOST:PORT --ca CA --rate R --calls N` runs one step by hand and
prints its figures as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"

_LENGTH = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)")
_TAG = re.compile(r";tag=([^;>\s]+)")
_ANGLE = re.compile(r"<([^>]*)>")

SDP = ("v=0\r\no=user1 53655765 2353687637 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
       "m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


class Framer:
    """SIP messages out of a stream, framed by Content-Length (RFC 3261 §18.3)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out = []
        while True:
            # keep-alive CRLFs between messages (RFC 5626 §3.5.1) are skipped
            while self.buf[:2] == b"\r\n":
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return out
            m = _LENGTH.search(self.buf, 0, end)
            total = end + 4 + (int(m.group(1)) if m else 0)
            if len(self.buf) < total:
                return out
            out.append(bytes(self.buf[:total]))
            del self.buf[:total]


def headers(msg: bytes) -> tuple[str, dict[str, list[str]]]:
    """The first line and {lower-case name: [lines as written]} of a message's header
    (compact names are kept as they are: each side here writes long ones, and copies
    what it does not read)."""
    head = msg.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.split("\r\n")
    out: dict[str, list[str]] = {}
    for line in lines[1:]:
        name = line.split(":", 1)[0].strip().lower()
        out.setdefault(name, []).append(line)
    return lines[0], out


def value(line: str) -> str:
    return line.split(":", 1)[1].strip()


# --------------------------------------------------------------------------- the gateway

class Gateway:
    """A TLS SIP gateway on HOST: INVITE gets 180 and 200 (with SDP, the Record-Route
    copied, Contact itself over TLS), BYE, CANCEL and OPTIONS get 200, ACK nothing. One
    thread per connection; `accepted` counts the connections (a proxy that reuses its
    connection opens one per process that sends)."""

    def __init__(self, cert: Path | str, key: Path | str, *, port: int = 0, host: str = HOST):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.sock = socket.create_server((host, port), backlog=128)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.tags = itertools.count(1)
        self.closed = False
        self.on_accept = None

    def start(self) -> Gateway:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self.closed:
            try:
                raw, addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw, addr), daemon=True).start()

    def _serve(self, raw: socket.socket, addr: tuple) -> None:
        raw.settimeout(10)
        # 180 and 200 are two writes: without this Nagle holds the 200 until the 180 is
        # acknowledged (a delayed ACK, tens of ms), as SIP servers avoid
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        conn.settimeout(None)
        self.accepted += 1
        if self.on_accept:
            self.on_accept(addr)
        framer = Framer()
        contact = f"Contact: <sip:gw@{self.host}:{self.port};transport=tls>\r\n"
        sdp = SDP.format(ip=self.host)
        try:
            while not self.closed:
                data = conn.recv(65536)
                if not data:
                    break
                for msg in framer.feed(data):
                    if msg.startswith(b"SIP/2.0"):
                        continue
                    first, hdrs = headers(msg)
                    method = first.split(" ", 1)[0]
                    if method == "ACK":
                        continue
                    if method == "INVITE":
                        tag = f";tag=gw{next(self.tags)}"
                        conn.sendall(self._answer(hdrs, "180 Ringing", tag, contact))
                        conn.sendall(self._answer(hdrs, "200 OK", tag, contact, sdp))
                    else:
                        conn.sendall(self._answer(hdrs, "200 OK", f";tag=gw{next(self.tags)}", ""))
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    @staticmethod
    def _answer(hdrs: dict[str, list[str]], status: str, tag: str, contact: str, sdp: str = "") -> bytes:
        """The response (RFC 3261 §8.2.6.2): Via, Record-Route (§12.1.1), From, Call-ID
        and CSeq copied, a To tag added when there is none."""
        lines = [f"SIP/2.0 {status}"]
        for name in ("via", "v", "record-route", "from", "f"):
            lines += hdrs.get(name, ())
        to = (hdrs.get("to") or hdrs.get("t") or ["To: <sip:unknown>"])[0]
        if _TAG.search(to) is None:
            to += tag
        lines.append(to)
        for name in ("call-id", "i", "cseq"):
            lines += hdrs.get(name, ())
        body = (contact + "Content-Type: application/sdp\r\n" if sdp else contact) + \
            f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
        return ("\r\n".join(lines) + "\r\n" + body).encode()

    def close(self) -> None:
        self.closed = True
        self.sock.close()


# --------------------------------------------------------------------------- the caller

@dataclass
class _Call:
    start: float
    conn: int
    invite_ok: float = 0.0
    done: float = 0.0
    status: int = 0  # the final status that ended it: 200 for the BYE, else the INVITE's


@dataclass
class StepResult:
    """One step: `offered` calls at `offered_cps` (the pace the caller kept; below the
    target, the caller was the bottleneck), `completed` (BYE 200 received within the
    step), `failed` (a final error status), `unfinished` (neither by the end) and
    `completed_cps` (completed calls over the time from the first INVITE to the last
    completion). Latencies in µs."""

    target_cps: float
    offered: int
    offered_cps: float
    completed: int
    failed: int
    unfinished: int
    completed_cps: float
    wall_s: float
    inv_p50_us: int | None = None
    inv_p99_us: int | None = None
    call_p50_us: int | None = None
    call_p99_us: int | None = None
    broken_conns: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def completed_pct(self) -> float:
        return 100.0 * self.completed / self.offered if self.offered else 0.0


class _Conn:
    """One TLS connection of the caller: a reader thread, writes under a lock."""

    def __init__(self, owner: Caller, index: int, sock: ssl.SSLSocket):
        self.owner = owner
        self.index = index
        self.sock = sock
        self.local = sock.getsockname()
        self.lock = threading.Lock()
        self.broken = False
        self.thread = threading.Thread(target=self._read, daemon=True)

    def send(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            with self.lock:
                self.sock.sendall(data)
        except (OSError, ssl.SSLError):
            self.broken = True

    def _read(self) -> None:
        framer = Framer()
        while True:
            try:
                data = self.sock.recv(65536)
            except (OSError, ssl.SSLError):
                data = b""
            if not data:
                self.broken = True
                return
            for msg in framer.feed(data):
                if msg.startswith(b"SIP/2.0 "):
                    self.owner._on_response(self, msg)


class Caller:
    """Calls through `proxy` ((host, port)) over `conns` TLS connections, opened once and
    used by every step (the proxy's certificate verified against `ca` and
    `server_name`). Calls are spread over the connections in turn."""

    def __init__(self, proxy: tuple[str, int], *, ca: Path | str, conns: int = 4, server_name: str = HOST,
                 ruri_host: str | None = None, timeout: float = 10.0):
        self.proxy = proxy
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.server_name = server_name
        self.nconns = conns
        self.ruri_host = ruri_host or f"{proxy[0]}:{proxy[1]}"
        self.timeout = timeout
        self.conns: list[_Conn] = []
        self.calls: dict[str, _Call] = {}
        self.steps = itertools.count(1)
        self.done = 0
        self.done_lock = threading.Lock()
        self.all_done = threading.Event()
        self.expected = 0
        self.statuses: dict[str, int] = {}

    def connect(self) -> Caller:
        for i in range(self.nconns):
            raw = socket.create_connection(self.proxy, timeout=self.timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self.ctx.wrap_socket(raw, server_hostname=self.server_name)
            sock.settimeout(None)
            c = _Conn(self, i, sock)
            c.thread.start()
            self.conns.append(c)
        return self

    def _invite(self, c: _Conn, call_id: str, user: str) -> bytes:
        ip, port = c.local[0], c.local[1]
        sdp = SDP.format(ip=ip)
        return (f"INVITE sip:{user}@{self.ruri_host};transport=tls SIP/2.0\r\n"
                f"Via: SIP/2.0/TLS {ip}:{port};branch=z9hG4bK-{call_id}-inv\r\n"
                f"From: tls <sip:tls@{ip}:{port}>;tag={call_id}c\r\n"
                f"To: {user} <sip:{user}@{self.ruri_host}>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
                f"Contact: <sip:tls@{ip}:{port};transport=tls>\r\n"
                "Max-Forwards: 70\r\nSubject: gdispatch bench call\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}").encode()

    @staticmethod
    def _in_dialog(c: _Conn, method: str, target: str, routes: list[str], hdrs: dict[str, list[str]],
                   call_id: str, cseq: int, branch: str) -> bytes:
        ip, port = c.local[0], c.local[1]
        route = "".join(f"Route: {r}\r\n" for r in routes)
        return (f"{method} {target} SIP/2.0\r\nVia: SIP/2.0/TLS {ip}:{port};branch={branch}\r\n{route}"
                f"From: tls <sip:tls@{ip}:{port}>;tag={call_id}c\r\n{hdrs['to'][0]}\r\nCall-ID: {call_id}\r\n"
                f"CSeq: {cseq} {method}\r\nContact: <sip:tls@{ip}:{port};transport=tls>\r\n"
                "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()

    def _on_response(self, c: _Conn, msg: bytes) -> None:
        first, hdrs = headers(msg)
        code = int(first.split(" ", 2)[1])
        if code < 200:
            return
        try:
            call_id = value(hdrs["call-id"][0])
            method = value(hdrs["cseq"][0]).split()[-1]
        except (KeyError, IndexError):
            return
        call = self.calls.get(call_id)
        if call is None or call.done:
            return  # a late answer from an earlier step, or a second 200
        now = time.monotonic()
        if method == "INVITE":
            if call.invite_ok:
                return  # a retransmitted 200 (RFC 3261 §13.3.1.4), already acknowledged
            if code != 200:
                # non-2xx: the ACK goes to the proxy with the INVITE's branch (§17.1.1.3)
                c.send(self._in_dialog(c, "ACK", f"sip:x@{self.ruri_host}", [], hdrs, call_id, 1,
                                       f"z9hG4bK-{call_id}-inv"))
                self._finish(call, now, code)
                return
            call.invite_ok = now
            # The route set: the Record-Route entries in reverse (RFC 3261 §12.1.2).
            rr = ",".join(value(x) for x in hdrs.get("record-route", ()))
            routes = [f"<{u}>" for u in _ANGLE.findall(rr)][::-1]
            contact = _ANGLE.search(value(hdrs["contact"][0])) if "contact" in hdrs else None
            target = contact.group(1) if contact else f"sip:x@{self.ruri_host}"
            c.send(self._in_dialog(c, "ACK", target, routes, hdrs, call_id, 1, f"z9hG4bK-{call_id}-ack"))
            c.send(self._in_dialog(c, "BYE", target, routes, hdrs, call_id, 2, f"z9hG4bK-{call_id}-bye"))
        elif method == "BYE":
            self._finish(call, now, code)

    def _finish(self, call: _Call, now: float, code: int) -> None:
        call.done = now
        call.status = code
        with self.done_lock:
            key = str(code)
            self.statuses[key] = self.statuses.get(key, 0) + 1
            self.done += 1
            if self.done >= self.expected:
                self.all_done.set()

    def step(self, rate: float, calls: int, grace_s: float = 5.0, user: str = "100") -> StepResult:
        """`calls` calls at `rate` per second, then up to `grace_s` s for the last ones to
        end. A call is paced by the clock from the step's start: when the caller runs
        late it sends what is due at once, and `offered_cps` shows it."""
        prefix = f"t{next(self.steps)}-{int(time.time())}-"
        self.calls = {}
        self.done = 0
        self.expected = calls
        self.statuses = {}
        self.all_done.clear()
        live = [c for c in self.conns if not c.broken]
        if not live:
            raise RuntimeError("every TLS connection to the proxy is closed")
        n = len(live)
        t0 = time.monotonic()
        for i in range(calls):
            due = t0 + i / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            c = live[i % n]
            call_id = f"{prefix}{i}"
            self.calls[call_id] = _Call(time.monotonic(), c.index)
            c.send(self._invite(c, call_id, user))
        t_sent = time.monotonic()
        self.all_done.wait(timeout=max(0.0, t_sent + grace_s - time.monotonic()))
        wall = time.monotonic() - t0
        done = [x for x in self.calls.values() if x.done]
        ok = [x for x in done if x.status == 200]
        # the pace kept: calls-1 intervals between the first INVITE and the last
        offered_cps = (calls - 1) / (t_sent - t0) if calls > 1 and t_sent > t0 else float(rate)
        last = max((x.done for x in ok), default=t0)
        completed_cps = len(ok) / max(last - t0, (calls - 1) / rate if calls > 1 else 1e-3) if ok else 0.0
        inv = sorted(x.invite_ok - x.start for x in ok)
        whole = sorted(x.done - x.start for x in ok)
        return StepResult(target_cps=rate, offered=calls, offered_cps=round(offered_cps, 1), completed=len(ok),
                          failed=len(done) - len(ok), unfinished=calls - len(done),
                          completed_cps=round(completed_cps, 1), wall_s=round(wall, 3),
                          inv_p50_us=_pct(inv, 50), inv_p99_us=_pct(inv, 99),
                          call_p50_us=_pct(whole, 50), call_p99_us=_pct(whole, 99),
                          broken_conns=sum(1 for c in self.conns if c.broken), statuses=dict(self.statuses))

    def close(self) -> None:
        for c in self.conns:
            try:
                c.sock.close()
            except OSError:
                pass


def _pct(sorted_s: list[float], p: float) -> int | None:
    if not sorted_s:
        return None
    return int(1e6 * sorted_s[min(len(sorted_s) - 1, int(len(sorted_s) * p / 100))])


# --------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gateway", help="answer calls over TLS until SIGTERM or --time-limit")
    g.add_argument("--cert", required=True)
    g.add_argument("--key", required=True)
    g.add_argument("--port", type=int, default=0)
    g.add_argument("--time-limit", type=float, default=1800.0, help="exit after this many seconds")
    c = sub.add_parser("call", help="one step of calls through a TLS proxy, figures as JSON")
    c.add_argument("target", help="HOST:PORT of the proxy's tls: address")
    c.add_argument("--ca", required=True)
    c.add_argument("--rate", type=float, default=100)
    c.add_argument("--calls", type=int, default=500)
    c.add_argument("--conns", type=int, default=4)
    c.add_argument("--grace", type=float, default=5.0)
    a = ap.parse_args(argv)
    if a.cmd == "gateway":
        gw = Gateway(a.cert, a.key, port=a.port)
        gw.on_accept = lambda addr: print(f"accepted {addr[0]}:{addr[1]}", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        gw.start()
        print(f"ready {gw.port}", flush=True)
        stop.wait(a.time_limit)
        gw.close()
        return 0
    host, _, port = a.target.rpartition(":")
    if not host.startswith("127."):
        ap.error("the target must be on 127.0.0.0/8")
    caller = Caller((host, int(port)), ca=a.ca, conns=a.conns).connect()
    try:
        res = caller.step(a.rate, min(a.calls, int(a.rate * 60)), a.grace)
    finally:
        caller.close()
    print(json.dumps({**res.__dict__, "completed_pct": round(res.completed_pct, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
