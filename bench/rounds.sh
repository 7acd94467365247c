#!/usr/bin/env bash
# rounds.sh - CPU per call at one fixed call rate, the proxies one after another, the same
# step repeated ROUNDS times in one run: the same-run A/B that bench/PROFILE.md quotes
# (a ratio per round, its median, and how many rounds came out at or below 1). A rate
# search (bench.sh) gives one step per rate, too noisy on a shared box for ratios near 1.
#
#   bench/rounds.sh                                            # 7 rounds at 600 calls/s
#   RATE=1000 PROXIES="kamailio-c2 gdispatch-w2" bench/rounds.sh
#   GDISPATCH_BASE=../before PROXIES="base-w2 gdispatch-w2" bench/rounds.sh   # before/after
#
# Environment (defaults): ROUNDS 7, RATE 600, STEP_S 5 (RATE x STEP_S calls per step),
# PROXIES "kamailio-c2 gdispatch-w2" (bench.sh's names: gdispatch-wN, kamailio-cN, base-wN),
# SHAPES "own builtin compact phone", OUT bench-results/rounds_<stamp>; the rest as bench.sh
# (GDISPATCH_BASE, BASE_PY, KAMAILIO_START, GD_CONFIG, PROXY_ARGS). Each round is one bench.sh run
# with no overload step, no latency probe, no TLS step and no second try of a failing
# step (a failed step has no CPU per call and is left out of the medians).
# Bounded: ROUNDS x proxies x shapes steps of RATE x STEP_S calls each.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
case "$PY" in /*) ;; */*) PY="$ROOT/$PY" ;; esac  # relative to the checkout, as make passes it
ROUNDS="${ROUNDS:-7}"
RUN="$(realpath -m "${OUT:-$ROOT/bench-results/$(date +rounds_%Y%m%d_%H%M%S)}")"
mkdir -p "$RUN"
export PY PROXIES="${PROXIES:-kamailio-c2 gdispatch-w2}"
for k in $(seq "$ROUNDS"); do
  echo "round $k of $ROUNDS: $PROXIES at ${RATE:-600} calls/s -> $RUN/round$k"
  RATES="${RATE:-600}" STEP_S="${STEP_S:-5}" OVERLOAD_X=0 LAT_CALLS=0 CONFIRM=0 TLS=0 OUT="$RUN/round$k" \
    "$ROOT/bench/bench.sh" > "$RUN/round$k.log" 2>&1 || { tail -5 "$RUN/round$k.log" >&2; exit 1; }
done
cd "$ROOT/bench/lib" && "$PY" rounds.py "$RUN"
