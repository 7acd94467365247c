"""Keepalive state transitions (Kamailio's, per probing mode and thresholds), the sooner
retries of a destination that is down, and latency statistics, with plain destinations,
a fake clock and no network."""

import pytest

from gdispatch.dispatcher.listfile import parse_list
from gdispatch.probing.pinger import Prober
from gdispatch.probing.policy import (
    LatencyStats,
    ProbeSettings,
    ProbeState,
    apply_result,
    apply_traffic_failure,
    next_retry,
    parse_reply_codes,
    should_ping,
)
from gdispatch.transaction.timers import Scheduler


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


# -- sooner retries of a destination that is down ---------------------------------------------


def retry_times(d, st, s, outcomes, now=0.0):
    """Feed ping outcomes, each at the time the previous one scheduled (or 10 s later when
    none was): the times at which a retry was scheduled, None for none."""
    times = []
    for ok in outcomes:
        apply_result(d, st, ok, s)
        at = next_retry(d, st, s, now)
        times.append(at)
        now = at if at is not None else now + s.interval
    return times


def test_a_destination_that_goes_down_is_retried_after_1_2_4_8_s_then_at_its_turn():
    d, st, s = dest(), ProbeState("1"), ProbeSettings(interval=10)
    # Down at 0: retried at 1, 3, 7, 15; the next delay (16 s) is past the interval.
    assert retry_times(d, st, s, [False] * 6) == [1, 3, 7, 15, None, None]
    assert st.retry_at is None and d.state_letters() == "IP"
    # It answers: up, nothing scheduled; down again later: the back-off starts from 1 s.
    assert retry_times(d, st, s, [True], now=100) == [None] and d.state_letters() == "AP"
    assert retry_times(d, st, s, [False, False], now=200) == [201, 203]


def test_without_retry_down_a_destination_that_is_down_waits_its_turn_as_in_kamailio():
    d, st = dest(), ProbeState("1")
    assert retry_times(d, st, ProbeSettings(interval=10, retry_down=False), [False] * 3) == [None, None, None]
    assert d.state_letters() == "IP" and st.retry_at is None


def test_an_inactive_destination_needing_two_replies_is_retried_between_them():
    d, st, s = dest(), ProbeState("1"), ProbeSettings(interval=10, inactive_threshold=2)
    assert retry_times(d, st, s, [False, True, True]) == [1, 3, None]
    assert d.state_letters() == "AP"


def test_no_sooner_retry_while_up_trying_disabled_unpinged_or_with_a_short_interval():
    s = ProbeSettings(interval=10, probing_threshold=2)
    d, st = dest(), ProbeState("1")
    assert retry_times(d, st, s, [False]) == [None] and d.state_letters() == "TP"  # still used
    d, st = dest(), ProbeState("1")
    apply_result(d, st, False, ProbeSettings(interval=10, mode=0))  # mode 0: IX, never pinged again
    assert d.state_letters() == "IX" and next_retry(d, st, ProbeSettings(interval=10, mode=0), 0) is None
    d, st = dest(), ProbeState("1")
    apply_result(d, st, False, s)
    apply_result(d, st, False, s)
    d.flags |= 4  # disabled by the operator meanwhile
    assert next_retry(d, st, s, 0) is None
    d, st = dest(), ProbeState("1")
    assert retry_times(d, st, ProbeSettings(interval=1), [False]) == [None]  # 1 s is the interval already


def test_a_traffic_failure_that_marks_it_down_starts_the_back_off():
    d, st = dest(), ProbeState("1")
    s = ProbeSettings(interval=10, mark="inactive")
    st.retries = 3  # from an earlier outage
    apply_traffic_failure(d, st, s)
    assert d.state_letters() == "IP" and next_retry(d, st, s, 50) == 51


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class PingingProxy:
    """What the prober needs of the proxy: a scheduler on the fake clock, and `originate`,
    which records each ping and lets the test answer it."""

    def __init__(self, clock):
        self.scheduler = Scheduler(clock)
        self.pings = []  # (time, on_final)
        self.clock = clock
        self.default_socket = None

    def originate(self, transport, addr, method, build, on_final, socket=None, peer=None):
        self.pings.append((self.clock(), on_final))
        return None

    def answer(self, status):
        self.pings[-1][1](status, None if status != 200 else FakeReply())


class FakeReply:
    reason = b"OK"


def test_the_prober_pings_a_destination_that_went_down_on_the_back_off_until_it_answers():
    clock = FakeClock()
    proxy = PingingProxy(clock)
    dlist = parse_list("1 sip:127.0.0.1:5071 0 0\n", "t")
    d = next(dlist.destinations())
    d.address = ("127.0.0.1", 5071)
    changes = []
    prober = Prober(proxy, ProbeSettings(interval=10, timeout=2), lambda: dlist,
                    on_change=lambda dest, old, new, why: changes.append((clock(), new)), clock=clock)
    prober.attach(dlist)
    prober.ping(d)  # the first round, as the proxy starts: the gateway is not there yet
    proxy.answer(503)
    assert d.state_letters() == "IP"

    def run_until(t):
        while clock.now < t:
            clock.now = round(clock.now + 0.25, 2)
            proxy.scheduler.run_due(clock.now)

    run_until(1001)
    assert [t for t, _ in proxy.pings] == [1000, 1001]  # retried 1 s after it went down
    proxy.answer(503)
    run_until(1003)
    assert [t for t, _ in proxy.pings] == [1000, 1001, 1003]  # then 2 s after that
    proxy.answer(200)  # the gateway is up: AP three seconds after the start, not ten
    assert d.state_letters() == "AP" and changes[-1] == (1003, "AP")
    run_until(1020)
    assert len(proxy.pings) == 3  # up: back to its turn in the round (not run here)
    assert d.probe.retry_at is None


def test_a_round_sends_no_more_pings_once_pinging_is_turned_off(monkeypatch):
    # A round spreads its pings over the interval; `dispatcher.ping_active 0` in the
    # middle of it stops the rest, as Kamailio's timer checks ds_ping_active.
    import gevent

    clock = FakeClock()
    proxy = PingingProxy(clock)
    dlist = parse_list("".join(f"1 sip:127.0.0.1:{5071 + i} 8 0\n" for i in range(3)), "t")
    for i, d in enumerate(dlist.destinations()):
        d.address = ("127.0.0.1", 5071 + i)
    prober = Prober(proxy, ProbeSettings(interval=3, timeout=2), lambda: dlist,
                    on_change=lambda *a: None, clock=clock)
    prober.attach(dlist)

    class RoundOver(Exception):
        pass

    def sleep(seconds):
        if len(proxy.pings) == 1:
            prober.active = False  # the operator's command, after the round's first ping
        if clock.now >= 1000 + 2 * 3:
            raise RoundOver
        clock.now += seconds

    monkeypatch.setattr(gevent, "sleep", sleep)
    with pytest.raises(RoundOver):
        prober._run()
    assert [t for t, _ in proxy.pings] == [1000]
