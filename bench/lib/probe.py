"""Unloaded call latency with microsecond timing (SIPp's own timers tick in milliseconds).

Places N calls one after another, paced at RATE calls per second, over UDP from one socket:
INVITE -> 200, then ACK and BYE -> 200 sent the way uac.xml sends them (Request-URI = the
200's Contact, Route = its Record-Route reversed, to HOST:PORT). Provisional responses are
skipped. Prints key=value lines: lat_n, lat_fail, inv_p50_us, inv_p90_us, inv_p99_us,
bye_p50_us, bye_p90_us, bye_p99_us.

    python bench/lib/probe.py 127.0.0.1:5060 300 50
"""

from __future__ import annotations

import math
import re
import socket
import sys
import time
import uuid

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 6000 RTP/AVP 0\r\n")


class Probe:
    def __init__(self, host: str, port: int, timeout: float = 2.0):
        if not host.startswith("127."):
            raise SystemExit("loopback addresses only")
        self.target = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(timeout)
        self.lport = self.sock.getsockname()[1]

    def request(self, method: str, ruri: str, call_id: str, from_tag: str, to_tag: str | None,
                cseq: int, routes: list[str]) -> bytes:
        host, port = self.target
        to = f"<sip:service@{host}:{port}>" + (f";tag={to_tag}" if to_tag else "")
        body = SDP if method == "INVITE" else ""
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.lport};branch=z9hG4bK{uuid.uuid4().hex[:16]}",
            *(f"Route: {r}" for r in routes),
            "Max-Forwards: 70",
            f"From: <sip:probe@127.0.0.1:{self.lport}>;tag={from_tag}",
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:probe@127.0.0.1:{self.lport}>",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    def final(self, call_id: str, method: str) -> tuple[int, str]:
        """The next final response of this call to `method` (provisionals and strays skipped)."""
        while True:
            data = self.sock.recv(65535).decode(errors="replace")
            if not data.startswith("SIP/2.0 ") or call_id not in data:
                continue
            code = int(data[8:11])
            if code >= 200 and re.search(rf"^CSeq:\s*\d+\s+{method}\s*$", data, re.MULTILINE | re.IGNORECASE):
                return code, data

    def call(self, bye_after: float = 0.0) -> tuple[float, float]:
        """One call; returns (INVITE->200, BYE->200) in seconds. Raises on failure.
        `bye_after`: seconds between the ACK and the BYE."""
        call_id, ftag = uuid.uuid4().hex, uuid.uuid4().hex[:8]
        host, port = self.target
        t0 = time.perf_counter()
        self.sock.sendto(self.request("INVITE", f"sip:service@{host}:{port}", call_id, ftag, None, 1, []),
                         self.target)
        code, resp = self.final(call_id, "INVITE")
        t1 = time.perf_counter()
        if code != 200:
            raise RuntimeError(f"INVITE got {code}")
        to_tag = re.search(r"^(?:To|t)\s*:.*;\s*tag=([^;\s>]+)", resp, re.MULTILINE | re.IGNORECASE)
        contact = re.search(r"^(?:Contact|m)\s*:[^<\r\n]*<?([^>;\s]+)", resp, re.MULTILINE | re.IGNORECASE)
        if not (to_tag and contact):
            raise RuntimeError("200 without To tag or Contact")
        rr: list[str] = []
        for value in re.findall(r"^Record-Route\s*:\s*(.+?)\s*$", resp, re.MULTILINE | re.IGNORECASE):
            rr += [v.strip() for v in value.split(",")]
        routes = list(reversed(rr))
        self.sock.sendto(self.request("ACK", contact.group(1), call_id, ftag, to_tag.group(1), 1, routes),
                         self.target)
        if bye_after > 0:
            time.sleep(bye_after)
        t2 = time.perf_counter()
        self.sock.sendto(self.request("BYE", contact.group(1), call_id, ftag, to_tag.group(1), 2, routes),
                         self.target)
        code, _ = self.final(call_id, "BYE")
        t3 = time.perf_counter()
        if code != 200:
            raise RuntimeError(f"BYE got {code}")
        return t1 - t0, t3 - t2


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def measure(target: str, calls: int, rate: float, bye_after: float = 0.0) -> dict[str, object]:
    host, port = target.rsplit(":", 1)
    probe = Probe(host, int(port))
    inv: list[float] = []
    bye: list[float] = []
    fail = 0
    start = time.perf_counter()
    for i in range(calls):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        try:
            a, b = probe.call(bye_after)
        except (OSError, RuntimeError):
            fail += 1
            continue
        inv.append(a)
        bye.append(b)
    out: dict[str, object] = {"lat_n": len(inv), "lat_fail": fail}
    for name, vals in (("inv", inv), ("bye", bye)):
        for q in (50, 90, 99):
            p = percentile(vals, q / 100)
            out[f"{name}_p{q}_us"] = "nan" if math.isnan(p) else round(p * 1e6)
    return out


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    res = measure(argv[0], int(argv[1]), float(argv[2]) if len(argv) > 2 else 50.0)
    for k, v in res.items():
        print(f"{k}={v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
