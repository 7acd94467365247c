"""Keepalive state transitions (Kamailio's, per probing mode and thresholds) and latency
statistics, with plain destinations and no network."""

import pytest

from gdispatch.dispatcher.listfile import parse_list
from gdispatch.probing.policy import (
    LatencyStats,
    ProbeSettings,
    ProbeState,
    apply_result,
    apply_traffic_failure,
    parse_reply_codes,
    should_ping,
)


def dest(flags=0):
    d = next(parse_list(f"1 sip:127.0.0.1:5071 {flags} 0\n", "t").destinations())
    d.address = ("127.0.0.1", 5071)
    return d


def run(d, results, **kw):
    s = ProbeSettings(**kw)
    st = ProbeState("1")
    letters = []
    for ok in results:
        apply_result(d, st, ok, s)
        letters.append(d.state_letters())
    return letters


def test_mode1_down_after_threshold_and_up_after_inactive_threshold():
    d = dest()
    assert d.state_letters() == "AX"
    got = run(d, [True, False, False, False, True, True, True], probing_threshold=2, inactive_threshold=2)
    # AX -> AP on the first reply (mode 1 sets probing), TP after one loss, IP after two,
    # still IP after one reply, AP after two.
    assert got == ["AP", "TP", "IP", "IP", "IP", "AP", "AP"]


def test_mode1_threshold_1_goes_straight_to_inactive():
    assert run(dest(), [False, True], probing_threshold=1) == ["IP", "AP"]


def test_a_trying_destination_recovers_on_one_reply():
    assert run(dest(), [False, True], probing_threshold=3) == ["TP", "AP"]


def test_mode0_probes_once_and_clears_probing():
    d = dest(8)  # AP from the file: probing bit set
    assert should_ping(d, 0)
    assert run(d, [True], mode=0) == ["AX"]
    assert not should_ping(d, 0)
    d = dest(8)
    assert run(d, [False], mode=0) == ["IX"]  # Kamailio: never pinged again until re-marked


def test_mode2_pings_only_inactive_probing():
    d = dest(1 | 8)
    assert should_ping(d, 2) and not should_ping(dest(8), 2)
    assert run(d, [True], mode=2) == ["AX"]


def test_mode3_keeps_probing():
    d = dest(8)
    assert run(d, [True, False, True], mode=3) == ["AP", "IP", "AP"]


def test_disabled_no_ping_and_unresolved_are_not_pinged():
    assert not should_ping(dest(4), 1)
    assert not should_ping(dest(32), 1)
    d = dest(16)
    d.address = None
    assert not should_ping(d, 1)
    assert dest(32).state_letters() == "AN" and dest(4).state_letters() == "DX"


def test_disabled_meanwhile_is_left_alone():
    d = dest(4)
    assert run(d, [False, True]) == ["DX", "DX"]


def test_reply_codes():
    s = ProbeSettings(reply_codes=parse_reply_codes(["code=405", "class=4", 501]))
    assert s.accepts(200) and s.accepts(299) and s.accepts(405) and s.accepts(480) and s.accepts(501)
    assert not s.accepts(503) and not ProbeSettings().accepts(405)
    with pytest.raises(ValueError):
        parse_reply_codes(["class=9"])
    with pytest.raises(ValueError):
        parse_reply_codes(["abc"])


def test_traffic_failure_modes():
    d = dest()
    st = ProbeState("1")
    apply_traffic_failure(d, st, ProbeSettings(probing_threshold=3))
    assert d.state_letters() == "TP"
    apply_traffic_failure(d, st, ProbeSettings(mark="inactive"))
    assert d.state_letters() == "IP"
    d2 = dest()
    apply_traffic_failure(d2, ProbeState("2"), ProbeSettings(mark="off"))
    assert d2.state_letters() == "AX"


def test_latency_stats():
    st = LatencyStats()
    for v in (10, 20, 30):
        st.add(v, 0.1)
    assert st.count == 3 and st.mean == pytest.approx(20) and st.std == pytest.approx(10)
    assert st.estimate == pytest.approx(20) and st.maximum == 30  # the mean until 10 samples
    for _ in range(7):
        st.add(20, 0.1)
    st.add(120, 0.1)  # the 11th sample moves the estimate by alpha
    assert st.estimate == pytest.approx(0.1 * 120 + 0.9 * 20)
    seeded = LatencyStats(50)
    assert seeded.estimate == 50 and seeded.count == 10000
    assert set(st.as_dict()) == {"AVG", "STD", "EST", "MAX", "TIMEOUT"}
