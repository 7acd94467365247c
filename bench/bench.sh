#!/usr/bin/env bash
# bench.sh - the highest call rate each proxy sustains, its CPU cost per call and its added
# latency at low load: gdispatch with 1 and 2 workers and, when Kamailio and the reference
# start script are on this machine, Kamailio with children=1 and 2, one after another in
# the same run. Needs this repository and SIPp (apt-get install -y sip-tester); Kamailio is
# optional (apt-get install -y kamailio). All traffic stays on 127.0.0.1; every load step is
# bounded in calls (-m) and time (-timeout plus a hard limit).
#
#   bench/bench.sh                         # every proxy available, the summary at the end
#   PROXIES="gdispatch-w1" bench/bench.sh  # one of: gdispatch-wN, kamailio-cN, base-wN (N workers)
#   SHAPES="own phone" bench/bench.sh      # only these callers' shapes
#   GDISPATCH_BASE=../main bench/bench.sh  # also base-w1, base-w2: that checkout's code, same run
#   RATES="500 1000" STEP_S=3 bench/bench.sh
#   DIRECT=1 bench/bench.sh                # no proxy: UAC -> UAS, the harness ceiling
#   TLS=0 bench/bench.sh                   # without the TLS step (bench/tls.sh, make bench-tls)
#
# Environment (defaults):
#   PY             .venv/bin/python        the Python that runs gdispatch and this benchmark
#   PROXIES        kamailio-c1 gdispatch-w1 kamailio-c2 gdispatch-w2 (Kamailio's when available;
#                                          with GDISPATCH_BASE, base-w1 and base-w2 next to gdispatch's)
#   SHAPES         "own builtin compact phone"   the callers' shapes, each with its own rate search
#                                          (own: tests/scenarios/uac.xml, builtin: uac_sipp_builtin.xml,
#                                          compact: uac_compact.xml, phone: uac_phone.xml; or a .xml file)
#   SHAPE_PAUSE_S  3                       idle seconds between two shapes
#   GDISPATCH_BASE ""                      another checkout: base-wN run its gdispatch package
#                                          (PYTHONPATH=that checkout, BASE_PY), for a before/after run
#   BASE_PY        $PY                     the Python of base-wN (a venv of another interpreter, with
#                                          gdispatch's dependencies; relative paths from this checkout):
#                                          GDISPATCH_BASE=. BASE_PY=... compares two interpreters on the same code
#   KAMAILIO_START ../shared/bench/kamailio/start.sh   starts Kamailio (PROXY_ADDR, DS_LIST,
#                                          DS_ALG, CHILDREN, RUN_DIR in its environment)
#   GD_CONFIG      bench/compare.toml      gdispatch's settings: Kamailio's keepalive settings
#   RATES          "500 1000 1500 2000 2500 3000 3500 4000 4500 5000 6000"   calls/s tried in order
#   STEP_S         4                       seconds per step (RATE x STEP_S calls)
#   LAT_CALLS      300   LAT_RATE 50       unloaded latency probe: calls, calls/s (0: skip)
#   ALG            4                       the algorithm (round robin)
#   PROXY_ARGS     ""                      more gdispatch flags, e.g. "--config FILE"
#   DEST_ATTRS     ""                      more attrs on each gateway's list line, e.g. "prefix=011"
#   PROBE_DESTS    0                       extra destinations (set 2) pinged beside the calls
#   PROBE_INTERVAL 1                       their ping interval, seconds
#   OVERLOAD_X     2                       then one step at OVERLOAD_X x the highest passing rate
#                                          (0: none): calls completed per second past capacity
#   CONFIRM        1                       run a failing step once more before stopping
#   MAX_FAIL_PCT 0.1  MAX_RETRANS_PCT 1.0  MIN_RATE_FRAC 0.95   the pass criteria
#   DIRECT         0                       1: no proxy
#   OUT            bench-results/bench_<stamp>   where the results go (one folder per proxy)
#   TLS            1                       0: no TLS step. 1: after the UDP proxies, bench/tls.sh
#                                          (SIP over TLS, connections reused: max calls/s and CPU
#                                          per call at 200 calls/s) for the gdispatch-wN and
#                                          kamailio-cN of PROXIES (TLS_PROXIES overrides), Kamailio
#                                          when its tls module is installed; results in OUT/tls
#                                          (its TLS_* knobs: bench/lib/tlsbench.py)
#
# Prints each proxy's steps, then a summary: max_cps, proxy CPU µs per call, INVITE->200 and
# BYE->200 at low load (of the first shape), gdispatch's ratios to Kamailio with the same
# number of workers, then the shapes: shape x proxy -> max cps, CPU µs per call at the
# highest rate every shape and proxy passed and at each rate, the ratio to Kamailio on the
# same shape and to the same proxy's cheapest shape.
# Then the TLS step's table (TLS=1): each proxy's highest rate over TLS, CPU µs per call at
# 200 calls/s and the ratio to Kamailio with the same number of workers. The last lines
# are `max_cps=N` and `proxy_cpu_us_per_call=N` of the first gdispatch-wN run, if any.
# Exit status: 0 measured, 1 a proxy did not start or answer.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
case "$PY" in /*) ;; *) PY="$ROOT/$PY" ;; esac
BASE_PY="${BASE_PY:-$PY}"
case "$BASE_PY" in /*) ;; *) BASE_PY="$ROOT/$BASE_PY" ;; esac

die() { echo "bench.sh: $*" >&2; exit 1; }
command -v sipp >/dev/null 2>&1 || die "SIPp is not installed (apt-get install -y sip-tester, or make bench)"
[ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || die "no Python at $PY (run make install, or set PY)"
[ -r /proc/stat ] || die "Linux only: the CPU accounting reads /proc"
export OVERLOAD_X="${OVERLOAD_X:-2}"
export PY RATES="${RATES:-500 1000 1500 2000 2500 3000 3500 4000 4500 5000 6000}" STEP_S="${STEP_S:-4}"
export SHAPES="${SHAPES:-own builtin compact phone}"
if [ "${DIRECT:-0}" = 1 ]; then
  exec "$PY" "$ROOT/bench/lib/maxcps.py"
fi
if ! err="$("$PY" -c "import gdispatch.cli" 2>&1)"; then
  echo "$err" | tail -5 >&2
  die "gdispatch cannot be imported by $PY (make install installs it)"
fi

KAMAILIO_START="${KAMAILIO_START:-$ROOT/../shared/bench/kamailio/start.sh}"
BASE=""
if [ -n "${GDISPATCH_BASE:-}" ]; then
  BASE="$(realpath -e "$GDISPATCH_BASE")" || die "GDISPATCH_BASE=$GDISPATCH_BASE does not exist"
  [ -f "$BASE/gdispatch/__init__.py" ] || die "no gdispatch package in $BASE"
  # The base proxies must run that checkout's code, not this venv's installed package.
  [ -x "$BASE_PY" ] || die "no Python at BASE_PY=$BASE_PY"
  where="$(cd /tmp && PYTHONPATH="$BASE" PYTHONDONTWRITEBYTECODE=1 "$BASE_PY" -c "import gdispatch.cli, os; print(os.path.dirname(gdispatch.__file__))")" \
    || die "gdispatch from $BASE cannot be imported by $BASE_PY"
  [ "$where" = "$BASE/gdispatch" ] || die "PYTHONPATH=$BASE imports gdispatch from $where"
fi
USER_PROXIES="${PROXIES:-}"
if [ -z "${PROXIES:-}" ]; then
  if command -v kamailio >/dev/null 2>&1 && [ -f "$KAMAILIO_START" ]; then
    PROXIES="kamailio-c1 ${BASE:+base-w1 }gdispatch-w1 kamailio-c2 ${BASE:+base-w2 }gdispatch-w2"
  else
    echo "bench.sh: Kamailio or its start script ($KAMAILIO_START) is missing: measuring gdispatch alone" >&2
    PROXIES="${BASE:+base-w1 }gdispatch-w1 ${BASE:+base-w2 }gdispatch-w2"
  fi
fi
GD_CONFIG="${GD_CONFIG:-$ROOT/bench/compare.toml}"
RUN="$(realpath -m "${OUT:-$ROOT/bench-results/$(date +bench_%Y%m%d_%H%M%S)}")"
mkdir -p "$RUN"
status=0
for p in $PROXIES; do
  n="${p##*[!0-9]}"
  case "$p" in
    gdispatch-w*)
      NAME="$p" OUT="$RUN/$p" PROXY_CMD="" GD_PYTHONPATH="" \
        PROXY_ARGS="--config $GD_CONFIG --workers $n ${PROXY_ARGS:-}" \
        "$PY" "$ROOT/bench/lib/maxcps.py" || status=1 ;;
    base-w*)
      [ -n "$BASE" ] || die "$p needs GDISPATCH_BASE (another checkout of gdispatch)"
      NAME="$p" OUT="$RUN/$p" PROXY_CMD="" GD_PYTHONPATH="$BASE" \
        PROXY_ARGS="--config $GD_CONFIG --workers $n ${PROXY_ARGS:-}" \
        "$BASE_PY" "$ROOT/bench/lib/maxcps.py" || status=1 ;;
    kamailio-c*)
      [ -f "$KAMAILIO_START" ] || die "no $KAMAILIO_START"
      NAME="$p" OUT="$RUN/$p" PROXY_CMD="$KAMAILIO_START" CHILDREN="$n" \
        "$PY" "$ROOT/bench/lib/maxcps.py" || status=1 ;;
    *) die "unknown proxy $p (gdispatch-wN, kamailio-cN or base-wN)" ;;
  esac
  echo
done
if [ "${TLS:-1}" != 0 ]; then
  # SIP over TLS after UDP: the gdispatch-wN and kamailio-cN of PROXIES when it was given
  # (base-wN not: the TLS step runs this checkout's code), else bench/tls.sh's own choice
  # (Kamailio needs its tls module, not the reference start script). Its table comes again
  # in the summary below.
  tls_proxies="${TLS_PROXIES:-}"
  if [ -z "$tls_proxies" ] && [ -n "$USER_PROXIES" ]; then
    for p in $USER_PROXIES; do
      case "$p" in gdispatch-w*|kamailio-c*) tls_proxies="$tls_proxies $p" ;; esac
    done
    [ -n "$tls_proxies" ] || tls_proxies=none
  fi
  echo "=== TLS ==="
  if [ "$tls_proxies" = none ]; then
    echo "bench.sh: no gdispatch-wN or kamailio-cN in PROXIES: no TLS step"
  else
    OUT="$RUN/tls" TLS_PROXIES="$tls_proxies" TLS_SUMMARY=0 PY="$PY" "$ROOT/bench/tls.sh" || status=1
  fi
  echo
fi
echo "=== summary ==="
"$PY" "$ROOT/bench/lib/summary.py" "$RUN" || status=1
if [ -d "$RUN/tls" ]; then
  echo
  "$PY" "$ROOT/bench/lib/tlsbench.py" --summary "$RUN/tls" || status=1
fi
first="$(ls -d "$RUN"/gdispatch-w* 2>/dev/null | head -1 || true)"  # none when PROXIES has only base-wN or Kamailio
if [ -n "$first" ] && [ -f "$first/result.txt" ]; then
  grep -E '^(max_cps|proxy_cpu_us_per_call)=' "$first/result.txt"
fi
exit "$status"
