"""The summary of `bench/rounds.sh`: CPU per call at one fixed rate, proxy by proxy and
shape by shape, over several rounds of one run, and each gdispatch's ratio to Kamailio
with the same number of workers (or to base-wN, another checkout's code), round by round.

A rate search gives one step per rate and proxy, and on a shared box one step's figure
moves by 15-20 %: no ratio near 1 separates from that. The same fixed-rate step repeated,
the proxies one after another in every round, gives a ratio per round; its median and
how many rounds came out at or below 1 are what bench/PROFILE.md quotes.

    python bench/lib/rounds.py bench-results/rounds_<stamp>       # round1, round2, ...
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from summary import cpu_at, read, workers


def load(run: Path) -> tuple[dict[tuple[str, str], dict[int, float]], int | None]:
    """(shape, proxy) -> {round: CPU µs per call at the run's rate}, and that rate."""
    figures: dict[tuple[str, str], dict[int, float]] = {}
    rate = None
    for round_dir in sorted(run.glob("round*")):
        if not round_dir.is_dir() or not round_dir.name[5:].isdigit():
            continue
        k = int(round_dir.name[5:])
        for result in sorted(round_dir.glob("*/result.txt")):
            row = read(result)
            rate = int(row["rates"].split()[0])
            for shape in row.get("shapes", "").split():
                cpu = cpu_at(row, shape, rate)
                if cpu is not None:  # the step failed: its CPU says nothing of a call
                    figures.setdefault((shape, row["mode"]), {})[k] = cpu
    return figures, rate


def references(proxy: str, proxies: set[str]) -> list[str]:
    """What a gdispatch or base run is compared with: Kamailio with as many children, and
    for gdispatch-wN base-wN (the code before a change) and gdispatch-w1 (what the other
    workers cost at this rate)."""
    if proxy.startswith("kamailio"):
        return []
    n = workers(proxy)
    wanted = [f"kamailio-c{n}"]
    if proxy.startswith("gdispatch"):
        wanted += [f"base-w{n}"] + (["gdispatch-w1"] if n != "1" else [])
    return [ref for ref in wanted if ref in proxies]


def main(run_dir: str) -> int:
    figures, rate = load(Path(run_dir))
    if not figures:
        print(f"rounds.py: no round with a passing step under {run_dir}", file=sys.stderr)
        return 1
    proxies = {p for _s, p in figures}
    shapes = list(dict.fromkeys(s for s, _p in figures))
    print(f"# CPU µs per call at {rate} calls/s: median over the rounds; ratio = this proxy / the "
          "reference in the same round (median, rounds at or below 1, every round)")
    print(f"{'shape':>8} {'proxy':>13} {'rounds':>6} {'median':>7} {'reference':>13} {'ratio':>6} "
          f"{'<=1':>5}  per round")
    for shape in shapes:
        for proxy in sorted(proxies, key=lambda p: (workers(p), not p.startswith("kamailio"), p)):
            mine = figures.get((shape, proxy))
            if not mine:
                continue
            head = f"{shape:>8} {proxy:>13} {len(mine):>6} {statistics.median(mine.values()):>7.0f}"
            compared = False
            for ref in references(proxy, proxies):
                theirs = figures.get((shape, ref), {})
                ratios = [mine[k] / theirs[k] for k in sorted(mine) if k in theirs]
                if ratios:
                    print(f"{head} {ref:>13} {statistics.median(ratios):>6.3f} "
                          f"{sum(r <= 1 for r in ratios):>2}/{len(ratios):<2}  " + " ".join(f"{r:.2f}" for r in ratios))
                    compared = True
            if not compared:
                print(head)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
