"""What HEP capture costs (gdispatch.hep): the same SIPp load through two gdispatch
processes side by side, one with `[capture] hep` and one without, in alternating rounds
(off, on, off, on...), and the proxy's CPU per call in each. Run through bench/hep_ab.sh.

Both proxies run from the start (warmed up alike) in front of the same SIPp UAS
(tests/scenarios/uas_ok.xml); each round is one bounded SIPp UAC run (CALLS calls at RATE
per second, full calls: INVITE, 180, 200, ACK, BYE, 200) against one of them. The
collector is a UDP socket read by a thread of this script, which drops what it reads: its
CPU is not the proxy's (SINK=1: a socket never read, whose full buffer the kernel drops
into, so that no reader is woken up for each copy, as with a collector on another host).
Proxy CPU is utime+stime of the proxy and its descendants, from /proc, over the round,
divided by the successful calls; the copies per call come from the proxy's `hep_sent`
counter.

Environment: PY, CALLS (4000), RATE (300), ROUNDS (3: rounds of each), PROXY_ARGS (e.g.
"--workers 2"), SINK (0). Every process is started here and stopped by PID; all on
127.0.0.1.
"""

from __future__ import annotations

import os
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gdispatch.control.client import request as rpc_request  # noqa: E402
from tests.e2e import harness  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """utime+stime (seconds) of `pid` and its live descendants."""
    total = 0
    for p in [pid, *harness._children(pid)]:
        try:
            with open(f"/proc/{p}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(rest[11]) + int(rest[12])
    return total / HZ


class Drain:
    """A collector that reads and drops every datagram."""

    def __init__(self, read: bool = True) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024 if read else 65536)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"udp:127.0.0.1:{self.sock.getsockname()[1]}"
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if read:
            self._thread.start()

    def _run(self) -> None:
        buf = bytearray(65536)
        while not self._stop.is_set():
            try:
                self.sock.recv_into(buf)
                self.count += 1
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self.sock.close()


def main() -> int:
    calls, rate, rounds = int(os.environ.get("CALLS", 4000)), int(os.environ.get("RATE", 300)), \
        int(os.environ.get("ROUNDS", 3))
    args = shlex.split(os.environ.get("PROXY_ARGS", ""))
    work = Path(tempfile.mkdtemp(prefix="gdispatch-hep-ab-"))
    drain = Drain(read=os.environ.get("SINK", "0") != "1")
    uas = harness.Uas(work, "uas_ok.xml").start()
    dlist = harness.dispatcher_list(uas)
    proxies = {
        "off": harness.Proxy(work / "off", dlist, "", args=args),
        "on": harness.Proxy(work / "on", dlist, f'[capture]\nhep = "{drain.address}"\n', args=args),
    }
    results: dict[str, list[float]] = {"off": [], "on": []}
    copies: list[float] = []
    status = 0
    try:
        for p in proxies.values():
            p.start()
        print(f"hep_ab: {rounds} rounds of each, {calls} calls at {rate}/s, proxy args {args or 'none'}; "
              f"files in {work}", flush=True)
        for i in range(rounds):
            for mode in ("off", "on"):
                p = proxies[mode]
                sent_before = rpc_request("stats", socket_path=str(p.socket_path), timeout=5).get("hep_sent", 0)
                cpu0 = tree_cpu_s(p.pid)
                res = harness.run_uac(f"127.0.0.1:{p.port}", calls=calls, rate=rate,
                                      timeout_s=calls / rate + 15, workdir=work / f"uac-{mode}-{i}")
                cpu = tree_cpu_s(p.pid) - cpu0
                ok = res.successful
                if ok == 0 or res.failed:
                    print(f"round {i + 1} {mode}: {res}", flush=True)
                    status = 1
                    continue
                us = cpu / ok * 1e6
                results[mode].append(us)
                line = f"round {i + 1} capture {mode:3}: {ok} calls, proxy CPU {cpu:.2f} s, {us:.0f} us/call"
                if mode == "on":
                    time.sleep(1.2)  # a worker reports its counters every second
                    sent = rpc_request("stats", socket_path=str(p.socket_path), timeout=5)["hep_sent"] - sent_before
                    copies.append(sent / ok)
                    line += f", {sent / ok:.1f} copies/call"
                print(line, flush=True)
    finally:
        for p in proxies.values():
            p.stop()
        uas.stop(grace_s=1.0)
        drain.close()
    if results["off"] and results["on"]:
        off, on = statistics.median(results["off"]), statistics.median(results["on"])
        per_copy = (on - off) / statistics.median(copies) if copies else float("nan")
        print(f"median CPU per call: off {off:.0f} us, on {on:.0f} us: +{on - off:.0f} us "
              f"(+{(on / off - 1) * 100:.0f} %), {per_copy:.1f} us per copy; "
              f"the collector received {drain.count} copies")
    return status


if __name__ == "__main__":
    sys.exit(main())
