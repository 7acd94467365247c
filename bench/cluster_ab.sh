#!/usr/bin/env bash
# cluster_ab.sh - what the cluster mode ([cluster] redis) costs: the same SIPp load
# through a gdispatch alone and one sharing its state through a redis-server started
# here, in alternating rounds, with the proxy's CPU per call, their median ratio and the
# calls/s completed (bench/lib/cluster_ab.py says how). Needs SIPp and redis-server. All
# traffic stays on 127.0.0.0/8; every round is bounded in calls and time.
#
#   bench/cluster_ab.sh
#   CALLS=6000 RATE=400 ROUNDS=5 PROXY_ARGS="--workers 2" bench/cluster_ab.sh
#
# Environment: PY (.venv/bin/python), CALLS (3000), RATE (300), ROUNDS (3), PROXY_ARGS,
# PEER (1: a second, idle cluster node). Exit status: 0 when every call of every round
# succeeded, 1 otherwise.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
command -v sipp >/dev/null 2>&1 || { echo "cluster_ab.sh: SIPp is not installed (apt-get install -y sip-tester)" >&2; exit 1; }
command -v redis-server >/dev/null 2>&1 || { echo "cluster_ab.sh: redis-server is not installed (make install-redis)" >&2; exit 1; }
[ -r /proc/self/stat ] || { echo "cluster_ab.sh: Linux only (reads /proc)" >&2; exit 1; }
"$PY" -c "import redis" 2>/dev/null || { echo "cluster_ab.sh: needs the redis client (pip install -e '.[cluster]')" >&2; exit 1; }
exec "$PY" "$ROOT/bench/lib/cluster_ab.py"
