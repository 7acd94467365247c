#!/usr/bin/env bash
# syscalls.sh - the system calls a proxy makes per call, by name, at one fixed call rate:
# one bench.sh step per proxy, and while it runs a window of WINDOW_S seconds counted with
# perf's syscall tracepoints (the whole box, then kept to the proxy's processes and, for
# reference, SIPp's). What a proxy pays the kernel per call, side by side with Kamailio;
# bench/PROFILE.md (eighteenth pass) quotes it.
#
#   bench/syscalls.sh                                    # kamailio-c2, gdispatch-w2, builtin shape
#   PROXIES="gdispatch-w1" SHAPE=own RATE=1000 bench/syscalls.sh
#
# Environment (defaults): PROXIES "kamailio-c2 gdispatch-w2" (bench.sh's names), SHAPE
# builtin (one of bench.sh's SHAPES), RATE 1500, STEP_S 16, WINDOW_S 5 (starting 3 s into
# the step), OUT bench-results/syscalls_<stamp>; the rest as bench.sh. Needs perf (apt-get
# install -y linux-perf) with access to the syscalls tracepoints (root). `write` is not
# counted: perf's own writes to its output would count themselves.
# Bounded: one step of RATE x STEP_S calls per proxy, one perf window each.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v perf >/dev/null 2>&1 || { echo "syscalls.sh: perf is not installed (apt-get install -y linux-perf)" >&2; exit 1; }
RATE="${RATE:-1500}" STEP_S="${STEP_S:-16}" WINDOW_S="${WINDOW_S:-5}" SHAPE="${SHAPE:-builtin}"
RUN="$(realpath -m "${OUT:-$ROOT/bench-results/$(date +syscalls_%Y%m%d_%H%M%S)}")"
mkdir -p "$RUN"
NAMES="sendto sendmsg sendmmsg recvfrom recvmsg recvmmsg epoll_wait epoll_pwait poll select futex getpid clock_gettime read"
EVENTS="$(for s in $NAMES; do printf 'syscalls:sys_enter_%s,' "$s"; done)"
EVENTS="${EVENTS%,}"

for proxy in ${PROXIES:-kamailio-c2 gdispatch-w2}; do
  out="$RUN/$proxy"
  RATES="$RATE" STEP_S="$STEP_S" SHAPES="$SHAPE" PROXIES="$proxy" OVERLOAD_X=0 LAT_CALLS=0 CONFIRM=0 TLS=0 \
    OUT="$out" "$ROOT/bench/bench.sh" > "$out.log" 2>&1 &
  bench=$!
  # The step has started once the caller runs (bounded: 60 s for the proxy to start).
  for _ in $(seq 240); do
    pgrep -f -- "-sf .*/uac[^ ]*\.xml .*-r $RATE " >/dev/null && break
    kill -0 "$bench" 2>/dev/null || break
    sleep 0.25
  done
  sleep 3
  # The proxy's processes: those naming its folder (SIPp's caller does too: left out) and
  # their children (a gdispatch worker).
  found="$(pgrep -f -- "$out/" || true)"
  for p in $found; do found+=" $(pgrep -P "$p" || true)"; done
  pids=" "
  for p in $(printf '%s\n' $found | sort -u); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = sipp ] || pids+="$p "
  done
  sipp=" $(pgrep -d ' ' -x sipp || true) "
  for p in $pids; do echo "# $proxy: $p $(tr '\0' ' ' < /proc/$p/cmdline | cut -c1-120)"; done > "$out.pids"
  perf record -q -o "$out.perf" -e "$EVENTS" -a -- sleep "$WINDOW_S" >/dev/null 2>&1 || true
  wait "$bench" || { tail -5 "$out.log" >&2; exit 1; }
  grep "shape=$SHAPE " "$out.log" | sed 's/^/# /'
  perf script -i "$out.perf" -F pid,event 2>/dev/null | awk -v proxy="$pids" -v sipp="$sipp" \
      -v calls="$((RATE * WINDOW_S))" -v name="$proxy" '
    { sub(/:$/, "", $2); sub(/^syscalls:sys_enter_/, "", $2)
      who = index(proxy, " " $1 " ") ? name : (index(sipp, " " $1 " ") ? "sipp" : "")
      if (who != "") { n[who " " $2]++; total[who]++ } }
    END { for (k in n) { split(k, part, " "); printf "%-14s %-14s %6.2f per call\n", part[1], part[2], n[k] / calls }
          for (who in total) printf "%-14s %-14s %6.2f per call\n", who, "(all counted)", total[who] / calls }' \
    | sort -k1,1 -k3,3nr | tee "$out.syscalls.txt"
done
