"""gdispatch.ha without Redis: stamps and which value wins, the other nodes' loads in
algorithm 10, and how a node applies the values the others shared."""

from __future__ import annotations

from gdispatch.dispatcher.destination import FLAG_DISABLED
from gdispatch.dispatcher.listfile import parse_list
from gdispatch.ha import shared
from gdispatch.ha.node import Node, _redact
from gdispatch.ha.store import NodeSeen, Round
from gdispatch.settings import Ha

LIST = "1 sip:10.0.0.1:5060 0 0 duid=a;maxload=2\n1 sip:10.0.0.2:5060 0 0 duid=b;maxload=2\n"


def test_stamps_order_by_time_then_node_and_unset_is_below_every_set_value():
    assert shared.stamp(10.5, "a") < shared.stamp(10.6, "a") < shared.stamp(100.0, "a")
    assert shared.stamp(10.5, "a") < shared.stamp(10.5, "b")
    assert "" < shared.UNSET < shared.stamp(0.000001, "a")
    assert shared.newer("0", None) and not shared.newer("0", "0")


def test_winners_are_the_remote_values_newer_than_what_the_node_holds():
    local = {"list": shared.stamp(5, "a"), "ping_active": shared.stamp(9, "a")}
    remote = {"list": (shared.stamp(6, "b"), "L"), "ping_active": (shared.stamp(8, "b"), "0"),
              "state|1|0|sip:x": (shared.stamp(1, "b"), "4")}
    assert shared.winners(local, remote) == {"list": remote["list"], "state|1|0|sip:x": remote["state|1|0|sip:x"]}


def test_sum_loads_adds_the_other_nodes_per_destination():
    assert shared.sum_loads({"a": {"x": 2, "y": 1}, "b": {"x": 3}}) == {"x": 5, "y": 1}


def test_call_load_counts_the_other_nodes_calls():
    dset = parse_list(LIST, "t").sets[1]
    a, b = dset.destinations
    for d in dset.destinations:
        d.address = (d.sip_uri.host, 5060)
    a.load_nodes = 2  # the other node holds a's two channels
    assert not a.has_capacity
    assert dset.least_loaded() is b
    a.load_nodes, b.load_nodes, b.load = 0, 1, 0
    assert dset.least_loaded() is a  # a 0 in all, b 1 elsewhere


class FakeApp:
    started_at = 0.0

    def __init__(self):
        self.dlist = parse_list(LIST, "t")
        self.ping_active = True
        self.changed: list[tuple] = []
        self.lists: list[str] = []

    def current_list(self):
        return self.dlist

    def state_changed(self, dest, old, reason):
        self.changed.append((dest.duid, old, dest.flags, reason))

    def apply_shared_list(self, text, reason):
        if "bad" in text:
            raise ValueError("does not parse")
        self.dlist = parse_list(text, "t")
        self.lists.append(reason)


def test_a_node_applies_newer_values_once_and_does_not_share_them_back():
    app = FakeApp()
    node = Node(app, Ha(redis="", node="b"))
    a = app.dlist.sets[1].destinations[0]
    st = shared.stamp(100, "a")
    values = {shared.state_field(a): (st, str(FLAG_DISABLED)), shared.PING: (st, "0")}
    node.on_values(values)
    assert a.flags & FLAG_DISABLED and app.ping_active is False
    assert app.changed == [("a", 0, FLAG_DISABLED, "set on node a")]
    node.on_values(values)  # the same again: nothing more
    assert len(app.changed) == 1
    # An operator change here is newer than the shared one: it stays.
    node.stamps[shared.state_field(a)] = shared.stamp(200, "b")
    node.on_values({shared.state_field(a): (shared.stamp(150, "a"), "0")})
    assert a.flags & FLAG_DISABLED


def test_a_shared_list_that_does_not_load_here_is_refused_once():
    app = FakeApp()
    node = Node(app, Ha(redis="", node="b"))
    node.on_values({shared.LIST: (shared.stamp(1, "a"), "bad list")})
    node.on_values({shared.LIST: (shared.stamp(2, "a"), LIST + "2 sip:10.0.0.3 0 0\n")})
    assert app.lists == ["list of node a"] and 2 in app.dlist.sets


def test_loads_of_live_nodes_reach_the_destinations_and_dead_ones_do_not():
    app = FakeApp()
    node = Node(app, Ha(redis="", node="b"))
    a = app.dlist.sets[1].destinations[0]
    f = shared.dest_field(a)
    node.on_round(Round(nodes={"a": NodeSeen(1.0, True), "b": NodeSeen(1.0, True), "c": NodeSeen(1.0, False)},
                        loads={"a": {f: 2}, "c": {f: 5}}))
    assert a.load_nodes == 2


def test_without_redis_cluster_list_is_this_node_alone():
    view = Node(FakeApp(), Ha(redis="", node="solo")).describe()
    assert view["REDIS"] == "not configured" and [n["NODE"] for n in view["NODES"]] == ["solo"]


def test_the_password_of_the_url_is_not_shown():
    assert _redact("rediss://:s3cret@db:6380/0") == "rediss://***@db:6380/0"
    assert _redact("redis://db:6379") == "redis://db:6379"


class FakeLeaseRedis:
    """Answers the lease script with the grants it is given, and records the asks."""

    def __init__(self, grants: list[int], idle: int = 0):
        self.grants = grants
        self.idle = idle
        self.asks: list[list] = []

    def eval(self, script, nkeys, *args):
        self.asks.append(list(args[nkeys:]))
        return [x for g in self.grants for x in (g, self.idle)]


def _leases(grants: list[int], idle: int = 0):
    from gdispatch.ha.leases import Leases

    dlist = parse_list(LIST, "t")
    for d in dlist.destinations():
        d.address = (d.sip_uri.host, 5060)
    fake = FakeLeaseRedis(grants, idle)
    return Leases(fake, "a", dlist.destinations, lambda: None), dlist, fake


def test_slots_leased_here_bound_the_calls_of_a_maxload_destination():
    leases, dlist, fake = _leases([1, 2])
    a, b = dlist.get(1).destinations
    leases._ask()
    assert (a.load_nodes, b.load_nodes) == (1, 0)  # maxload 2, 1 and 2 slots here
    a.load = 1
    assert not a.has_capacity and leases.short(dlist.get(1)) == [a]
    # An ask asks for the calls here (and a spare); while it is in flight no more calls
    # than that are admitted: b, with 2 slots and no call, admits none meanwhile.
    assert fake.asks[-1][:2] == ["a", 3000]
    fake.grants = [2, 0]
    leases._ask()
    assert fake.asks[-1][2:] == [1, 1, 1, 2, 0, 0, 1, 2]  # per key: used, need, spare, maxload
    assert (a.load_nodes, b.load_nodes) == (0, 2)


def test_a_call_short_of_a_slot_stops_waiting_when_none_is_idle_anywhere():
    import gevent

    leases, dlist, fake = _leases([0, 0], idle=0)
    leases.connected = True
    a = dlist.get(1).destinations[0]
    a.load_nodes = 2
    leases.start()
    try:
        with gevent.Timeout(2):
            leases.wait([a])
    finally:
        leases.stop()
    assert fake.asks and fake.asks[-1][3] == 1  # the waiting call was counted in the ask
    assert a not in leases.short(dlist.get(1))  # full everywhere: the next calls do not wait
