#!/usr/bin/env bash
# scrape.sh - what a Prometheus scrape of /metrics costs the proxy: the same bounded load
# with and without a scraper at 1 Hz, alternated over several rounds, and the ratio of
# the proxy's CPU per call (bench/lib/scrape_ab.py). Needs only this repository and SIPp.
# All traffic stays on 127.0.0.1; every leg is bounded in calls and time (<= 30 s).
#
#   bench/scrape.sh
#   ROUNDS=5 CALLS=4000 RATE=400 WORKERS=2 bench/scrape.sh
#
# Environment: PY (.venv/bin/python), CALLS (3000), RATE (300), ROUNDS (3), SCRAPE_S (1),
# WORKERS (1), OUT.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
command -v sipp >/dev/null 2>&1 || { echo "scrape.sh: SIPp is not installed (apt-get install -y sip-tester)" >&2; exit 1; }
[ -r /proc/self/stat ] || { echo "scrape.sh: Linux only (reads /proc)" >&2; exit 1; }
"$PY" -c "import prometheus_client" 2>/dev/null || { echo "scrape.sh: needs prometheus_client (pip install -e '.[metrics]')" >&2; exit 1; }
exec "$PY" "$ROOT/bench/lib/scrape_ab.py"
