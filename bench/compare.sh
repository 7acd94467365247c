#!/usr/bin/env bash
# compare.sh - gdispatch next to Kamailio, in the same run, with the external side-by-side
# SIPp harness when it is there: ../shared/bench/run_all.sh relative to the repository root.
# It needs Kamailio (apt-get install -y kamailio) and SIPp (apt-get install -y sip-tester).
# When either the harness or Kamailio is missing, this script says so and exits 0.
#
#   bench/compare.sh                       # SUITES=maxcps (the default here)
#   SUITES="maxcps distribution failover" bench/compare.sh
#
# Four proxies are measured one after the other: Kamailio with children=1 and gdispatch
# with 1 worker, then Kamailio with children=2 and gdispatch with 2 workers (WORKERS2=0:
# only the first two). Results: ./bench-results/run_<stamp>/SUMMARY.md (printed at the end).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
case "$PY" in /*) ;; *) PY="$ROOT/$PY" ;; esac   # the harness runs the command from its own cwd
SHARED_BENCH="$ROOT/../shared/bench"
RUN_ALL="$SHARED_BENCH/run_all.sh"

if [ ! -f "$RUN_ALL" ]; then
  echo "compare.sh: the side-by-side harness ($RUN_ALL) is not available here; nothing to compare."
  echo "compare.sh: bench/bench.sh measures gdispatch alone."
  exit 0
fi
if ! command -v kamailio >/dev/null 2>&1; then
  echo "compare.sh: Kamailio is not installed, so there is nothing to compare against."
  echo "compare.sh: install it with: apt-get install -y kamailio   (then run make bench-compare again)"
  exit 0
fi
command -v sipp >/dev/null 2>&1 || { echo "compare.sh: SIPp is not installed (apt-get install -y sip-tester)" >&2; exit 1; }

export SUITES="${SUITES:-maxcps}"
LOG="$(mktemp "${TMPDIR:-/tmp}/gdispatch-compare.XXXXXX")"
echo "compare.sh: SUITES=$SUITES; running $RUN_ALL (log: $LOG)"
# The gdispatch spec is single-quoted on purpose: $PROXY_ADDR, $DS_LIST and $DS_ALG are
# expanded by the harness when it starts the proxy, from the environment it gives it.
set +e
GD="env GDISPATCH_SOCKET="'$RUN_DIR/gdispatch.sock '"$PY"' -m gdispatch run --config '"$ROOT/bench/compare.toml"' --listen udp:$PROXY_ADDR --list $DS_LIST --algorithm $DS_ALG --workers $CHILDREN'"|$PY"' -m gdispatch rpc --socket $RUN_DIR/gdispatch.sock dispatcher.list'
specs=("kamailio-c1|1|$SHARED_BENCH/kamailio/start.sh" "gdispatch-w1|1|$GD")
if [ "${WORKERS2:-1}" = 1 ]; then
  specs+=("kamailio-c2|2|$SHARED_BENCH/kamailio/start.sh" "gdispatch-w2|2|$GD")
fi
bash "$RUN_ALL" "${specs[@]}" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
results="$(sed -n 's/^results: //p' "$LOG" | tail -1)"
if [ -n "$results" ] && [ -f "$results/SUMMARY.md" ]; then
  echo
  echo "SUMMARY: $results/SUMMARY.md"
  cat "$results/SUMMARY.md"
else
  echo "compare.sh: no SUMMARY.md was written (harness exit status $rc); see $LOG" >&2
  exit 1
fi
exit "$rc"
