"""gdispatch's memory over a long run, on 127.0.0.1. Run through bench/memory.sh.

Starts 2 SIPp UAS (tests/scenarios/uas_ok.xml) and gdispatch in front of them (round
robin), then sends CALLS full calls (INVITE ... BYE) at RATE calls/s in chunks of CHUNK
calls, one bounded SIPp UAC run per chunk. After each chunk it reads the proxy's resident
set size (VmRSS in /proc/<pid>/status, all its processes summed). The claim checked:
the run ends with the proxy no larger than after the first CHUNK calls (within SLACK_PCT).
Finally it waits SETTLE_S seconds with no traffic, for lingering transactions to end, and
reads the size once more.

Environment: PY (set by memory.sh), CALLS (100000), CHUNK (10000), RATE (1000),
SETTLE_S (10), SLACK_PCT (5), PROXY_ARGS, OUT.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.e2e import harness  # noqa: E402


def env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_kib(root: int) -> int:
    total = 0
    for pid in [root, *harness._children(root)]:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    calls = int(env("CALLS", "100000"))
    chunk = int(env("CHUNK", "10000"))
    rate = int(env("RATE", "1000"))
    settle = float(env("SETTLE_S", "10"))
    slack = float(env("SLACK_PCT", "5"))
    proxy_args = shlex.split(os.environ.get("PROXY_ARGS", ""))
    out = Path(env("OUT", str(ROOT / "bench-results" / time.strftime("memory_%Y%m%d_%H%M%S")))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    harness.require_sipp()
    chunks = max(1, calls // chunk)
    uas_limit = 120 + chunks * (chunk / rate + 30) + settle
    gateways: list[harness.Uas] = []
    proxy = None
    try:
        for i in range(2):
            gateways.append(harness.Uas(out, "uas_ok.xml", time_limit_s=uas_limit, name=f"uas{i + 1}").start())
        ds = harness.dispatcher_list(*gateways, attrs=[f"duid=gw{i + 1}" for i in range(len(gateways))])
        proxy = harness.Proxy(out / "proxy", ds, listen=["udp:127.0.0.1:{port}"],
                              args=["--algorithm", "4", *proxy_args], ready_timeout=30)
        proxy.start()
        target = f"127.0.0.1:{proxy.port}"
        start_kib = rss_kib(proxy.pid)
        log(f"gdispatch pid {proxy.pid} on {target}; RSS at start {start_kib / 1024:.1f} MiB; "
            f"{chunks} x {chunk} calls at {rate} cps")
        rows = []
        done = failed = 0
        for i in range(chunks):
            res = harness.run_uac(target, "uac.xml", calls=chunk, rate=rate, timeout_s=chunk / rate + 30,
                                  workdir=out / f"chunk_{i + 1}")
            done += res.successful
            failed += res.failed + res.unfinished
            kib = rss_kib(proxy.pid)
            rows.append((done, kib))
            log(f"after {done} calls ({failed} failed): RSS {kib / 1024:.1f} MiB")
            if not proxy.alive():
                log("the proxy died")
                return 1
        time.sleep(settle)
        settled = rss_kib(proxy.pid)
        first, last = rows[0][1], rows[-1][1]
        ok = last <= first * (1 + slack / 100)
        print(f"# gdispatch memory: {done} calls at {rate} cps in chunks of {chunk} "
              f"({failed} failed or unfinished)")
        print("calls  rss_mib")
        print(f"{0:>5}  {start_kib / 1024:7.1f}")
        for n, kib in rows:
            print(f"{n:>5}  {kib / 1024:7.1f}")
        print(f"rss_start_mib={start_kib / 1024:.1f}")
        print(f"rss_after_first_chunk_mib={first / 1024:.1f}")
        print(f"rss_at_end_mib={last / 1024:.1f}")
        print(f"rss_after_{settle:g}s_idle_mib={settled / 1024:.1f}")
        print(f"bounded={'yes' if ok else 'no'} (end <= first chunk + {slack:g} %)")
        print(f"results: {out}")
        return 0 if ok and failed == 0 else 1
    finally:
        if proxy:
            proxy.stop()
        for g in gateways:
            g.stop()


if __name__ == "__main__":
    sys.exit(main())
