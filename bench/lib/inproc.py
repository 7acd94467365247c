"""The proxy's own cost per call, in process: no sockets, no SIPp, no kernel.

`make bench-inproc` (or `PY bench/lib/inproc.py [CALLS] [RATE]`). Runs CALLS full calls
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
from gdispatch.transport import Source  # noqa: E402

KINDS = ("INVITE", "180", "200", "ACK", "BYE", "200 (BYE)")


def response(request: bytes, status: int, reason: bytes, n: int, gateway: tuple[str, int]) -> bytes:
    """The gateway's response to a request the proxy sent, built with few operations so
    that the harness costs little beside the proxy. As from the bench's SIPp gateways
    (tests/scenarios/uas_ok.xml): the Vias joined on one line, a Contact with the
    transport."""
    head = request.partition(b"\r\n\r\n")[0].split(b"\r\n")
    vias = b"Via: " + b", ".join(line[5:] for line in head[1:] if line.startswith(b"Via: "))
    keep = [line for line in head[1:] if line.split(b":", 1)[0] in (b"From", b"Call-ID", b"CSeq", b"Record-Route")]
    to = next(line for line in head if line.startswith(b"To:")) + b";tag=uas%d" % n
    contact = b"Contact: <sip:svc@%s:%d;transport=UDP>" % (gateway[0].encode(), gateway[1])
    return b"\r\n".join([b"SIP/2.0 %d %s" % (status, reason), vias, to, *keep, contact,
                          b"Content-Length: 0", b"", b""])


def in_dialog_as_sipp(method: str, n: int, cseq: int, gateway: tuple[str, int], branch: str, route: bytes) -> bytes:
    """A request of call `n` as the bench's SIPp caller sends it: its Request-URI the
    gateway's Contact (see `response`), with `;transport=UDP`, and the Route it copied
    from the 200."""
    return in_dialog(method, n, cseq, gateway, branch, route.decode()).replace(
        b" SIP/2.0\r\n", b";transport=UDP SIP/2.0\r\n", 1)


class Run:
    def __init__(self) -> None:
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
        out = self.deliver("INVITE", invite(n), self.caller)
        gateway, request = next((a, d) for a, d in out if d.startswith(b"INVITE"))
        source = Source("udp", gateway, self.fp.listener)
        self.deliver("180", response(request, 180, b"Ringing", n, gateway), source)
        self.deliver("200", response(request, 200, b"OK", n, gateway), source)
        # The caller's Route is the Record-Route the proxy wrote, as SIPp copies it.
        route = request[request.index(b"Record-Route: ") + 14:].split(b"\r\n", 1)[0]
        self.deliver("ACK", in_dialog_as_sipp("ACK", n, 1, gateway, f"z9hG4bK-ack-{n}", route), self.caller)
        out = self.deliver("BYE", in_dialog_as_sipp("BYE", n, 2, gateway, f"z9hG4bK-bye-{n}", route), self.caller)
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
    per_call, kinds = lingering_objects(rate)
    run = Run()
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
    print(f"# {calls} calls through the proxy in process, clock at {rate} calls/s (bench/lib/inproc.py)")
    for kind in KINDS:
        print(f"{kind:10s} {run.spent[kind] / calls * 1e6:7.1f} us")
    print(f"{'timers+gc':10s} {timers / calls * 1e6:7.1f} us  ({policy.passes} collection passes)")
    top = ", ".join(f"{k} {v / 1000:.1f}" for k, v in kinds.most_common(6))
    print(f"lingering_objects_per_call={per_call:.1f} ({top})")
    print(f"proxy_us_per_call={total / calls * 1e6:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
