#!/usr/bin/env bash
# attack.sh - how gdispatch and Kamailio stand up to attacks from one source on the
# loopback, side by side: a junk UDP flood and an INVITE flood while a legitimate caller
# places calls, TCP connection exhaustion (and one oversized message), reflection
# (amplification) by each kind of refusal, forged in-dialog requests relayed to a third
# party, and idle connections on the control socket. gdispatch with 1 and 2 workers and,
# when Kamailio and the reference start script are on this machine, Kamailio with
# children=1 and 2, one after another in the same run (bench/lib/attack.py per proxy).
# Needs this repository and SIPp; Kamailio is optional. All traffic stays in 127.0.0.0/8
# (the attacker is 127.0.0.66, the forged source 127.0.0.77, the relay target 127.0.0.5);
# every flood and loop is bounded in count and time; every process is a child, stopped
# by its PID.
#
#   bench/attack.sh                                      # every proxy, every scenario
#   PROXIES="gdispatch-w1" SCENARIOS="junk amp" bench/attack.sh
#   CALLS=150 FLOOD_S=5 AMP_WAIT=5 TCP_HOLD=2000 bench/attack.sh   # a quick smoke run
#
# Environment (defaults):
#   PY             .venv/bin/python        the Python that runs gdispatch and this benchmark
#   PROXIES        gdispatch-w1 gdispatch-w2 kamailio-c1 kamailio-c2 (Kamailio's when available)
#   KAMAILIO_START ../shared/bench/kamailio/start.sh   starts Kamailio (PROXY_ADDR, DS_LIST,
#                                          DS_ALG, CHILDREN, RUN_DIR in its environment)
#   GD_CONFIG      bench/compare.toml      gdispatch's settings; the TCP listen address and the
#                                          control socket (in the run directory) are added
#   SCENARIOS      all                     any of: junk invite tcp amp relay ctl (or 1-6)
#   CALLS 1500  RATE 50                    the legitimate caller during the floods
#   FLOOD_S        30                      seconds each flood lasts
#   FLOOD_RATE     0                       datagrams/s of the floods (0: as fast as the flooder can);
#                                          a rate every proxy gets makes their calls comparable
#   FLOOD_CPU      the last core           the core the flooder and the TCP holders are pinned to
#   TCP_HOLD       25000                   TCP connections to open and hold
#   TCP_OPEN_S     60                      seconds the opening may take at most
#   AMP_WAIT       35                      seconds the forged source counts what comes back
#   CTL_IDLE       1000                    idle connections to the control socket
#   OUT            bench-results/attack_<stamp>   where the results go (one folder per proxy)
#
# Prints each proxy's progress, then the summary (also in summary.txt): calls completed
# under each flood, the flood rates, TCP connections held and the answers while they are,
# the amplification ratios per refusal, the forged requests relayed, the control socket.
# Exit status: 0 measured, 1 a proxy did not start or a scenario could not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
case "$PY" in /*) ;; *) PY="$ROOT/$PY" ;; esac

die() { echo "attack.sh: $*" >&2; exit 1; }
command -v sipp >/dev/null 2>&1 || die "SIPp is not installed (apt-get install -y sip-tester, or make bench-attack)"
[ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || die "no Python at $PY (run make install, or set PY)"
[ -r /proc/net/udp ] || die "Linux only: the kernel's counters are read from /proc"
if ! err="$("$PY" -c "import gdispatch.cli" 2>&1)"; then
  echo "$err" | tail -5 >&2
  die "gdispatch cannot be imported by $PY (make install installs it)"
fi
command -v taskset >/dev/null 2>&1 || echo "attack.sh: no taskset (util-linux): the flooder is not pinned to one core" >&2

KAMAILIO_START="${KAMAILIO_START:-$ROOT/../shared/bench/kamailio/start.sh}"
if [ -z "${PROXIES:-}" ]; then
  if command -v kamailio >/dev/null 2>&1 && [ -f "$KAMAILIO_START" ]; then
    PROXIES="gdispatch-w1 gdispatch-w2 kamailio-c1 kamailio-c2"
  else
    echo "attack.sh: Kamailio or its start script ($KAMAILIO_START) is missing: measuring gdispatch alone" >&2
    PROXIES="gdispatch-w1 gdispatch-w2"
  fi
fi
export PY GD_CONFIG="${GD_CONFIG:-$ROOT/bench/compare.toml}" SCENARIOS="${SCENARIOS:-all}"
export CALLS="${CALLS:-1500}" RATE="${RATE:-50}" FLOOD_S="${FLOOD_S:-30}" TCP_HOLD="${TCP_HOLD:-25000}"
export FLOOD_RATE="${FLOOD_RATE:-0}" TCP_OPEN_S="${TCP_OPEN_S:-60}" AMP_WAIT="${AMP_WAIT:-35}" CTL_IDLE="${CTL_IDLE:-1000}"
RUN="$(realpath -m "${OUT:-$ROOT/bench-results/$(date +attack_%Y%m%d_%H%M%S)}")"
mkdir -p "$RUN"
{ echo "proxies=$PROXIES"; echo "scenarios=$SCENARIOS"; echo "calls=$CALLS rate=$RATE flood_s=$FLOOD_S flood_rate=$FLOOD_RATE"
  echo "tcp_hold=$TCP_HOLD tcp_open_s=$TCP_OPEN_S amp_wait=$AMP_WAIT ctl_idle=$CTL_IDLE"
  echo "nproc=$(nproc) nofile=$(ulimit -Sn)/$(ulimit -Hn) kernel=$(uname -r)"; } > "$RUN/settings.txt"
status=0
for p in $PROXIES; do
  n="${p##*[!0-9]}"
  echo "=== $p"
  case "$p" in
    gdispatch-w*)
      NAME="$p" OUT="$RUN/$p" PROXY_CMD="" WORKERS="$n" "$PY" "$ROOT/bench/lib/attack.py" || status=1 ;;
    kamailio-c*)
      [ -f "$KAMAILIO_START" ] || die "no $KAMAILIO_START"
      command -v kamailio >/dev/null 2>&1 || die "kamailio is not installed (apt-get install -y kamailio)"
      NAME="$p" OUT="$RUN/$p" PROXY_CMD="$KAMAILIO_START" CHILDREN="$n" \
        "$PY" "$ROOT/bench/lib/attack.py" || status=1 ;;
    *) die "unknown proxy $p (gdispatch-wN or kamailio-cN)" ;;
  esac
done
echo "=== summary"
"$PY" "$ROOT/bench/lib/attack_summary.py" "$RUN" | tee "$RUN/summary.txt" || status=1
exit "$status"
