#!/usr/bin/env bash
# memory.sh - gdispatch's resident size over a long run: 100,000 calls (by default) in
# chunks of 10,000, the size after each chunk, and whether the run ends no larger than it
# was after the first chunk. Needs only this repository and SIPp. All traffic stays on
# 127.0.0.1; every chunk is bounded in calls and time.
#
#   bench/memory.sh
#   CALLS=20000 RATE=2000 bench/memory.sh
#
# Environment: PY (.venv/bin/python), CALLS (100000), CHUNK (10000), RATE (1000),
# SETTLE_S (10), SLACK_PCT (5), PROXY_ARGS (e.g. "--workers 2"), OUT.
# Exit status: 0 bounded and no call failed, 1 otherwise.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
command -v sipp >/dev/null 2>&1 || { echo "memory.sh: SIPp is not installed (apt-get install -y sip-tester)" >&2; exit 1; }
[ -r /proc/self/status ] || { echo "memory.sh: Linux only (reads /proc)" >&2; exit 1; }
exec "$PY" "$ROOT/bench/lib/memory.py"
