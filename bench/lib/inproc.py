"""The proxy's own cost per call, in process: no sockets, no SIPp, no kernel.

`make bench-inproc` (or `PY bench/lib/inproc.py [CALLS] [RATE] [SHAPE]`). Runs CALLS full calls
(INVITE, 180, 200, ACK, BYE, 200: the bench scenario's messages) through a real `Proxy` on
the fake transports and clock of the unit tests (tests/unit/proxy_fakes.py). The clock
moves 1/RATE s per call, so transactions linger and timers fire as at that rate, and the
garbage collection policy is the one `gdispatch run` uses. Prints the microseconds spent
in the proxy per message kind and per call, and the objects a call leaves behind for the
cyclic collector while its transactions linger.

What it leaves out is what the side-by-side `make bench` measures: system calls, waking
up, the load generator. It is steady where that one is noisy, so it shows what a change
to the code costs or saves. Bounded: CALLS (default 20,000) calls, nothing else.
"""

from __future__ import annotations

import collections
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "unit")]

import gevent  # noqa: E402
from proxy_fakes import UAC, FakeProxy, in_dialog, invite  # noqa: E402

from gdispatch.collector import CollectorPolicy  # noqa: E402
from gdispatch.net import Source  # noqa: E402
from gdispatch.sip import parse_message  # noqa: E402

SHAPES = ("own", "builtin", "compact", "phone")
KINDS = ("INVITE", "180", "200", "ACK", "BYE", "200 (BYE)")


def response(request: bytes, status: int, reason: bytes, n: int, gateway: tuple[str, int]) -> bytes:
    """The gateway's response to a request the proxy sent, as from the bench's SIPp
    gateways (tests/scenarios/uas_ok.xml): the Vias joined on one line, a Contact with the
    transport. Built outside the timed part, so it may parse."""
    req = parse_message(request)
    vias = b"Via: " + b", ".join(req.get_all("via"))
    keep = [b"%s: %s" % (name.encode(), req.get(name)) for name in ("From", "Call-ID", "CSeq")]
    keep += [b"Record-Route: " + v for v in req.get_all("record-route")]
    to = b"To: " + req.get("to") + b";tag=uas%d" % n
    contact = b"Contact: <sip:svc@%s:%d;transport=UDP>" % (gateway[0].encode(), gateway[1])
    return b"\r\n".join([b"SIP/2.0 %d %s" % (status, reason), vias, to, *keep, contact,
                          b"Content-Length: 0", b"", b""])


