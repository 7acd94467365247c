#!/usr/bin/env bash
# tls.sh - SIP over TLS with the connections reused: the highest call rate each proxy
# carries (>= 99 % of the calls completed) and its CPU per call at a fixed rate (200
# calls/s), gdispatch with 1 and 2 workers next to Kamailio with children=1 and 2 when
# Kamailio and its tls module are installed (apt-get install -y kamailio
# kamailio-tls-modules). The load generator is ours (bench/lib/tlsload.py: SIPp as Debian
# builds it has no TLS); certificates are made by openssl at the start. All traffic stays
# on 127.0.0.1; every step is bounded in calls and time. A step of bench.sh (TLS=0 skips
# it there); `make bench-tls` runs it alone.
#
#   bench/tls.sh
#   TLS_PROXIES="kamailio-c1 gdispatch-w1" TLS_RATES="250 500 750 1000" bench/tls.sh
#   TLS_CPU_RATE=300 TLS_CPU_S=20 bench/tls.sh
#
# The knobs (TLS_*) are listed at the top of bench/lib/tlsbench.py.
# Exit status: 0 measured, 1 a proxy did not start or carry the warm-up calls.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
case "$PY" in /*) ;; *) PY="$ROOT/$PY" ;; esac
[ -r /proc/stat ] || { echo "tls.sh: Linux only: the CPU accounting reads /proc" >&2; exit 1; }
command -v openssl >/dev/null 2>&1 || { echo "tls.sh: openssl is needed (apt-get install -y openssl)" >&2; exit 1; }
export PY
exec "$PY" "$ROOT/bench/lib/tlsbench.py"
