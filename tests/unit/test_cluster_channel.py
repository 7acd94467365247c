"""The channel between the primary and a worker (gdispatch.cluster.channel): every
message comes out of the other end as the dataclass that went in, framed whole, in
order; and the destinations are named alike in every process."""

from __future__ import annotations

import socket

from gdispatch.cluster.channel import (
    Channel,
    Hello,
    KeysChanged,
    Latencies,
    ListSwapped,
    Ready,
    Report,
    StateChanged,
    Stop,
    TrafficFailure,
    apply_states,
    dest_key,
    keyed,
    read_message,
    states_of,
)
from gdispatch.config import Config
from gdispatch.dispatcher.listfile import parse_list
from tests.support.wait import wait_for

LIST = "1 sip:127.0.0.1:5071 0 0\n1 sip:127.0.0.1:5072 0 0\n2 sip:127.0.0.1:5071 0 0\n"
KEY = (1, 0, "sip:127.0.0.1:5071")

MESSAGES = [
    Hello(Config(), 1, 7, [40001, 40002], {0: 8, 2: 9}, LIST, {KEY: 2}, [("k1", b"\x01" * 32)]),
    ListSwapped(LIST, "reload requested", {KEY: 0, (2, 0, "sip:127.0.0.1:5071"): 4}),
    StateChanged(KEY, 1),
    KeysChanged([("k2", b"\x02" * 32), ("k1", b"\x01" * 32)]),
    Latencies({KEY: 12.5}),
    Stop(),
    Ready(),
    TrafficFailure(KEY, "did not answer (transaction timeout)"),
    Report({KEY: 3}, {("1", "sip:127.0.0.1:5071"): [5, 4, 1]}, {"dispatched": 5, "requests": 9}),
    Report({}, {}, {}, metrics={("requests", "INVITE"): 5, ("invite_final", "bucket", 3): 2,
                                ("invite_final", "sum"): 0.25}),
]


def test_every_message_comes_out_as_it_went_in_on_a_blocking_socket():
    """The worker reads its Hello before gevent runs anything: `read_message` on a plain
    socket, as ``python -m gdispatch.cluster`` does."""
    a, b = socket.socketpair()
    channel = Channel(a)
    try:
        for msg in MESSAGES:
            channel.send(msg)
        got = [read_message(b) for _ in MESSAGES]
        assert got == MESSAGES
        assert [type(m) for m in got] == [type(m) for m in MESSAGES]
        channel.close()
        assert read_message(b) is None  # the end
    finally:
        b.close()


def test_a_started_channel_hands_each_message_over_in_order_then_says_it_closed():
    a, b = socket.socketpair()
    near, far = Channel(a), Channel(b)
    got, closed = [], []
    near.start(got.append, lambda: closed.append(True))
    for msg in MESSAGES:
        far.send(msg)
    wait_for(lambda: len(got) == len(MESSAGES), 2, 0.01, message=lambda: got)
    assert got == MESSAGES
    far.close()
    wait_for(lambda: closed, 2, 0.01)
    assert closed == [True]
    near.send(Ready())  # to nobody: dropped, no error
    near.close()


def test_a_message_that_fails_to_handle_does_not_end_the_channel():
    a, b = socket.socketpair()
    near, far = Channel(a), Channel(b)
    got = []

    def handle(msg):
        if isinstance(msg, Stop):
            raise RuntimeError("boom")
        got.append(msg)

    near.start(handle, lambda: None)
    far.send(Stop())
    far.send(Ready())
    wait_for(lambda: got, 2, 0.01)
    assert got == [Ready()]
    near.close()
    far.close()


def test_the_other_end_gone_before_start_is_told_at_start():
    a, b = socket.socketpair()
    b.close()
    channel = Channel(a)
    for _ in range(3):  # the first send may still be taken by the kernel
        channel.send(Report({}, {}, {"x": 1}))
    closed = []
    channel.start(lambda msg: None, lambda: closed.append(True))
    wait_for(lambda: closed, 2, 0.01)
    assert closed == [True]


def test_destinations_are_named_alike_in_every_process():
    primary, worker = parse_list(LIST), parse_list(LIST)
    assert dest_key(next(iter(primary.destinations()))) == KEY
    assert set(keyed(primary)) == set(keyed(worker)) == {KEY, (1, 1, "sip:127.0.0.1:5072"),
                                                          (2, 0, "sip:127.0.0.1:5071")}
    keyed(primary)[KEY].flags = 2  # disabled by the operator, in the primary
    apply_states(worker, {**states_of(primary), (9, 0, "sip:gone"): 1})
    assert states_of(worker) == states_of(primary) and keyed(worker)[KEY].flags == 2
