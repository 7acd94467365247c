"""Selection algorithms 0, 4, 6, 8, 9 and the failover order they give."""

import random
from collections import Counter

from gdispatch.dispatcher.algorithms import select
from gdispatch.dispatcher.destination import FLAG_DISABLED, FLAG_INACTIVE
from gdispatch.dispatcher.hashing import kamailio_hash
from gdispatch.dispatcher.listfile import parse_list


class Msg:
    def __init__(self, call_id: bytes):
        self.call_id = call_id


def _set(text):
    dl = parse_list(text, "t")
    for d in dl.destinations():
        d.address = ("127.0.0.1", d.sip_uri.port or 5060)
    return dl.get(1)


THREE = "1 sip:127.0.0.1:1\n1 sip:127.0.0.1:2\n1 sip:127.0.0.1:3\n"


def ports(dests):
    return [d.sip_uri.port for d in dests]


def test_round_robin_cycles_and_lists_failover_in_order():
    s = _set(THREE)
    got = [ports(select(s, 4, Msg(b"x"))) for _ in range(4)]
    assert got == [[1, 2, 3], [2, 3, 1], [3, 1, 2], [1, 2, 3]]


def test_round_robin_skips_inactive_and_disabled():
    s = _set(THREE)
    s.destinations[1].flags = FLAG_INACTIVE
    assert [ports(select(s, 4, Msg(b"x")))[0] for _ in range(4)] == [1, 3, 1, 3]
    s.destinations[0].flags = FLAG_DISABLED
    assert ports(select(s, 4, Msg(b"x"))) == [3]


def test_nothing_selectable_gives_empty_list():
    s = _set(THREE)
    for d in s.destinations:
        d.flags = FLAG_INACTIVE
    assert select(s, 4, Msg(b"x")) == []


def test_hash_callid_is_kamailio_slot_and_sticky():
    s = _set(THREE)
    for cid in (b"a84b4c76e66710@pc33.atlanta.com", b"abc", b"1234"):
        first = ports(select(s, 0, Msg(cid)))[0]
        assert first == kamailio_hash(cid) % 3 + 1
        assert all(ports(select(s, 0, Msg(cid)))[0] == first for _ in range(5))


def test_priority_always_first_then_next():
    s = _set("1 sip:127.0.0.1:1 0 5\n1 sip:127.0.0.1:2 0 10\n")
    assert ports(select(s, 8, Msg(b"x"))) == [2, 1]
    assert ports(select(s, 8, Msg(b"x"), limit=1)) == [2]


def test_random_uses_every_destination():
    random.seed(1)
    s = _set(THREE)
    c = Counter(ports(select(s, 6, Msg(b"x")))[0] for _ in range(300))
    assert set(c) == {1, 2, 3} and min(c.values()) > 50


def test_weight_splits_exactly_per_hundred():
    s = _set("1 sip:127.0.0.1:1 0 0 weight=75\n1 sip:127.0.0.1:2 0 0 weight=25\n")
    c = Counter(ports(select(s, 9, Msg(b"x")))[0] for _ in range(4000))
    assert c == {1: 3000, 2: 1000}


def test_weight_short_total_pads_with_last():
    s = _set("1 sip:127.0.0.1:1 0 0 weight=10\n1 sip:127.0.0.1:2 0 0 weight=20\n")
    c = Counter(ports(select(s, 9, Msg(b"x")))[0] for _ in range(100))
    assert c == {1: 10, 2: 90}
