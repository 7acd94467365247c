"""Selection algorithms 0-15: what each chooses, the failover order, and where gdispatch
does better than Kamailio (with Kamailio's behaviour under kamailio_compat)."""

import random
from collections import Counter
from pathlib import Path

import pytest

from gdispatch.dispatcher.algorithms import (
    SUPPORTED,
    SelectOptions,
    check_options,
    exact_counts,
    select,
    spread,
)
from gdispatch.dispatcher.destination import FLAG_DISABLED, FLAG_INACTIVE, FLAG_TRYING
from gdispatch.dispatcher.hashing import kamailio_hash
from gdispatch.dispatcher.keys import TemplateError
from gdispatch.dispatcher.listfile import parse_list
from gdispatch.sip import parse_message
from tests.support import sipmsg

COMPAT = SelectOptions(kamailio_compat=True)
VECTORS = Path(__file__).parent.parent / "data" / "kamailio-hash-vectors.tsv"


def request(call_id="a84b4c76e66710@pc33.atlanta.com", from_uri="sip:alice@atlanta.example.com",
            to_uri="sip:bob@biloxi.example.com", ruri="sip:bob@biloxi.example.com", method="INVITE",
            headers=()):
    return parse_message(sipmsg.request(method, ruri, from_=f"Alice <{from_uri}>", to=f"<{to_uri}>", call_id=call_id,
                                        headers=headers))


def make_set(text, setid=1, **kw):
    dl = parse_list(text, "t", **kw)
    for d in dl.destinations():
        d.address = ("127.0.0.1", d.sip_uri.port or 5060)
    return dl.get(setid)


def gateways(n, attrs=lambda i: "", priority=lambda i: 0):
    return make_set("".join(f"1 sip:127.0.0.1:{i + 1} 0 {priority(i)} {attrs(i)}\n" for i in range(n)))


def ports(dests):
    return [d.sip_uri.port for d in dests]


def first(dset, alg, msg=None, options=None):
    got = select(dset, alg, msg or request(), options=options)
    return got[0].sip_uri.port if got else None


def spread_over(dset, alg, calls, options=None, msg=None):
    msg = msg or request()
    return Counter(first(dset, alg, msg, options) for _ in range(calls))


THREE = "1 sip:127.0.0.1:1\n1 sip:127.0.0.1:2\n1 sip:127.0.0.1:3\n"


# -- common rules --------------------------------------------------------------------------------


def test_every_kamailio_algorithm_number_0_to_15_is_supported():
    assert SUPPORTED == frozenset(range(16))
    with pytest.raises(ValueError, match="not supported"):
        select(make_set(THREE), 64, request())
    with pytest.raises(ValueError, match="not supported"):
        check_options(16)
    with pytest.raises(ValueError, match="template"):
        check_options(7)
    check_options(7, SelectOptions(hash_template="$ci"))


@pytest.mark.parametrize("alg", sorted(SUPPORTED - {7}))
def test_nothing_selectable_gives_empty_list(alg):
    s = make_set(THREE)
    for d in s.destinations:
        d.flags = FLAG_INACTIVE
    assert select(s, alg, request()) == []
    assert select(s, alg, request(), options=COMPAT) == []


@pytest.mark.parametrize("alg", sorted(SUPPORTED - {7}))
def test_limit_caps_the_list_and_only_selectable_ones_come_back(alg):
    s = gateways(5, attrs=lambda i: "weight=20;rweight=20")
    s.destinations[1].flags = FLAG_DISABLED
    s.destinations[3].address = None  # unresolved
    got = select(s, alg, request())
    assert sorted(ports(got)) == [1, 3, 5]
    assert len(select(s, alg, request(), limit=2)) == 2
    assert len(select(s, alg, request(), limit=1)) == 1


def test_trying_destinations_stay_selectable():
    s = make_set(THREE)
    s.destinations[0].flags = FLAG_TRYING
    assert ports(select(s, 8, request())) == [1, 2, 3]


