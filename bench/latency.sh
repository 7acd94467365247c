#!/usr/bin/env bash
# latency.sh - the latency gdispatch adds next to Kamailio's, over RUNS runs (default 7) of
# bench.sh's low-load probe only (600 calls at 50 calls/s through each proxy, and straight
# to the gateway just before), then the medians and ratios of them all
# (bench/lib/latency_runs.py). One run's ratio moves too much on a shared box to judge by.
#
#   bench/latency.sh                 # RUNS=7, PROXIES as in bench.sh (Kamailio's when there)
#   RUNS=3 bench/latency.sh
#
# Results: ./bench-results/latency_<stamp>/run_<i>/ (about 1.5 minutes a run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
RUNS="${RUNS:-7}"
BASE="$(realpath -m "${OUT:-$ROOT/bench-results/$(date +latency_%Y%m%d_%H%M%S)}")"
mkdir -p "$BASE"
for i in $(seq 1 "$RUNS"); do
  echo "=== run $i of $RUNS"
  OUT="$BASE/run_$i" RATES=100 STEP_S=1 OVERLOAD_X=0 TLS=0 LAT_CALLS="${LAT_CALLS:-600}" PY="$PY" \
    "$ROOT/bench/bench.sh" | sed -n '/=== summary ===/,$p'
done
echo "=== all runs"
"$PY" "$ROOT/bench/lib/latency_runs.py" "$BASE"
