"""What each process does among the workers (gdispatch.cluster.roles), through the seam
the application calls: the single process hands traffic failures to its prober and adds
nothing else; the primary counts the workers' failures and sums their reports; a worker
applies what the primary tells it and reports its failures to it."""

from __future__ import annotations

import socket

import gevent.event

from gdispatch.cluster.channel import (
    Hello,
    KeysChanged,
    Latencies,
    ListSwapped,
    Ready,
    Report,
    StateChanged,
    Stop,
    TrafficFailure,
    read_message,
)
from gdispatch.cluster.relay import relay_sockets
from gdispatch.cluster.roles import Primary, Single, Sockets, Worker
from gdispatch.config import Config
from gdispatch.dispatcher.listfile import parse_list

LIST = "1 sip:127.0.0.1:5071 0 0\n1 sip:127.0.0.1:5072 0 0\n"
A = (1, 0, "sip:127.0.0.1:5071")
B = (1, 1, "sip:127.0.0.1:5072")


class Prober:
    def __init__(self):
        self.failures = []

    def traffic_failure(self, dest, reason):
        self.failures.append((dest.uri, reason))


class Host:
    def __init__(self):
        self.stopping = gevent.event.Event()
        self.lists = []
        self.keys = []

    def local_stats(self):
        return {"dispatched": 1}

    def take_list(self, text, reason, states):
        self.lists.append((text, reason, states))

    def use_keys(self, keys):
        self.keys.append(keys)


def test_a_single_process_hands_traffic_failures_to_its_prober_and_adds_nothing():
    role = Single()
    dlist = parse_list(LIST)
    dest = next(iter(dlist.destinations()))
    role.traffic_failure(dest, "before start")  # no prober yet: nothing to tell
    prober = Prober()
    assert role.sockets() == Sockets()  # the transports bind their own sockets
    role.start(Host(), None, None, prober)
    role.ready(gevent.event.Event())
    role.traffic_failure(dest, "did not answer")
    assert prober.failures == [("sip:127.0.0.1:5071", "did not answer")]
    role.list_loaded(dlist, "reload")
    role.state_changed(dest)
    role.keys_changed([("k", b"x" * 32)])
    out = {"dispatched": 3}
    assert role.merge_stats(out) == [] and out == {"dispatched": 3}
    assert role.counters() == {} and role.tag == ""
    role.drain()
    role.stop()


def test_the_primary_counts_a_workers_failures_and_sums_its_reports():
    role = Primary(Config(workers=3))
    prober = Prober()
    role.prober = prober  # what start() keeps; start() also starts the relay, not needed here
    dlist = parse_list(LIST)
    role.list_loaded(dlist, "start")  # before the others start: nobody to tell
    dests = {d.uri: d for d in dlist.destinations()}
    role._from_worker(1, TrafficFailure(B, "did not answer"))
    role._from_worker(2, TrafficFailure((9, 0, "sip:gone"), "stale"))  # not in this list
    assert prober.failures == [("sip:127.0.0.1:5072", "did not answer (worker 1)")]
    role._from_worker(1, Report({A: 2}, {"a": [1, 1, 0]}, {"dispatched": 4, "requests": 10}))
    role._from_worker(2, Report({A: 1, B: 5}, {"a": [2, 0, 2]}, {"dispatched": 6, "requests": 12}))
    assert dests["sip:127.0.0.1:5071"].load_elsewhere == 3 and dests["sip:127.0.0.1:5072"].load_elsewhere == 5
    out = {"dispatched": 5, "requests": 11}
    others = role.merge_stats(out)
    assert others == [{"a": [1, 1, 0]}, {"a": [2, 0, 2]}]
    assert out == {"dispatched": 15, "requests": 33, "workers": 3, "workers_ready": 1, "kernel_steering": 0,
                   "dispatched_by_worker": [5, 4, 6]}
    assert role.counters() == {} and role.tag == "w0"  # no relay before sockets()


def test_a_worker_applies_what_the_primary_says_and_tells_it_its_failures():
    relays = relay_sockets(2)
    ours, theirs = socket.socketpair()
    hello = Hello(Config(workers=2), 1, relays[1].fileno(), [s.getsockname()[1] for s in relays], {}, LIST,
                  {}, [("k", b"x" * 32)])
    role = Worker(hello, ours)
    try:
        assert role.tag == "w1"
        sockets = role.sockets()
        assert sockets.shared and sockets.udp == {} and sockets.relay is role.relay
        dlist = parse_list(LIST)
        dests = {d.uri: d for d in dlist.destinations()}
        role.list_loaded(dlist, "start")
        host = Host()
        role._from_primary(host, StateChanged(B, 4))
        role._from_primary(host, StateChanged((9, 0, "sip:gone"), 4))
        role._from_primary(host, Latencies({A: 12.5}))
        role._from_primary(host, ListSwapped(LIST, "reload", {A: 1}))
        role._from_primary(host, KeysChanged([("k2", b"y" * 32)]))
        assert dests["sip:127.0.0.1:5072"].flags == 4 and dests["sip:127.0.0.1:5071"].latency_est_ms == 12.5
        assert host.lists == [(LIST, "reload", {A: 1})] and host.keys == [[("k2", b"y" * 32)]]
        assert not host.stopping.is_set()
        role._from_primary(host, Stop())
        assert host.stopping.is_set()
        role.traffic_failure(dests["sip:127.0.0.1:5071"], "503 Service Unavailable")
        role.ready(host.stopping)
        assert read_message(theirs) == TrafficFailure(A, "503 Service Unavailable")
        assert read_message(theirs) == Ready()
        assert role.counters() == {"relayed_to_other_workers": 0, "relay_dropped": 0}
    finally:
        role.stop()
        role.channel.close()
        theirs.close()
        relays[0].close()