def test_state_changes_are_seen_without_calling_state_changed():
    s = make_set(THREE)
    assert ports(select(s, 8, request())) == [1, 2, 3]
    s.destinations[0].flags = FLAG_INACTIVE
    assert ports(select(s, 8, request())) == [2, 3]
    s.destinations[0].flags = 0
    s.destinations[2].address = None
    assert ports(select(s, 8, request())) == [1, 2]
    s.state_changed()  # what the prober calls; harmless when nothing changed
    assert ports(select(s, 8, request())) == [1, 2]


def test_empty_set_gives_empty_list():
    s = make_set(THREE)
    s.destinations.clear()
    assert select(s, 0, request()) == []


# -- 8 priority, 4 round robin, 14 ---------------------------------------------------------------


def test_priority_always_first_then_next():
    s = make_set("1 sip:127.0.0.1:1 0 5\n1 sip:127.0.0.1:2 0 10\n")
    assert ports(select(s, 8, request())) == [2, 1]
    assert ports(select(s, 8, request(), limit=1)) == [2]


def test_round_robin_cycles_and_lists_failover_in_order():
    s = make_set(THREE)
    got = [ports(select(s, 4, request())) for _ in range(4)]
    assert got == [[1, 2, 3], [2, 3, 1], [3, 1, 2], [1, 2, 3]]


def test_round_robin_skips_inactive_and_disabled():
    s = make_set(THREE)
    s.destinations[1].flags = FLAG_INACTIVE
    assert [first(s, 4) for _ in range(4)] == [1, 3, 1, 3]
    s.destinations[0].flags = FLAG_DISABLED
    assert ports(select(s, 4, request())) == [3]


def test_round_robin_splits_exactly():
    assert spread_over(make_set(THREE), 4, 4000) == {1: 1334, 2: 1333, 3: 1333}
    # Kamailio starts at the last line of equal priorities: the bench's 1333/1333/1334.
    assert spread_over(make_set(THREE, kamailio_order=True), 4, 4000) == {1: 1333, 2: 1333, 3: 1334}


def test_alg14_is_round_robin_when_all_priorities_equal_and_positive():
    s = gateways(3, priority=lambda i: 7)
    assert [first(s, 14) for _ in range(4)] == [1, 2, 3, 1]


@pytest.mark.parametrize("prios", [(0, 0, 0), (7, 7, 5)])
def test_alg14_is_priority_otherwise(prios):
    s = gateways(3, priority=lambda i: prios[i])
    assert [first(s, 14) for _ in range(4)] == [1, 1, 1, 1]
    assert ports(select(s, 14, request())) == [1, 2, 3]


# -- 6 random --------------------------------------------------------------------------------------


def test_random_uses_every_destination_evenly():
    random.seed(1)
    c = spread_over(make_set(THREE), 6, 6000)
    assert set(c) == {1, 2, 3} and all(1800 < v < 2200 for v in c.values())


def test_random_spreads_over_the_active_ones_kamailio_doubles_the_next():
    random.seed(2)
    s = make_set(THREE)
    s.destinations[1].flags = FLAG_INACTIVE
    c = spread_over(s, 6, 6000)
    assert set(c) == {1, 3} and all(2700 < v < 3300 for v in c.values())
    c = spread_over(s, 6, 6000, COMPAT)  # random % 3, then probe forward: 2's share goes to 3
    assert set(c) == {1, 3} and 1800 < c[1] < 2200 and 3800 < c[3] < 4200


# -- hashing: 0-3, 5, 7 -----------------------------------------------------------------------------


def _vector_rows():
    for line in VECTORS.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        nslots, key1, key2, hashid, slot = line.split("\t")
        if hashid != "None":
            yield int(nslots), key1, key2, int(slot)


def test_hash_callid_is_kamailio_slot_and_sticky():
    s = make_set(THREE)
    for cid in (b"a84b4c76e66710@pc33.atlanta.com", b"abc", b"1234"):
        msg = request(call_id=cid.decode())
        assert first(s, 0, msg) == kamailio_hash(cid) % 3 + 1
        assert all(first(s, 0, msg) == kamailio_hash(cid) % 3 + 1 for _ in range(5))


def test_hash_callid_slots_equal_the_kamailio_vectors():
    # Rows of the vectors file that hash one key (Call-ID-like values).
    rows = [(n, k1, slot) for n, k1, k2, slot in _vector_rows() if not k2 and " " not in k1]
    assert len(rows) > 20
    for nslots, key1, slot in rows:
        s = gateways(nslots)
        assert first(s, 0, request(call_id=key1)) == slot + 1, key1


