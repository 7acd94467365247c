"""The table `make bench` ends with: one row per proxy run (result.txt of each maxcps.py run
under one directory), then gdispatch's ratios to Kamailio for the same number of workers.
The latency ratios are those of the latency each proxy adds (p50 through it minus p50
straight to the gateway, measured just before it in the same run).

    python bench/lib/summary.py bench-results/bench_<stamp>
"""

from __future__ import annotations

import sys
from pathlib import Path

COLS = [("proxy", "mode"), ("max_cps", "max_cps"), ("first_fail", "first_failing_rate"),
        ("cpu_us_per_call", "proxy_cpu_us_per_call"), ("INVITE->200_p50_us", "idle_inv_p50_us"),
        ("INVITE_p99", "idle_inv_p99_us"), ("BYE->200_p50_us", "idle_bye_p50_us"), ("BYE_p99", "idle_bye_p99_us"),
        ("INVITE_added_p50", "idle_added_inv_p50_us"), ("BYE_added_p50", "idle_added_bye_p50_us"),
        ("overload_cps", "overload_rate"), ("ok_cps_then", "overload_ok_cps"),
        ("ok_per_offered_s", "overload_ok_per_s"), ("failed_%", "overload_fail_pct"),
        ("retrans_%", "overload_retrans_pct")]


def read(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        k, _, v = line.partition("=")
        out[k] = v
    return out


def ratio(a: str, b: str) -> str:
    try:
        return f"{float(a) / float(b):.2f}"
    except (ValueError, ZeroDivisionError):
        return "NA"


def main(run_dir: str) -> int:
    rows = [read(p) for p in sorted(Path(run_dir).glob("*/result.txt"), key=lambda p: p.stat().st_mtime)]
    if not rows:
        print(f"no result.txt under {run_dir}")
        return 1
    table = [[h for h, _ in COLS]] + [[r.get(k, "NA") for _, k in COLS] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLS))]
    print(f"# one run, one proxy after another, same machine and settings ({run_dir})")
    for row in table:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    by_name = {r.get("mode", ""): r for r in rows}
    for n in ("1", "2", "3", "4"):
        g, k = by_name.get(f"gdispatch-w{n}"), by_name.get(f"kamailio-c{n}")
        if g and k:
            print(f"gdispatch/kamailio with {n} worker(s): calls/s {ratio(g['max_cps'], k['max_cps'])}, "
                  f"CPU per call {ratio(g['proxy_cpu_us_per_call'], k['proxy_cpu_us_per_call'])}, "
                  f"added latency INVITE->200 p50 "
                  f"{ratio(g.get('idle_added_inv_p50_us'), k.get('idle_added_inv_p50_us'))}, "
                  f"BYE->200 p50 {ratio(g.get('idle_added_bye_p50_us'), k.get('idle_added_bye_p50_us'))} "
                  f"(round trips: {ratio(g.get('idle_inv_p50_us'), k.get('idle_inv_p50_us'))} and "
                  f"{ratio(g.get('idle_bye_p50_us'), k.get('idle_bye_p50_us'))})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
