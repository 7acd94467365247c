"""Two nodes sharing their state through a real Redis (``[cluster] redis``, gdispatch.ha):
node A on 127.0.0.1, node B on 127.0.0.2, the same list, one redis-server started here
(no persistence) and stopped by its PID."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from tests.support.wait import wait_for

from . import harness

NO_PROBING = "[probing]\ninterval = 0\n"
ROUTE = '[[route]]\nmethods = ["INVITE"]\nset = 1\nalgorithm = 10\n'


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    pytest.importorskip("redis")
    tmp = tmp_path_factory.mktemp("ha")
    redis = harness.RedisServer(harness.free_port("tcp"), tmp).start()
    gw = harness.Uas(tmp / "gw", "uas_ok.xml").start()
    lst = harness.dispatcher_list(gw, attrs=["duid=gw1;maxload=10"])
    nodes = []
    try:
        for name, host in (("a", "127.0.0.1"), ("b", "127.0.0.2")):
            cfg = f'{NO_PROBING}{ROUTE}[cluster]\nredis = "redis://127.0.0.1:{redis.port}/0"\nnode = "{name}"\n'
            nodes.append(harness.Proxy(tmp / name, lst, cfg, listen=(f"udp:{host}:{{port}}",)).start())
        yield redis, nodes[0], nodes[1], gw
    finally:
        for p in nodes:
            p.stop()
        gw.stop(grace_s=1.0)
        redis.stop()


def alive_nodes(p: harness.Proxy) -> list[str]:
    return [n["NODE"] for n in p.rpc_json("cluster.list")["NODES"] if n["ALIVE"]]


def test_cluster_list_shows_both_nodes(pair):
    _, a, b, _ = pair
    wait_for(lambda: alive_nodes(a) == ["a", "b"], 5.0, message=lambda: a.rpc_json("cluster.list"))
    view = b.rpc_json("cluster.list")
    assert view["NODE"] == "b" and view["CONNECTED"] == 1, view
    assert all(n["LAST_HEARTBEAT"] > 0 for n in view["NODES"]), view


def test_set_state_on_b_stops_new_calls_on_a_within_a_second(pair):
    _, a, b, _ = pair
    assert a.states()["gw1"].startswith("A")
    assert b.rpc("dispatcher.set_state", "dx", "1", "duid=gw1").returncode == 0
    wait_for(lambda: a.states()["gw1"].startswith("D"), 1.0, step=0.02, message=lambda: a.states())
    res = harness.run_uac(f"127.0.0.1:{a.port}", calls=1, rate=1, timeout_s=10)
    assert (res.successful, res.failed) == (0, 1), res
    # And back, from A this time.
    assert a.rpc("dispatcher.set_state", "a", "1", "duid=gw1").returncode == 0
    wait_for(lambda: b.states()["gw1"].startswith("A"), 1.0, step=0.02, message=lambda: b.states())


def test_maxload_counts_the_calls_of_both_nodes(pair):
    """maxload=10: 10 long calls held open through A, then 10 through B once B counts
    A's: 10 connected in all (B's 10 find the gateway full and get 503)."""
    _, a, b, _ = pair
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("a", harness.run_uac(
        f"127.0.0.1:{a.port}", calls=10, rate=100, timeout_s=30, extra_args=("-d", "6000"))))
    t.start()
    try:
        wait_for(lambda: b.rpc_json("cluster.list").get("LOADS_ELSEWHERE", {}).get("1|0|" + pair[3].uri) == 10,
                 5.0, message=lambda: b.rpc_json("cluster.list"))
        res = harness.run_uac(f"127.0.0.2:{b.port}", calls=10, rate=100, timeout_s=20)
        assert (res.successful, res.failed) == (0, 10), res
    finally:
        t.join(40)
    assert (got["a"].successful, got["a"].failed) == (10, 0), got["a"]


def test_twenty_simultaneous_calls_on_two_nodes_connect_exactly_maxload(pair):
    """maxload=10: 10 call attempts on each node at the same moment (two UACs started
    together, each at 1000 calls/s): exactly 10 reach the gateway in all, whatever the
    split, since the nodes take slots leased in Redis (gdispatch.ha.leases) rather
    than counting each other's calls as of their last round. Then the calls end, their
    slots come back, and a new call connects through each node."""
    _, a, b, gw = pair
    for p in (a, b):
        wait_for(lambda p=p: p.rpc_json("cluster.list").get("SLOTS_CONNECTED") == 1, 5.0,
                 message=lambda p=p: p.rpc_json("cluster.list"))
    got: dict[str, harness.UacResult] = {}
    start = threading.Barrier(2)

    def burst(name: str, target: str) -> None:
        start.wait(5)
        got[name] = harness.run_uac(target, calls=10, rate=1000, timeout_s=20, extra_args=("-d", "1500"))

    threads = [threading.Thread(target=burst, args=("a", f"127.0.0.1:{a.port}")),
               threading.Thread(target=burst, args=("b", f"127.0.0.2:{b.port}"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    ok = got["a"].successful + got["b"].successful
    failed = got["a"].failed + got["b"].failed
    assert (ok, failed) == (10, 10), (str(got["a"]), str(got["b"]))
    for p, host in ((a, "127.0.0.1"), (b, "127.0.0.2")):
        res = harness.run_uac(f"{host}:{p.port}", calls=1, rate=1, timeout_s=10)
        assert (res.successful, res.failed) == (1, 0), res


def test_redis_restart_under_load_loses_no_call_and_states_converge(pair):
    redis, a, b, _ = pair
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("a", harness.run_uac(
        f"127.0.0.1:{a.port}", calls=20, rate=10, timeout_s=30, extra_args=("-d", "200"))))
    t.start()
    try:
        time.sleep(0.5)  # some calls before the outage (the load runs on, whatever its pace)
        redis.stop()
        # Changed on A while Redis is away: B hears of it once Redis is back.
        wait_for(lambda: a.rpc_json("cluster.list").get("CONNECTED") == 0, 5.0)
        assert a.rpc("dispatcher.ping_active", "0").returncode == 0
        redis.start()
        wait_for(lambda: b.rpc_json("dispatcher.ping_active") == {"OldPingState": 0}, 10.0,
                 message=lambda: b.rpc_json("cluster.list"))
    finally:
        t.join(40)
    assert (got["a"].successful, got["a"].failed) == (20, 0), got["a"]
    assert a.log().count("does not answer") == 1, a.log()
    wait_for(lambda: alive_nodes(b) == ["a", "b"], 5.0)