def test_hash_uri_slots_equal_the_kamailio_vectors():
    # key1 = URI user, key2 = host or host:port, exactly as the vectors were printed.
    sets = {n: gateways(n) for n in (3, 7)}
    checked = 0
    for nslots, key1, key2, slot in _vector_rows():
        if not key2 or "@" in key1 or key2.endswith(":5060"):
            continue
        uri = f"sip:{key1}@{key2}"
        for alg, msg in ((1, request(from_uri=uri)), (2, request(to_uri=uri)), (3, request(ruri=uri))):
            assert first(sets[nslots], alg, msg) == slot + 1, (alg, uri)
        checked += 1
    assert checked > 40


def test_hash_reads_uris_as_leniently_as_kamailio():
    # Unescaped UTF-8 in the user is not valid SIP, but Kamailio hashes it as written.
    s = gateways(7)
    msg = request(from_uri="sip:ünïcödé@Example.COM:5070;user=phone")
    assert first(s, 1, msg) == kamailio_hash("ünïcödé".encode(), b"Example.COM:5070") % 7 + 1
    assert first(s, 3, request(ruri="sip:bob:secret@[2001:db8::1]:5080?x=y")) == kamailio_hash(
        b"bob", b"[2001:db8::1]:5080") % 7 + 1
    assert first(s, 3, request(ruri="tel:+4930123;phone-context=x")) == kamailio_hash(b"+4930123") % 7 + 1


def test_hash_user_only_uses_the_user_part():
    s = gateways(7)
    opts = SelectOptions(hash_user_only=True)
    for nslots, key1, key2, slot in _vector_rows():
        if nslots == 7 and not key2 and key1 and "@" not in key1:
            for host in ("example.com", "10.0.0.1:5080"):
                assert first(s, 1, request(from_uri=f"sip:{key1}@{host}"), opts) == slot + 1


def test_hash_uri_leaves_out_the_default_port():
    s = gateways(7)
    for port in ("", ":5060"):
        assert first(s, 3, request(ruri=f"sip:alice@example.com{port}")) == kamailio_hash(
            b"alice", b"example.com") % 7 + 1
    assert first(s, 3, request(ruri="sips:alice@example.com:5061")) == kamailio_hash(
        b"alice", b"example.com") % 7 + 1
    assert first(s, 3, request(ruri="sip:alice@example.com:5061")) == kamailio_hash(
        b"alice", b"example.com:5061") % 7 + 1


def test_hash_is_sticky_per_key_and_spreads_keys():
    s = gateways(4)
    seen = Counter()
    for i in range(2000):
        msg = request(call_id=f"call-{i}@host")
        got = {first(s, 0, msg) for _ in range(3)}
        assert len(got) == 1
        seen[got.pop()] += 1
    assert all(350 < v < 650 for v in seen.values())


def _mapping(dset, alg, keys, options=None):
    return {k: first(dset, alg, request(call_id=k), options) for k in keys}


def test_rehash_moves_only_the_dead_destinations_keys_and_spreads_them():
    s = gateways(5)
    keys = [f"{i}@pc33.atlanta.example.com" for i in range(5000)]
    before = _mapping(s, 0, keys)
    s.destinations[1].flags = FLAG_INACTIVE  # port 2 goes down
    after = _mapping(s, 0, keys)
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == 2}
    landed = Counter(after[k] for k in moved)
    assert set(landed) == {1, 3, 4, 5}
    assert all(abs(v - len(moved) / 4) < len(moved) * 0.1 for v in landed.values())
    # Back up: every key returns where it was.
    s.destinations[1].flags = 0
    assert _mapping(s, 0, keys) == before


def test_rehash_keeps_a_moved_key_on_its_fallback_while_that_lives():
    s = gateways(5)
    keys = [f"k{i}" for i in range(3000)]
    s.destinations[1].flags = FLAG_INACTIVE
    one_down = _mapping(s, 0, keys)
    s.destinations[3].flags = FLAG_INACTIVE  # port 4 goes down too
    two_down = _mapping(s, 0, keys)
    for k in keys:
        if one_down[k] != 4:
            assert two_down[k] == one_down[k]


