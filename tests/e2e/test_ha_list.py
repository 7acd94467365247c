"""Every node's view of a destination (``dispatcher.list cluster``, gdispatch.ha.node
`views`) and each node's summary in ``cluster.list``: node A (127.0.0.1) does not probe (AX),
node B (127.0.0.2) probes and finds the destination silent, so only B shows it down (a
destination's health is each node's own). One redis-server started here, stopped by PID."""

from __future__ import annotations

import shutil

import pytest

from tests.support.wait import wait_for

from . import harness


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    pytest.importorskip("redis")
    tmp = tmp_path_factory.mktemp("halist")
    redis = harness.RedisServer(harness.free_port("tcp"), tmp).start()
    # Nothing listens there: B's pings time out.
    lst = harness.dispatcher_list(f"sip:127.0.0.1:{harness.free_port('udp')}", attrs=["duid=silent"])
    nodes = []
    try:
        for name, host, probing in (("a", "127.0.0.1", "interval = 0"),
                                    ("b", "127.0.0.2", "interval = 0.3\ntimeout = 0.3")):
            cfg = f'[probing]\n{probing}\n[cluster]\nredis = "redis://127.0.0.1:{redis.port}/0"\nnode = "{name}"\n'
            nodes.append(harness.Proxy(tmp / name, lst, cfg, listen=(f"udp:{host}:{{port}}",)).start())
        yield nodes[0], nodes[1]
    finally:
        for p in nodes:
            p.stop()
        redis.stop()


def seen_by(p: harness.Proxy) -> dict[str, str]:
    """{node: FLAGS} of the one destination, from ``dispatcher.list cluster`` on `p`."""
    tree = p.rpc_json("dispatcher.list", "cluster")
    dest = tree["RECORDS"][0]["SET"]["TARGETS"][0]["DEST"]
    return {n["NODE"]: n["FLAGS"] for n in dest["NODES"]}


def test_each_node_shows_its_own_view_and_a_stopped_node_drops_out(pair):
    a, b = pair
    wait_for(lambda: seen_by(a) == {"a": "AX", "b": "IP"}, 5.0,
             message=lambda: a.rpc_json("dispatcher.list", "cluster"))
    assert seen_by(b) == {"a": "AX", "b": "IP"}
    # The default and full modes stay Kamailio's: no NODES there.
    assert "NODES" not in a.rpc_json("dispatcher.list", "full")["RECORDS"][0]["SET"]["TARGETS"][0]["DEST"]
    # cluster.list: each node's summary, as of its heartbeat.
    wait_for(lambda: {r["NODE"]: r["DESTINATIONS"] for r in a.rpc_json("cluster.list")["NODES"]}
             == {"a": {"AX": 1}, "b": {"IP": 1}}, 3.0, message=lambda: a.rpc_json("cluster.list"))
    assert [r["CALLS"] for r in a.rpc_json("cluster.list")["NODES"]] == [0, 0]
    # B stops: its heartbeat and its view expire, and A lists its own view alone.
    b.stop()
    wait_for(lambda: seen_by(a) == {"a": "AX"}, 6.0, message=lambda: a.rpc_json("dispatcher.list", "cluster"))
