#!/usr/bin/env bash
# hep_ab.sh - what HEP capture ([capture] hep) costs: the same SIPp load through a
# gdispatch with capture and one without, in alternating rounds, and the proxy's CPU per
# call in each (bench/lib/hep_ab.py says how). Needs only this repository and SIPp. All
# traffic stays on 127.0.0.1; every round is bounded in calls and time.
#
#   bench/hep_ab.sh
#   CALLS=6000 RATE=400 ROUNDS=3 PROXY_ARGS="--workers 2" bench/hep_ab.sh
#
# Environment: PY (.venv/bin/python), CALLS (4000), RATE (300), ROUNDS (3), PROXY_ARGS.
# Exit status: 0 when every call of every round succeeded, 1 otherwise.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
command -v sipp >/dev/null 2>&1 || { echo "hep_ab.sh: SIPp is not installed (apt-get install -y sip-tester)" >&2; exit 1; }
[ -r /proc/self/stat ] || { echo "hep_ab.sh: Linux only (reads /proc)" >&2; exit 1; }
exec "$PY" "$ROOT/bench/lib/hep_ab.py"