def test_kamailio_compat_sends_all_the_dead_ones_keys_to_the_next():
    s = gateways(5)
    keys = [f"{i}@pc33.atlanta.example.com" for i in range(3000)]
    before = _mapping(s, 0, keys)
    s.destinations[1].flags = FLAG_INACTIVE
    after = _mapping(s, 0, keys, COMPAT)
    assert {after[k] for k in keys if before[k] == 2} == {3}
    assert all(after[k] == before[k] for k in keys if before[k] != 2)


def test_hash_failover_follows_the_set_order():
    s = gateways(4)
    msg = request(call_id="x")
    slot = kamailio_hash(b"x") % 4
    assert ports(select(s, 0, msg)) == [(slot + k) % 4 + 1 for k in range(4)]


def test_hash_of_an_unreadable_uri_falls_back_to_round_robin():
    s = make_set(THREE)
    msg = request(from_uri="")  # From: Alice <>
    assert [first(s, 1, msg) for _ in range(3)] == [1, 2, 3]
    assert select(s, 1, msg, options=COMPAT) == []


# alg 5

def test_auth_username_hash_prefers_proxy_authorization():
    s = gateways(7)
    auth = 'Authorization: Digest username="bob", realm="atlanta.example.com", nonce="x", uri="sip:a", response="y"'
    proxy = 'Proxy-Authorization: Digest realm="x", username="alice@atlanta.example.com", nonce="n"'
    alice, bob = kamailio_hash(b"alice") % 7 + 1, kamailio_hash(b"bob") % 7 + 1
    assert alice != bob
    assert first(s, 5, request(headers=[auth])) == bob
    assert first(s, 5, request(headers=[auth, proxy])) == alice
    assert first(s, 5, request(headers=["Authorization: Digest username=bob"])) == bob
    # A Basic header is not Digest credentials: the Authorization one is used.
    assert first(s, 5, request(headers=["Proxy-Authorization: Basic YWxpY2U6eA==", auth])) == bob


def test_auth_username_without_credentials_is_round_robin():
    s = make_set(THREE)
    assert [first(s, 5) for _ in range(4)] == [1, 2, 3, 1]
    assert [first(s, 5, options=COMPAT) for _ in range(3)] == [2, 3, 1]


# alg 7

def test_template_hash_is_the_hash_of_the_expansion():
    s = gateways(7)
    msg = request(call_id="abc@x", from_uri="sip:alice@Atlanta.example.com:5070",
                  headers=["X-Account: 4711"])
    for template, key in [
        ("$fU@$ci", b"alice@abc@x"),
        ("$ci", b"abc@x"),
        ("  $fd  ", b"Atlanta.example.com"),
        ("$fu|$tu|$ru", b"sip:alice@Atlanta.example.com:5070|sip:bob@biloxi.example.com|sip:bob@biloxi.example.com"),
        ("$tU$td$rU$rd", b"bobbiloxi.example.combobbiloxi.example.com"),
        ("acct=$hdr(x-account)", b"acct=4711"),
    ]:
        opts = SelectOptions(hash_template=template)
        assert opts.hash_template.expand(msg) == key
        assert first(s, 7, msg, opts) == kamailio_hash(key) % 7 + 1


def test_template_compile_errors_come_at_configuration_time():
    for bad, words in [
        ("$xx", "unknown variable $xx"),
        ("$ciX", "unknown variable $ciX"),
        ("$hdr", "unknown variable $hdr"),
        ("$hdr()", "$hdr("),
        ("$hdr(X-A", "$hdr("),
        ("a$", "without a name"),
        ("constant", "no variable"),
    ]:
        with pytest.raises(TemplateError, match=words.replace("$", r"\$").replace("(", r"\(")):
            SelectOptions(hash_template=bad)


def test_template_missing_values_and_empty_expansion():
    s = make_set(THREE)
    opts = SelectOptions(hash_template="$hdr(X-Missing)")
    assert [first(s, 7, request(), opts) for _ in range(3)] == [1, 2, 3]  # round robin
    compat = SelectOptions(hash_template="$hdr(X-Missing)", kamailio_compat=True)
    assert select(s, 7, request(), options=compat) == []
    with pytest.raises(ValueError, match="hash_template"):
        select(s, 7, request())


