#!/usr/bin/env bash
# syscalls.sh - the system calls a proxy makes per call, by name, at one fixed call rate:
# one bench.sh step per proxy, and while it runs a window of WINDOW_S seconds counted with
# perf's syscall tracepoints (the whole box, then kept to the proxy's processes). What a
# proxy asks of the kernel per call, side by side with Kamailio: whether it sleeps, wakes
# and reads more than another per call, which CPU per call alone does not say.
#
#   bench/syscalls.sh                                    # kamailio-c2, gdispatch-w2, builtin shape
#   PROXIES="gdispatch-w1" SHAPE=own RATE=1000 bench/syscalls.sh
#
# Environment (defaults): PROXIES "kamailio-c2 gdispatch-w2" (bench.sh's names), SHAPE
# builtin (one of bench.sh's shape names), RATE 1500, STEP_S 16, WINDOW_S 5 (starting 3 s
# into the step, ending at least 2 s before it), OUT bench-results/syscalls_<stamp>; the
# rest as bench.sh. Needs perf (apt-get install -y linux-perf) with access to the syscalls
# tracepoints (root). `write` is not counted: perf's own writes to its output would count
# themselves. Bounded: one step of RATE x STEP_S calls per proxy, one perf window each; the
# step runs in its own process group, stopped if this script is.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "syscalls.sh: $*" >&2; exit 1; }
command -v perf >/dev/null 2>&1 || die "perf is not installed (apt-get install -y linux-perf)"
RATE="${RATE:-1500}" STEP_S="${STEP_S:-16}" WINDOW_S="${WINDOW_S:-5}" SHAPE="${SHAPE:-builtin}"
[ $((3 + WINDOW_S + 2)) -le "$STEP_S" ] || die "WINDOW_S=$WINDOW_S does not fit in STEP_S=$STEP_S (3 + WINDOW_S + 2 s)"
RUN="$(realpath -m "${OUT:-$ROOT/bench-results/$(date +syscalls_%Y%m%d_%H%M%S)}")"
mkdir -p "$RUN"
NAMES="sendto sendmsg sendmmsg recvfrom recvmsg recvmmsg epoll_wait epoll_pwait poll select futex getpid clock_gettime read"
EVENTS=""
for s in $NAMES; do  # the tracepoints this kernel has (not every architecture has every call)
  [ -d "/sys/kernel/tracing/events/syscalls/sys_enter_$s" ] || [ -d "/sys/kernel/debug/tracing/events/syscalls/sys_enter_$s" ] \
    && EVENTS+="syscalls:sys_enter_$s,"
done
[ -n "$EVENTS" ] || die "no syscall tracepoints readable (run as root; tracefs mounted?)"
EVENTS="${EVENTS%,}"

bench=""
stop_step() { [ -n "$bench" ] && kill -- -"$bench" 2>/dev/null; true; }
trap stop_step EXIT

for proxy in ${PROXIES:-kamailio-c2 gdispatch-w2}; do
  out="$RUN/$proxy"
  RATES="$RATE" STEP_S="$STEP_S" SHAPES="$SHAPE" PROXIES="$proxy" OVERLOAD_X=0 LAT_CALLS=0 CONFIRM=0 TLS=0 \
    OUT="$out" setsid "$ROOT/bench/bench.sh" > "$out.log" 2>&1 &
  bench=$!
  # The step has started once the caller runs (bounded: 60 s for the proxy to start).
  started=0
  for _ in $(seq 240); do
    if pgrep -f -- "-sf .*/uac[^ ]*\.xml .*-r $RATE " >/dev/null; then started=1; break; fi
    kill -0 "$bench" 2>/dev/null || break
    sleep 0.25
  done
  [ "$started" = 1 ] || die "$proxy: the step did not start (see $out.log)"
  sleep 3
  # The proxy's processes: those naming its folder (SIPp's caller does too: left out) and
  # their children (a gdispatch worker).
  found="$(pgrep -f -- "$out/" || true)"
  for p in $found; do found+=" $(pgrep -P "$p" || true)"; done
  pids=" "
  for p in $(printf '%s\n' $found | sort -u); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = sipp ] || pids+="$p "
  done
  [ "$pids" != " " ] || die "$proxy: no process of the proxy found"
  perf record -q -o "$out.perf" -e "$EVENTS" -a -- sleep "$WINDOW_S" >/dev/null 2>"$out.perf.err" \
    || die "$proxy: perf record failed: $(tail -2 "$out.perf.err")"
  wait "$bench" || { tail -5 "$out.log" >&2; die "$proxy: bench.sh failed"; }
  bench=""
  { grep "shape=$SHAPE " "$out.log" || true; } | sed 's/^/# /'
  perf script -i "$out.perf" -F pid,event 2>"$out.perf.err" | awk -v proxy="$pids" \
      -v calls="$((RATE * WINDOW_S))" -v name="$proxy" '
    index(proxy, " " $1 " ") { sub(/:$/, "", $2); sub(/^syscalls:sys_enter_/, "", $2); n[$2]++; total++ }
    END { for (k in n) printf "%-14s %-14s %6.2f per call\n", name, k, n[k] / calls
          printf "%-14s %-14s %6.2f per call\n", name, "all", total / calls }' \
    | sort -k3,3nr | tee "$out.syscalls.txt"
done
