"""What a Prometheus scrape costs the proxy, A/B, on 127.0.0.1. Run through bench/scrape.sh.

Starts 2 SIPp UAS (tests/scenarios/uas_ok.xml) and gdispatch in front of them with its
`[http]` listener, then runs ROUNDS rounds of two legs each, the same bounded load in
both: CALLS full calls (INVITE ... BYE) at RATE calls/s from one SIPp UAC. In leg A
nothing scrapes; in leg B a thread of this script GETs /metrics every SCRAPE_S seconds
(1) while the calls run. The legs alternate A B, B A, A B... so that a drift of the
shared machine falls on both. For each leg: the proxy's CPU time (utime + stime of its
processes, from /proc) per successful call. The figure: the median over the rounds of
B's CPU per call over A's (1.00: scraping costs nothing measurable), and how long a
scrape took and how large it was. On a shared machine the legs differ by several per
cent among themselves: the steadier figure comes last, once the calls are over and the
transactions gone: the proxy's CPU for IDLE_SCRAPES (50) scrapes one after another, per
scrape, and what that would add at one scrape every SCRAPE_S to the CPU of leg A.

Environment: PY (set by scrape.sh), CALLS (3000), RATE (300), ROUNDS (3), SCRAPE_S (1),
WORKERS (1), IDLE_SCRAPES (50), OUT.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from maxcps import HZ, tree_cpu_s  # noqa: E402 - found through the sys.path set above

from tests.e2e import harness  # noqa: E402


def env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Scraper:
    """GET `url` every `interval` seconds until stopped; keeps each scrape's time and size."""

    def __init__(self, url: str, interval: float):
        self.url = url
        self.interval = interval
        self.times: list[float] = []
        self.sizes: list[int] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    self.sizes.append(len(r.read()))
                self.times.append(time.perf_counter() - start)
            except OSError:
                self.errors += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> Scraper:  # noqa: PYI034 - no typing.Self before Python 3.11
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def leg(proxy: harness.Proxy, calls: int, rate: int, workdir: Path, scraper: Scraper | None) -> tuple[float, int]:
    """One bounded load: (proxy CPU seconds, successful calls)."""
    before = tree_cpu_s([proxy.pid])
    res = harness.run_uac(f"127.0.0.1:{proxy.port}", "uac.xml", calls=calls, rate=rate,
                          timeout_s=calls / rate + 20, workdir=workdir)
    used = tree_cpu_s([proxy.pid]) - before
    if res.failed or res.unfinished:
        log(f"  {res}")
    return used, res.successful


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    calls = int(env("CALLS", "3000"))
    rate = int(env("RATE", "300"))
    rounds = int(env("ROUNDS", "3"))
    interval = float(env("SCRAPE_S", "1"))
    workers = int(env("WORKERS", "1"))
    idle_scrapes = int(env("IDLE_SCRAPES", "50"))
    if calls / rate > 30:
        raise SystemExit("scrape_ab.py: a leg is bounded to 30 s: lower CALLS or raise RATE")
    out = Path(env("OUT", str(ROOT / "bench-results" / time.strftime("scrape_%Y%m%d_%H%M%S")))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    harness.require_sipp()
    gateways: list[harness.Uas] = []
    proxy = None
    try:
        limit = 60 + rounds * 2 * (calls / rate + 25)
        for i in range(2):
            gateways.append(harness.Uas(out, "uas_ok.xml", time_limit_s=limit, name=f"uas{i + 1}").start())
        http = harness.free_port("tcp")
        proxy = harness.Proxy(out / "proxy", harness.dispatcher_list(*gateways),
                              f'[http]\nlisten = "127.0.0.1:{http}"\n',
                              args=["--algorithm", "4", "--workers", str(workers)], ready_timeout=30)
        proxy.start()
        url = f"http://127.0.0.1:{http}/metrics"
        log(f"gdispatch pid {proxy.pid} ({workers} worker(s)); {rounds} rounds of {calls} calls at {rate} cps, "
            f"with and without a scrape of {url} every {interval:g} s")
        rows = []
        scrapes = Scraper(url, interval)  # every scrape of every B leg
        for r in range(rounds):
            per_call = {}
            for kind in ("AB" if r % 2 == 0 else "BA"):
                if kind == "B":
                    with Scraper(url, interval) as s:
                        cpu, ok = leg(proxy, calls, rate, out / f"round{r + 1}_{kind}", s)
                    scrapes.times += s.times
                    scrapes.sizes += s.sizes
                    scrapes.errors += s.errors
                else:
                    cpu, ok = leg(proxy, calls, rate, out / f"round{r + 1}_{kind}", None)
                per_call[kind] = cpu / max(ok, 1) * 1e6
            rows.append(per_call)
            log(f"round {r + 1}: A {per_call['A']:.1f} us/call, B {per_call['B']:.1f} us/call, "
                f"B/A {per_call['B'] / per_call['A']:.3f}")
            if not proxy.alive():
                log("the proxy died")
                return 1
        ratios = [row["B"] / row["A"] for row in rows]
        time.sleep(7)  # the transactions of the last calls linger 5 s ([timers] wt_timer)
        before = tree_cpu_s([proxy.pid])
        start = time.perf_counter()
        for _ in range(idle_scrapes):
            with urllib.request.urlopen(url, timeout=5) as r:
                r.read()
        wall = time.perf_counter() - start
        per_scrape = (tree_cpu_s([proxy.pid]) - before) / max(idle_scrapes, 1)
        leg_a_cpu_per_s = statistics.median(row["A"] for row in rows) * rate / 1e6
        print(f"# scrape A/B: {rounds} rounds of {calls} calls at {rate} cps, {workers} worker(s), "
              f"scrape every {interval:g} s in B")
        print("round  A_us_per_call  B_us_per_call  B/A")
        for i, row in enumerate(rows):
            print(f"{i + 1:>5}  {row['A']:13.1f}  {row['B']:13.1f}  {ratios[i]:.3f}")
        print(f"cpu_per_call_ratio_median={statistics.median(ratios):.3f}")
        if scrapes.times:
            print(f"scrapes={len(scrapes.times)} scrape_errors={scrapes.errors} "
                  f"scrape_ms_median={statistics.median(scrapes.times) * 1000:.1f} "
                  f"scrape_ms_max={max(scrapes.times) * 1000:.1f} scrape_bytes={scrapes.sizes[-1]}")
        print(f"idle_scrape_cpu_ms={per_scrape * 1000:.2f} idle_scrape_wall_ms={wall / idle_scrapes * 1000:.2f} "
              f"(over {idle_scrapes} scrapes; /proc counts in {1000 / HZ:g} ms ticks)")
        print(f"implied_ratio_at_{interval:g}s={1 + per_scrape / interval / leg_a_cpu_per_s:.4f} "
              f"(leg A: {leg_a_cpu_per_s * 100:.0f} % of a core)")
        print(f"results: {out}")
        return 0
    finally:
        if proxy:
            proxy.stop()
        for g in gateways:
            g.stop()


if __name__ == "__main__":
    sys.exit(main())