# -- 9 weight -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [None, COMPAT])
def test_weight_splits_exactly_per_hundred(options):
    s = make_set("1 sip:127.0.0.1:1 0 0 weight=75\n1 sip:127.0.0.1:2 0 0 weight=25\n")
    assert spread_over(s, 9, 4000, options) == {1: 3000, 2: 1000}


@pytest.mark.parametrize("options", [None, COMPAT])
def test_weight_short_total_pads_with_last_long_total_truncates(options):
    s = make_set("1 sip:127.0.0.1:1 0 0 weight=10\n1 sip:127.0.0.1:2 0 0 weight=20\n")
    assert spread_over(s, 9, 100, options) == {1: 10, 2: 90}
    s = make_set("1 sip:127.0.0.1:1 0 0 weight=80\n1 sip:127.0.0.1:2 0 0 weight=80\n1 sip:127.0.0.1:3 0 0 weight=5\n")
    assert spread_over(s, 9, 200, options) == {1: 160, 2: 40}


@pytest.mark.parametrize("options", [None, COMPAT])
def test_weight_with_the_75_one_down_sends_all_to_the_other(options):
    s = make_set("1 sip:127.0.0.1:1 0 0 weight=75\n1 sip:127.0.0.1:2 0 0 weight=25\n")
    s.destinations[0].flags = FLAG_INACTIVE
    assert spread_over(s, 9, 400, options) == {2: 400}


def test_weight_rebalances_over_the_active_ones_kamailio_keeps_fixed_slots():
    text = "1 sip:127.0.0.1:1 0 0 weight=50\n1 sip:127.0.0.1:2 0 0 weight=30\n1 sip:127.0.0.1:3 0 0 weight=20\n"
    s = make_set(text)
    s.destinations[0].flags = FLAG_INACTIVE
    assert spread_over(s, 9, 500, None) == {2: 300, 3: 200}  # 30:20 kept
    k = make_set(text)
    k.destinations[0].flags = FLAG_INACTIVE
    assert spread_over(k, 9, 500, COMPAT) == {2: 400, 3: 100}  # 1's 50 slots probe to 2
    # Back up: the full split again.
    s.destinations[0].flags = 0
    assert spread_over(s, 9, 1000) == {1: 500, 2: 300, 3: 200}


def test_weight_slots_are_spread_evenly_and_deterministically():
    s = make_set("1 sip:127.0.0.1:1 0 0 weight=75\n1 sip:127.0.0.1:2 0 0 weight=25\n")
    seq = [first(s, 9) for _ in range(100)]
    assert all(seq[i : i + 4].count(2) == 1 for i in range(0, 100, 4))


def test_weight_when_only_the_first_has_none():
    text = "1 sip:127.0.0.1:1 0 9\n1 sip:127.0.0.1:2 0 0 weight=60\n1 sip:127.0.0.1:3 0 0 weight=40\n"
    assert spread_over(make_set(text), 9, 100, COMPAT) == {1: 100}  # Kamailio: no weights at all
    assert spread_over(make_set(text), 9, 100) == {2: 60, 3: 40}


def test_weight_without_any_weight_is_priority_order():
    assert spread_over(make_set(THREE), 9, 30) == {1: 30}


# -- 10 call load ---------------------------------------------------------------------------------------


def test_call_load_picks_the_least_loaded_ties_to_the_lowest_index():
    s = gateways(3, attrs=lambda i: f"duid=gw{i}")
    assert ports(select(s, 10, request())) == [1, 2, 3]
    s.destinations[0].load = 2
    s.destinations[1].load = 1
    s.destinations[2].load = 1
    assert ports(select(s, 10, request())) == [2, 3, 1]
    s.destinations[1].flags = FLAG_INACTIVE
    assert ports(select(s, 10, request())) == [3, 1]


