"""What the cluster mode costs (``[cluster] redis``, gdispatch.ha): the same SIPp load
through two gdispatch processes side by side, one alone ("single") and one sharing its
state through a redis-server ("cluster"), in alternating rounds (single, cluster, then
cluster, single...), and for each the proxy's CPU per call and the calls completed per
second. Run through bench/cluster_ab.sh.

Both proxies run from the start (warmed up alike) in front of the same SIPp UAS
(tests/scenarios/uas_ok.xml), routing by call load (algorithm 10, a `maxload` far above
the load) so that the cluster proxy publishes its call loads as it would in a pair; a
second cluster node (PEER=1, on 127.0.0.2, taking no calls) makes it read another node's
heartbeat and loads every round too. Each round is one bounded SIPp UAC run (CALLS calls
at RATE per second, full calls: INVITE, 180, 200, ACK, BYE, 200). Proxy CPU is
utime+stime of the proxy and its descendants, from /proc, over the round, divided by the
successful calls; redis-server's CPU over the cluster rounds is printed apart (it runs
on another host in production).

Environment: PY, CALLS (3000), RATE (300), ROUNDS (3: rounds of each), PROXY_ARGS (e.g.
"--workers 2"), PEER (1). redis-server is started here on a free port without
persistence; every process is started here and stopped by PID; all on 127.0.0.0/8.
"""

from __future__ import annotations

import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hep_ab import tree_cpu_s  # noqa: E402 - found through the sys.path set above

from tests.e2e import harness  # noqa: E402
from tests.e2e.test_ha_state import RedisServer  # noqa: E402

ROUTE = '[[route]]\nmethods = ["INVITE"]\nset = 1\nalgorithm = 10\n'


def main() -> int:
    calls, rate, rounds = int(os.environ.get("CALLS", 3000)), int(os.environ.get("RATE", 300)), \
        int(os.environ.get("ROUNDS", 3))
    args = shlex.split(os.environ.get("PROXY_ARGS", ""))
    peer = os.environ.get("PEER", "1") != "0"
    if not shutil.which("redis-server"):
        print("cluster_ab: redis-server is not installed (make install-redis)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="gdispatch-cluster-ab-"))
    redis = RedisServer(harness.free_port("tcp"), work).start()
    url = f"redis://127.0.0.1:{redis.port}/0"
    uas = harness.Uas(work, "uas_ok.xml").start()
    dlist = harness.dispatcher_list(uas, attrs=["duid=gw1;maxload=100000"])
    proxies = {
        "single": harness.Proxy(work / "single", dlist, ROUTE, args=args),
        "cluster": harness.Proxy(work / "cluster", dlist, f'{ROUTE}[cluster]\nredis = "{url}"\nnode = "a"\n',
                                 args=args),
    }
    others = [harness.Proxy(work / "peer", dlist, f'{ROUTE}[cluster]\nredis = "{url}"\nnode = "b"\n',
                            listen=("udp:127.0.0.2:{port}",))] if peer else []
    us: dict[str, list[float]] = {"single": [], "cluster": []}
    cps: dict[str, list[float]] = {"single": [], "cluster": []}
    ratios: list[float] = []
    redis_cpu = 0.0
    status = 0
    try:
        for p in [*proxies.values(), *others]:
            p.start()
        print(f"cluster_ab: {rounds} rounds of each, {calls} calls at {rate}/s, proxy args {args or 'none'}, "
              f"peer node {'yes' if peer else 'no'}; files in {work}", flush=True)
        for i in range(rounds):
            order = ("single", "cluster") if i % 2 == 0 else ("cluster", "single")
            got: dict[str, float] = {}
            for mode in order:
                p = proxies[mode]
                assert redis.proc is not None
                r0, cpu0, t0 = tree_cpu_s(redis.proc.pid), tree_cpu_s(p.pid), time.monotonic()
                res = harness.run_uac(f"127.0.0.1:{p.port}", calls=calls, rate=rate,
                                      timeout_s=calls / rate + 15, workdir=work / f"uac-{mode}-{i}")
                wall, cpu = time.monotonic() - t0, tree_cpu_s(p.pid) - cpu0
                if mode == "cluster":
                    redis_cpu += tree_cpu_s(redis.proc.pid) - r0
                ok = res.successful
                if ok == 0 or res.failed:
                    print(f"round {i + 1} {mode}: {res}", flush=True)
                    status = 1
                    continue
                got[mode] = cpu / ok * 1e6
                us[mode].append(got[mode])
                cps[mode].append(ok / wall)
                print(f"round {i + 1} {mode:7}: {ok} calls in {wall:.1f} s ({ok / wall:.0f} calls/s), "
                      f"proxy CPU {cpu:.2f} s, {got[mode]:.0f} us/call", flush=True)
            if len(got) == 2:
                ratios.append(got["cluster"] / got["single"])
    finally:
        for p in [*proxies.values(), *others]:
            p.stop()
        uas.stop(grace_s=1.0)
        redis.stop()
    if us["single"] and us["cluster"]:
        single, cluster = statistics.median(us["single"]), statistics.median(us["cluster"])
        ratio = f"{statistics.median(ratios):.3f}" if ratios else "n/a"
        print(f"median CPU per call: single {single:.0f} us, cluster {cluster:.0f} us; "
              f"median ratio of the rounds (cluster/single) {ratio}")
        print(f"median calls/s completed: single {statistics.median(cps['single']):.0f}, "
              f"cluster {statistics.median(cps['cluster']):.0f}; redis-server CPU over the cluster rounds "
              f"{redis_cpu:.2f} s ({redis_cpu / (len(us['cluster']) * calls) * 1e6:.0f} us/call)")
    return status


if __name__ == "__main__":
    sys.exit(main())
