"""The tables `make bench` ends with: one row per proxy run (result.txt of each maxcps.py run
under one directory; the figures of its first caller shape), then gdispatch's ratios to
Kamailio for the same number of workers (and to base-wN, another checkout's code, when the
run has it). The latency ratios are those of the latency each proxy adds (p50 through it
minus p50 straight to the gateway, measured just before it in the same run).

Then the callers' shapes (bench.sh SHAPES): one row per shape and proxy with its max cps,
its CPU µs per call at the common rate (the highest rate every shape and proxy passed; CPU
per call falls as the rate rises, so only figures at one rate compare), the ratio to
Kamailio with the same number of workers on the same shape (`vs_kamailio`), to the same
proxy's cheapest shape (`vs_best_shape`) and, with base-wN in the run, gdispatch-wN's
ratio to it (`vs_base`). When no rate was passed by all, each ratio is taken at the highest
rate both of its sides passed (marked `*`). Then the CPU µs per call of each shape and proxy
at every rate it passed, and in parentheses at the rate it failed (failed calls cost too:
only a hint).

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


def ratio(a: str | None, b: str | None) -> str:
    try:
        return f"{float(a) / float(b):.2f}"
    except (TypeError, ValueError, ZeroDivisionError):  # TypeError: a figure not measured (LAT_CALLS=0)
        return "NA"


def workers(name: str) -> str:
    return name[len(name.rstrip("0123456789")):]


def cpu_at(row: dict[str, str], shape: str, rate: int) -> float | None:
    try:
        return float(row[f"shape_{shape}_cpu_us_at_{rate}"])
    except (KeyError, ValueError):
        return None


def shapes_table(rows: list[dict[str, str]]) -> list[str]:
    runs = [r for r in rows if r.get("shapes")]
    shapes: list[str] = []
    for r in runs:
        shapes += [x for x in r["shapes"].split() if x not in shapes]
    rates = sorted({int(k.rsplit("_", 1)[1]) for r in runs for k in r
                    if k.startswith("shape_") and ("_cpu_us_at_" in k or "_cpu_us_failed_at_" in k)})
    if not runs or not shapes:
        return []
    cells = [(r, sh) for sh in shapes for r in runs if sh in r["shapes"].split()]

    def common(pairs) -> int | None:
        ok = [rate for rate in rates if all(cpu_at(r, sh, rate) is not None for r, sh in pairs)]
        return ok[-1] if ok else None

    everywhere = common(cells)
    by_name = {r.get("mode", ""): r for r in runs}

    def ratio_of(a: tuple[dict[str, str], str], b: tuple[dict[str, str], str] | None, at: int | None = None) -> str:
        if b is None:
            return "-"
        rate = everywhere or at or common([a, b])
        if rate is None:
            return "NA"
        x, y = cpu_at(*a, rate), cpu_at(*b, rate)
        if x is None or y is None or y == 0:
            return "NA"
        return f"{x / y:.2f}" + ("" if everywhere else f"*@{rate}")

    has_base = any(n.startswith("base-w") for n in by_name)
    head = ["shape", "proxy", "max_cps", "first_fail", f"cpu_us@{everywhere or 'NA'}", "vs_kamailio", "vs_best_shape"]
    if has_base:
        head.append("vs_base")
    table = [head]
    for r, sh in cells:
        name = r.get("mode", "")
        n = workers(name)
        kam = by_name.get(f"kamailio-c{n}")
        to_kam = None if name.startswith("kamailio") or kam is None or sh not in kam["shapes"].split() else (kam, sh)
        own = r["shapes"].split()

        def passed_at(rate: int, r=r, own=own) -> list[str]:
            return [x for x in own if cpu_at(r, x, rate) is not None]

        # The cheapest shape at the common rate; failing that, at the rate (of those this
        # shape passed) where most of this proxy's shapes passed.
        at = everywhere or max((x for x in rates if cpu_at(r, sh, x) is not None),
                               key=lambda x: (len(passed_at(x)), x), default=None)
        best = min(passed_at(at), key=lambda x, at=at, r=r: cpu_at(r, x, at)) if at else None
        row = [sh, name, r.get(f"shape_{sh}_max_cps", "NA"), r.get(f"shape_{sh}_first_failing_rate", "NA"),
               f"{cpu_at(r, sh, everywhere):.0f}" if everywhere else "NA",
               ratio_of((r, sh), to_kam), ratio_of((r, sh), (r, best) if best else None, at)]
        if has_base:
            base = by_name.get(f"base-w{n}")
            row.append(ratio_of((r, sh), (base, sh)) if name.startswith("gdispatch-w") and base else "-")
        table.append(row)
    out = [f"# callers' shapes: CPU us per call at {everywhere} calls/s, the highest rate every shape and "
           "proxy passed" if everywhere else "# callers' shapes: no rate passed by every shape and proxy "
           "(ratios at the highest rate both sides passed: *@rate)"]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    out += ["  ".join(str(c).rjust(w) for c, w in zip(row, widths)) for row in table]
    per_rate = [["shape", "proxy", *map(str, rates)]]
    def cell(r: dict[str, str], sh: str, rate: int) -> str:
        v = cpu_at(r, sh, rate)
        if v is not None:
            return f"{v:.0f}"
        failed = r.get(f"shape_{sh}_cpu_us_failed_at_{rate}", "")
        return f"({failed})" if failed.replace(".", "").isdigit() else "-"

    for r, sh in cells:
        per_rate.append([sh, r.get("mode", ""), *(cell(r, sh, x) for x in rates)])
    widths = [max(len(row[i]) for row in per_rate) for i in range(len(per_rate[0]))]
    out.append("# CPU us per call at each rate ((N): the step failed, twice with CONFIRM=1; -: not reached)")
    out += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in per_rate]
    return out


def main(run_dir: str) -> int:
    rows = [read(p) for p in sorted(Path(run_dir).glob("*/result.txt"), key=lambda p: p.stat().st_mtime)]
    if not rows:
        print(f"no result.txt under {run_dir}")
        return 1
    table = [[h for h, _ in COLS]] + [[r.get(k, "NA") for _, k in COLS] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLS))]
    first = rows[0].get("shapes", "own").split()[0] if rows[0].get("shapes") else "own"
    print(f"# one run, one proxy after another, same machine and settings ({run_dir}); "
          f"the figures of the first caller shape ({first})")
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
    for n in ("1", "2", "3", "4"):
        g, b = by_name.get(f"gdispatch-w{n}"), by_name.get(f"base-w{n}")
        if g and b:
            print(f"gdispatch/base with {n} worker(s): calls/s {ratio(g['max_cps'], b['max_cps'])}, "
                  f"CPU per call {ratio(g['proxy_cpu_us_per_call'], b['proxy_cpu_us_per_call'])} "
                  f"(base: {b.get('code', 'NA')})")
    lines = shapes_table(rows)
    if lines:
        print()
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