def test_call_load_respects_maxload_and_is_empty_when_all_are_full():
    s = gateways(3, attrs=lambda i: "maxload=2" if i < 2 else "maxload=0")
    s.destinations[0].load = 2
    s.destinations[1].load = 1
    s.destinations[2].load = 5  # maxload 0: unlimited
    assert ports(select(s, 10, request())) == [2, 3]  # 1 is full: not even in the failover list
    s.destinations[2].maxload = 5
    assert ports(select(s, 10, request())) == [2]
    s.destinations[1].load = 2
    assert select(s, 10, request()) == []
    assert s.least_loaded() is None and s.total_load() == 9


def test_call_load_counts_as_the_proxy_maintains_it():
    s = gateways(3, attrs=lambda i: "maxload=2")
    got = []
    for _ in range(6):
        d = select(s, 10, request())[0]
        d.load += 1
        got.append(d.sip_uri.port)
    assert got == [1, 2, 3, 1, 2, 3]
    assert select(s, 10, request()) == []


def test_call_load_only_for_invite():
    s = gateways(3)
    s.destinations[0].load = 9
    assert ports(select(s, 10, request(method="MESSAGE"))) == [1, 2, 3]
    assert first(s, 10, request()) == 2


# -- 11 relative weight ---------------------------------------------------------------------------------


def test_relative_weight_exact_shares_with_30_destinations():
    s = gateways(30, attrs=lambda i: f"rweight={i + 1}")
    total = sum(range(1, 31))  # 465
    c = spread_over(s, 11, 2 * total)
    assert c == {i + 1: 2 * (i + 1) for i in range(30)}


def test_relative_weight_equal_shares_with_30_destinations_kamailio_gives_the_last_more():
    s = gateways(30, attrs=lambda i: "rweight=1")
    assert spread_over(s, 11, 300) == {i + 1: 10 for i in range(30)}
    k = gateways(30, attrs=lambda i: "rweight=1")
    c = spread_over(k, 11, 100, COMPAT)  # kamailio#2698: 3 slots each, the 10 left to the last
    assert c == {**{i + 1: 3 for i in range(29)}, 30: 13}


def test_relative_weight_rebuilds_over_the_active_ones():
    s = gateways(3, attrs=lambda i: f"rweight={(i + 1) * 10}")
    assert spread_over(s, 11, 600) == {1: 100, 2: 200, 3: 300}
    s.destinations[2].flags = FLAG_INACTIVE
    assert spread_over(s, 11, 300) == {1: 100, 2: 200}
    s.destinations[2].flags = 0
    assert spread_over(s, 11, 600) == {1: 100, 2: 200, 3: 300}
    k = gateways(3, attrs=lambda i: f"rweight={(i + 1) * 10}")
    k.destinations[2].flags = FLAG_INACTIVE
    assert spread_over(k, 11, 300, COMPAT) == {1: 99, 2: 201}  # 33 + 66 slots, the 1 left to the last


def test_relative_weight_skips_destinations_without_rweight():
    s = gateways(3, attrs=lambda i: "rweight=50" if i else "")
    assert spread_over(s, 11, 100) == {2: 50, 3: 50}


# -- 12 parallel ------------------------------------------------------------------------------------------


def test_parallel_returns_every_active_destination():
    s = gateways(4)
    assert ports(select(s, 12, request())) == [1, 2, 3, 4]
    s.destinations[0].flags = FLAG_INACTIVE
    s.destinations[2].flags = FLAG_INACTIVE
    assert ports(select(s, 12, request())) == [2, 4]
    # Kamailio: from the first active one, every later one whatever its state.
    assert ports(select(s, 12, request(), options=COMPAT)) == [2, 3, 4]


# -- 13 latency ---------------------------------------------------------------------------------------------


def test_latency_without_stats_is_priority_then_round_robin_among_equals():
    s = make_set("1 sip:127.0.0.1:1 0 10\n1 sip:127.0.0.1:2 0 10\n1 sip:127.0.0.1:3 0 5\n")
    assert [ports(select(s, 13, request())) for _ in range(3)] == [[1, 2, 3], [2, 1, 3], [1, 2, 3]]


