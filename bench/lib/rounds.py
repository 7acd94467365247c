"""The summary of `bench/rounds.sh`: CPU per call at one fixed rate, proxy by proxy and
shape by shape, over several rounds of one run, and each gdispatch's ratio to Kamailio
with the same number of workers (or to base-wN, another checkout's code), round by round.

A rate search gives one step per rate and proxy, and on a shared box one step's figure
moves by 15-20 %: no ratio near 1 separates from that. The same fixed-rate step repeated,
the proxies one after another in every round, gives a ratio per round; its median and
how many rounds came out at or below 1 are what bench/PROFILE.md quotes.

A second table divides each step's CPU per call by the CPU the two SIPp gateways spent
in the same step (`uas_cpu_pct` of steps.tsv): they do the same work per call behind
every proxy, so their CPU is a yardstick of how fast the shared box ran in those
seconds, and the ratios move much less from round to round. It is a yardstick, not a
clean one: how a proxy spaces what it sends changes how often the gateways wake, so the
raw table stays the headline.

    python bench/lib/rounds.py bench-results/rounds_<stamp>       # round1, round2, ...
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

from summary import cpu_at, read, workers

Figures = dict[tuple[str, str], dict[int, float]]


def load(run: Path) -> tuple[Figures, Figures, int | None]:
    """(shape, proxy) -> {round: CPU µs per call at the run's rate}, the same divided by
    the gateways' CPU % in that step, and the rate."""
    figures: Figures = {}
    yardstick: Figures = {}
    rate = None
    for round_dir in sorted(run.glob("round*")):
        if not round_dir.is_dir() or not round_dir.name[5:].isdigit():
            continue
        k = int(round_dir.name[5:])
        for result in sorted(round_dir.glob("*/result.txt")):
            row = read(result)
            rate = int(row["rates"].split()[0])
            gateways = gateways_cpu(result.parent / "steps.tsv", rate)
            for shape in row.get("shapes", "").split():
                cpu = cpu_at(row, shape, rate)
                if cpu is not None:  # the step failed: its CPU says nothing of a call
                    figures.setdefault((shape, row["mode"]), {})[k] = cpu
                    if gateways.get(shape):
                        yardstick.setdefault((shape, row["mode"]), {})[k] = cpu / gateways[shape]
    return figures, yardstick, rate


def gateways_cpu(steps: Path, rate: int) -> dict[str, float]:
    """shape -> the gateways' CPU % in the passing step at `rate` (maxcps.py's steps.tsv)."""
    out: dict[str, float] = {}
    if not steps.exists():
        return out
    with steps.open(newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            try:
                if row["pass"] == "1" and int(row["rate"]) == rate:
                    out[row["shape"]] = float(row["uas_cpu_pct"])
            except (KeyError, ValueError):
                continue
    return out


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
    figures, yardstick, rate = load(Path(run_dir))
    if not figures:
        print(f"rounds.py: no round with a passing step under {run_dir}", file=sys.stderr)
        return 1
    print(f"# CPU µs per call at {rate} calls/s: median over the rounds; ratio = this proxy / the "
          "reference in the same round (median, rounds at or below 1, every round)")
    table(figures, "median")
    if yardstick:
        print()
        print("# the same, each step's CPU per call divided by the gateways' CPU % in that step "
              "(a yardstick of the box's speed in those seconds)")
        table(yardstick, "per %", digits=2)
    return 0


def table(figures: Figures, column: str, digits: int = 0) -> None:
    proxies = {p for _s, p in figures}
    shapes = list(dict.fromkeys(s for s, _p in figures))
    print(f"{'shape':>8} {'proxy':>13} {'rounds':>6} {column:>7} {'reference':>13} {'ratio':>6} "
          f"{'<=1':>5}  per round")
    for shape in shapes:
        for proxy in sorted(proxies, key=lambda p: (workers(p), not p.startswith("kamailio"), p)):
            mine = figures.get((shape, proxy))
            if not mine:
                continue
            head = f"{shape:>8} {proxy:>13} {len(mine):>6} {statistics.median(mine.values()):>7.{digits}f}"
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


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
