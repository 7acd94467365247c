#!/usr/bin/env bash
# bench.sh - gdispatch's maximum sustainable call rate and its CPU cost per call.
# Needs only this repository and SIPp (apt-get install -y sip-tester). All traffic stays on
# 127.0.0.1; every load step is bounded in calls (-m) and time (-timeout plus a hard limit).
#
#   bench/bench.sh                         # 2 UAS behind gdispatch (round robin)
#   RATES="500 1000" STEP_S=3 bench/bench.sh
#   DIRECT=1 bench/bench.sh                # no proxy: UAC -> UAS, the harness ceiling
#
# Environment (defaults):
#   PY             .venv/bin/python        the Python that runs gdispatch and this benchmark
#   RATES          "250 500 1000 1500 2000 2500 3000"   call rates tried in order (calls/s)
#   STEP_S         5                       seconds per step (RATE x STEP_S calls)
#   LAT_CALLS      300   LAT_RATE 50       unloaded latency probe: calls, calls/s (0: skip)
#   ALG            4                       gdispatch --algorithm
#   PROXY_ARGS     ""                      more gdispatch flags, e.g. "--workers 2" or "--config FILE"
#   DEST_ATTRS     ""                      more attrs on each gateway's list line, e.g. "prefix=011"
#   PROBE_DESTS    0                       extra destinations (set 2) pinged beside the calls
#   PROBE_INTERVAL 1                       their ping interval, seconds
#   CONFIRM        1                       run a failing step once more before stopping
#   MAX_FAIL_PCT 0.1  MAX_RETRANS_PCT 1.0  MIN_RATE_FRAC 0.95   the pass criteria
#   DIRECT         0                       1: no proxy
#   OUT            bench-results/bench_<stamp>[_direct]   where the results go
#
# Prints a table of the steps and, last, `max_cps=N` and `proxy_cpu_us_per_call=N` (at the
# highest passing step). Writes steps.tsv, result.txt, latency.txt, the proxy log and the
# SIPp files under OUT. Exit status: 0 measured, 1 the proxy did not start or answer.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"

die() { echo "bench.sh: $*" >&2; exit 1; }
command -v sipp >/dev/null 2>&1 || die "SIPp is not installed (apt-get install -y sip-tester, or make bench)"
[ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || die "no Python at $PY (run make install, or set PY)"
[ -r /proc/stat ] || die "Linux only: the CPU accounting reads /proc"
if [ "${DIRECT:-0}" != 1 ]; then
  if ! err="$("$PY" -c "import gdispatch.cli" 2>&1)"; then
    echo "$err" | tail -5 >&2
    die "gdispatch cannot be imported by $PY (make install installs it)"
  fi
fi
exec "$PY" "$ROOT/bench/lib/maxcps.py"