# How the caller writes its requests: the message shapes of `make bench` (bench/README.md).
_SDP = (b"v=0\r\no=- 3912345678 3912345678 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=audio 40000 RTP/AVP 0 8 9 18 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        b"a=rtpmap:9 G722/8000\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n")
_COMPACT = ((b"\r\nVia:", b"\r\nv:"), (b"\r\nCall-ID:", b"\r\ni:"), (b"\r\nFrom:", b"\r\nf:"),
            (b"\r\nTo:", b"\r\nt:"), (b"\r\nContact:", b"\r\nm:"), (b"\r\nContent-Length:", b"\r\nl:"),
            (b"\r\nContent-Type:", b"\r\nc:"))
_PHONE = (b"User-Agent: Yealink SIP-T46U 108.86.0.45 00:15:65:aa:bb:cc\r\n"
          b"Allow: INVITE, ACK, OPTIONS, CANCEL, BYE, REFER, NOTIFY, INFO, MESSAGE, UPDATE, PRACK, SUBSCRIBE\r\n"
          b"Supported: replaces, timer, path, 100rel, outbound\r\n"
          b"Allow-Events: talk, hold, conference, refer, check-sync\r\n"
          b"P-Asserted-Identity: \"Front Desk\" <sip:caller@127.0.0.1>\r\n")


def shaped(data: bytes, shape: str) -> bytes:
    """`data`, a request of the caller (tests/unit/proxy_fakes.py writes the "own" shape),
    written as `shape`."""
    if shape == "builtin":
        # SIPp's built-in uac: a Contact without angle brackets, a name in From and To.
        data = data.replace(b"Contact: <sip:caller@127.0.0.1:6000>", b"Contact: sip:sipp@127.0.0.1:6000")
        data = data.replace(b"From: <sip:caller", b"From: sipp <sip:caller").replace(b"To: <sip", b"To: service <sip")
        if b"Contact:" not in data:
            data = data.replace(b"\r\nContent-Length:", b"\r\nContact: sip:sipp@127.0.0.1:6000\r\nContent-Length:")
    elif shape == "compact":
        # Compact names, and the Vias of two proxies the request came through.
        first_via_end = data.index(b"\r\n", data.index(b"\r\nVia:") + 2)
        data = (data[:first_via_end] + b"\r\nVia: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bK-p1-%x"
                b"\r\nVia: SIP/2.0/UDP 10.2.2.2;branch=z9hG4bK-p2-%x;received=10.2.2.3" % (len(data), len(data))
                + data[first_via_end:])
        for full, short in _COMPACT:
            data = data.replace(full, short)
    elif shape == "phone":
        # A desk phone's: long capability lines, Call-ID late, an SDP offer of five codecs.
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        call_id = next(line for line in lines if line.startswith(b"Call-ID:"))
        lines = [line for line in lines if line is not call_id and not line.startswith(b"Content-Length")]
        if lines[0].startswith(b"INVITE"):
            body = _SDP
        lines = [*lines, *_PHONE.rstrip(b"\r\n").split(b"\r\n"), call_id, b"Content-Length: %d" % len(body)]
        data = b"\r\n".join(lines) + b"\r\n\r\n" + body
    return data


def in_dialog_as_sipp(method: str, n: int, cseq: int, gateway: tuple[str, int], branch: str, route: bytes) -> bytes:
    """A request of call `n` as the bench's SIPp caller sends it: its Request-URI the
    gateway's Contact (see `response`), with `;transport=UDP`, and the Route it copied
    from the 200."""
    return in_dialog(method, n, cseq, gateway, branch, route.decode()).replace(
        b" SIP/2.0\r\n", b";transport=UDP SIP/2.0\r\n", 1)


class Run:
    def __init__(self, shape: str = "own") -> None:
        self.shape = shape
        self.fp = FakeProxy()
        self.caller = Source("udp", UAC, self.fp.listener)
        self.spent = dict.fromkeys(KINDS, 0.0)

    def deliver(self, kind: str, data: bytes, source: Source) -> list:
        started = time.perf_counter()
        self.fp.proxy.on_message(data, source)
        gevent.sleep(0)  # a walker greenlet, if one was started, runs now
        self.spent[kind] += time.perf_counter() - started
        return self.fp.transports.take()

    def call(self, n: int) -> None:
        out = self.deliver("INVITE", shaped(invite(n), self.shape), self.caller)
        gateway, request = next((a, d) for a, d in out if d.startswith(b"INVITE"))
        source = Source("udp", gateway, self.fp.listener)
        self.deliver("180", response(request, 180, b"Ringing", n, gateway), source)
        self.deliver("200", response(request, 200, b"OK", n, gateway), source)
        # The caller's Route is the Record-Route the proxy wrote, as SIPp copies it.
        route = request[request.index(b"Record-Route: ") + 14:].split(b"\r\n", 1)[0]
        ack = in_dialog_as_sipp("ACK", n, 1, gateway, f"z9hG4bK-ack-{n}", route)
        self.deliver("ACK", shaped(ack, self.shape), self.caller)
        bye = in_dialog_as_sipp("BYE", n, 2, gateway, f"z9hG4bK-bye-{n}", route)
        out = self.deliver("BYE", shaped(bye, self.shape), self.caller)
        self.deliver("200 (BYE)", response(out[0][1], 200, b"OK", n, gateway), source)


def lingering_objects(rate: int) -> tuple[float, collections.Counter]:
    """Tracked objects per call still alive while the transactions linger."""
    run = Run()
    for n in range(300):
        run.call(n)
        run.fp.clock.advance(1 / rate, run.fp.scheduler)
    gc.collect()
    before = collections.Counter(type(o).__name__ for o in gc.get_objects())
    calls = 1000
    for n in range(1000, 1000 + calls):
        run.call(n)
    gc.collect()
    grown = collections.Counter(type(o).__name__ for o in gc.get_objects()) - before
    return sum(grown.values()) / calls, grown


def main() -> int:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 3_000
    shape = sys.argv[3] if len(sys.argv) > 3 else "own"
    if shape not in SHAPES:
        print(f"unknown shape {shape!r}: one of {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    per_call, kinds = lingering_objects(rate)
    run = Run(shape)
    policy = CollectorPolicy()
    policy.start()
    try:
        for n in range(500):  # warm up: caches, the lingering population
            run.call(n)
            run.fp.clock.advance(1 / rate, run.fp.scheduler)
        run.spent = dict.fromkeys(KINDS, 0.0)
        timers = 0.0
        for n in range(500, 500 + calls):
            run.call(n)
            started = time.perf_counter()
            run.fp.clock.advance(1 / rate, run.fp.scheduler)
            policy.maybe_collect()
            timers += time.perf_counter() - started
    finally:
        gc.enable()
    total = sum(run.spent.values()) + timers
    print(f"# {calls} calls of shape {shape} through the proxy in process, clock at {rate} calls/s"
          " (bench/lib/inproc.py)")
    for kind in KINDS:
        print(f"{kind:10s} {run.spent[kind] / calls * 1e6:7.1f} us")
    print(f"{'timers+gc':10s} {timers / calls * 1e6:7.1f} us  ({policy.passes} collection passes)")
    top = ", ".join(f"{k} {v / 1000:.1f}" for k, v in kinds.most_common(6))
    print(f"lingering_objects_per_call={per_call:.1f} ({top})")
    print(f"proxy_us_per_call={total / calls * 1e6:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
