"""The latency gdispatch adds next to Kamailio's, over several runs of `bench/latency.sh`.

One run's ratio moves a lot on a shared box (the same code's BYE ratio went from 0.8 to
1.9 between runs of one hour), so this reads every run under a directory
(`run_*/<proxy>/result.txt`, as bench.sh writes them) and prints, for each number of
workers and each of INVITE->200 and BYE->200: the added latency of each proxy (p50
through it minus p50 straight to the gateway, both in the same run), the median of the
ratios of the same runs, the ratio of the medians, and how many single runs were above
LIMIT (1.5, the target of the performance issue).

    python bench/lib/latency_runs.py bench-results/latency_<stamp>
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from summary import read

LIMIT = 1.5
KINDS = (("INVITE->200", "idle_added_inv_p50_us"), ("BYE->200", "idle_added_bye_p50_us"))


def _list(values: list[float], fmt: str) -> str:
    return ", ".join(format(x, fmt) for x in values)


def main(base: str) -> int:
    runs: list[dict[str, dict[str, str]]] = []
    for run in sorted(Path(base).glob("run_*")):
        rows = {r.get("mode", ""): r for r in (read(p) for p in run.glob("*/result.txt"))}
        if rows:
            runs.append(rows)
    if not runs:
        print(f"no run_*/*/result.txt under {base}")
        return 1
    print(f"# {len(runs)} runs under {base}; added latency, p50, in µs")
    for n in ("1", "2", "3", "4"):
        gd, kam = f"gdispatch-w{n}", f"kamailio-c{n}"
        both = [r for r in runs if gd in r and kam in r]
        if not both:
            continue
        for kind, key in KINDS:
            pairs = [(float(r[gd][key]), float(r[kam][key])) for r in both if r[gd].get(key) and r[kam].get(key)]
            if not pairs:
                continue
            g, k = [a for a, _ in pairs], [b for _, b in pairs]
            ratios = [a / b for a, b in pairs]
            print(f"{n} worker(s), {kind}: gdispatch {statistics.median(g):.0f} (runs {_list(g, '.0f')}); "
                  f"Kamailio {statistics.median(k):.0f} (runs {_list(k, '.0f')})")
            print(f"    ratio: median of the runs' ratios {statistics.median(ratios):.2f}, "
                  f"ratio of the medians {statistics.median(g) / statistics.median(k):.2f}, "
                  f"runs above {LIMIT}: {sum(x > LIMIT for x in ratios)} of {len(ratios)} "
                  f"({_list(ratios, '.2f')})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