def test_latency_lowers_priority_by_latency_over_priority():
    s = make_set("1 sip:127.0.0.1:1 0 10\n1 sip:127.0.0.1:2 0 10\n1 sip:127.0.0.1:3 0 5\n")
    d1, d2, d3 = s.destinations
    d1.latency_est_ms = 55.0  # 10 - 55 // 10 = 5
    d2.latency_est_ms = 8.0  # below its priority: no handicap, stays 10
    d3.latency_est_ms = 3.0  # stays 5
    assert ports(select(s, 13, request())) == [2, 1, 3]  # 1 and 3 tie at 5: rotation order from 1
    assert ports(select(s, 13, request())) == [2, 3, 1]  # the rotation now starts after 2
    d2.latency_est_ms = 500.0  # 10 - 50 → at least 1
    assert first(s, 13) in (1, 3)
    assert ports(select(s, 13, request()))[-1] == 2


def test_latency_attr_seeds_the_estimate():
    s = make_set("1 sip:127.0.0.1:1 0 10 latency=200\n1 sip:127.0.0.1:2 0 8\n")
    assert s.destinations[0].latency_est_ms == 200.0
    assert first(s, 13) == 2  # 10 - 20 → 1 < 8


# -- 15 SRV style ---------------------------------------------------------------------------------------------


def test_srv_uses_the_lowest_priority_value_weighted_then_the_next_tier():
    s = make_set(
        "1 sip:127.0.0.1:1 0 20 weight=50\n"
        "1 sip:127.0.0.1:2 0 10 weight=60\n"
        "1 sip:127.0.0.1:3 0 10 weight=20\n"
        "1 sip:127.0.0.1:4 0 10 weight=20\n"
    )
    assert spread_over(s, 15, 500) == {2: 300, 3: 100, 4: 100}
    got = select(s, 15, request())
    assert ports(got)[-1] == 1 and sorted(ports(got)[:3]) == [2, 3, 4]
    for d in s.destinations[1:]:
        d.flags = FLAG_INACTIVE
    assert ports(select(s, 15, request())) == [1]  # failover goes to the next tier


def test_srv_equal_shares_without_weights_and_tier_changes_on_state():
    s = make_set("1 sip:127.0.0.1:1 0 1\n1 sip:127.0.0.1:2 0 1\n1 sip:127.0.0.1:3 0 2\n1 sip:127.0.0.1:4 0 3\n")
    assert spread_over(s, 15, 100) == {1: 50, 2: 50}
    assert ports(select(s, 15, request()))[2:] == [3, 4]
    s.destinations[-1].flags = FLAG_INACTIVE  # port 1 (priority 1, last in try order)
    s.destinations[-2].flags = FLAG_INACTIVE  # port 2
    assert spread_over(s, 15, 10) == {3: 10}
    assert ports(select(s, 15, request())) == [3, 4]


# -- slot tables -------------------------------------------------------------------------------------------------


def test_exact_counts_and_spread():
    assert exact_counts([75, 25]) == [3, 1]
    assert exact_counts([0, 10, 20]) == [0, 1, 2]
    assert exact_counts([0, 0]) == [0, 0]
    big = exact_counts([3, 3, 3], cap=10)
    assert sum(big) == 3 and big == [1, 1, 1]  # gcd first
    capped = exact_counts([7, 11, 13], cap=10)
    assert sum(capped) == 10 and capped == [2, 4, 4]  # 2.26, 3.55, 4.19 → largest remainders
    assert Counter(spread([3, 1])) == {0: 3, 1: 1}
    assert spread([1, 1, 1]) == [0, 1, 2]
    assert spread([2, 1]) == [0, 1, 0]


def test_probing_bit_changes_do_not_restart_the_weight_cycle():
    """AX -> AP (the probing bit set by the first ping) does not change who is selectable:
    the 100-slot cycle goes on, so 4000 calls still split exactly 3000/1000."""
    from gdispatch.dispatcher.destination import FLAG_PROBING

    s = make_set("1 sip:127.0.0.1:1 0 0 weight=75\n1 sip:127.0.0.1:2 0 0 weight=25\n")
    msg = request()
    c = Counter()
    for i in range(4000):
        if i in (37, 1111):
            for d in s.destinations:
                d.flags |= FLAG_PROBING
        c[ports(select(s, 9, msg))[0]] += 1
    assert c == {1: 3000, 2: 1000}
