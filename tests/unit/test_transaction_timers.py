"""TimerConfig values, the sans-IO Scheduler and FakeClock."""

import dataclasses
import logging

import pytest

from gdispatch.transaction import timers
from gdispatch.transaction.timers import FakeClock, Scheduler, TimerConfig


@pytest.fixture
def clock():
    return FakeClock()


# Delays the tests below schedule with; "lists" gives some of them lists of their own, so
# that every test runs against the heap alone and against lists and heap together.
SOME_FIXED_DELAYS = (0, 1, 2, 3, 5, 10)


@pytest.fixture(params=["heap", "lists"])
def scheduler(request, clock):
    scheduler = Scheduler(clock)
    if request.param == "lists":
        scheduler.fixed_delays(*SOME_FIXED_DELAYS)
    return scheduler


def held(scheduler):
    """Entries the scheduler holds, live or cancelled."""
    return len(scheduler._heap) + sum(len(fifo) for fifo in scheduler._by_delay.values())


# -- TimerConfig ----------------------------------------------------------------------


def test_delays_are_every_value_a_transaction_schedules_with():
    assert TimerConfig().delays == (0.5, 1.0, 2.0, 4.0, 32.0, 5.0)
    assert TimerConfig(t1=0.5, t2=4.0, linger=5.0).delays == (0.5, 1.0, 2.0, 4.0, 32.0, 5.0)
    assert TimerConfig(t1=0.25, t2=1.0, t4=2.0, linger=3.0).delays == (0.25, 0.5, 1.0, 16.0, 3.0, 2.0)
    # A T2 that never caps the doubling: 64*T1 (Timers B, F, H) still ends it.
    assert TimerConfig(t2=float("inf")).delays[:6] == (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    assert len(TimerConfig(t2=float("inf")).delays) <= 10
    assert len(TimerConfig(t1=1e-300, t2=4.0).delays) <= 10


def test_default_timer_values_follow_rfc3261_table_4_and_rfc6026():
    t = TimerConfig()
    assert (t.t1, t.t2, t.t4) == (0.5, 4.0, 5.0)
    assert t.timer_b == t.timer_f == t.timer_h == t.timer_j == 32.0
    assert t.timer_d == 32.0
    assert t.timer_i == t.timer_k == 5.0
    assert t.timer_l == t.timer_m == 32.0


def test_derived_timers_follow_t1_and_t4():
    t = TimerConfig(t1=0.1, t2=1.0, t4=2.0)
    assert t.timer_b == t.timer_f == t.timer_h == t.timer_j == pytest.approx(6.4)
    assert t.timer_l == t.timer_m == pytest.approx(6.4)
    assert t.timer_i == t.timer_k == 2.0


def test_timer_d_is_at_least_32s_and_covers_a_larger_timer_h():
    assert TimerConfig(t1=0.1, t2=1.0).timer_d == 32.0
    assert TimerConfig(t1=1.0, t2=4.0).timer_d == 64.0


@pytest.mark.parametrize(
    "kwargs", [{"t1": 0}, {"t1": -1}, {"t1": 1.0, "t2": 0.5}, {"t4": -0.1}]
)
def test_timer_config_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        TimerConfig(**kwargs)


def test_timer_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TimerConfig().t1 = 1.0


# -- FakeClock ------------------------------------------------------------------------


def test_fake_clock_reads_and_advances():
    clock = FakeClock(10.0)
    assert clock() == clock.now() == 10.0
    clock.advance(2.5)
    assert clock() == 12.5
    clock.advance_to(20)
    assert clock() == 20.0


def test_fake_clock_does_not_go_back():
    clock = FakeClock(5.0)
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        clock.advance_to(4.0)


def test_fake_clock_runs_each_timer_at_its_own_deadline(clock, scheduler):
    seen = []
    scheduler.call_later(1.0, lambda: seen.append(("a", clock())))
    scheduler.call_later(3.0, lambda: seen.append(("b", clock())))
    scheduler.call_later(9.0, lambda: seen.append(("c", clock())))
    assert clock.advance(5.0, scheduler) == 2
    assert seen == [("a", 1.0), ("b", 3.0)]
    assert clock() == 5.0


def test_fake_clock_gives_timers_scheduled_by_timers_exact_deadlines(clock, scheduler):
    seen = []

    def tick(n):
        seen.append(clock())
        if n:
            scheduler.call_later(1.5, tick, n - 1)

    scheduler.call_later(1.5, tick, 3)
    clock.advance(100, scheduler)
    assert seen == [1.5, 3.0, 4.5, 6.0]


# -- Scheduler ------------------------------------------------------------------------


def test_now_reads_the_injected_clock(clock, scheduler):
    clock.advance(7)
    assert scheduler.now() == 7


def test_run_due_runs_due_timers_in_deadline_order(clock, scheduler):
    seen = []
    scheduler.call_later(3, seen.append, "c")
    scheduler.call_later(1, seen.append, "a")
    scheduler.call_later(2, seen.append, "b")
    scheduler.call_later(4, seen.append, "d")
    clock.advance(3)
    assert scheduler.run_due() == 3
    assert seen == ["a", "b", "c"]
    assert len(scheduler) == 1


def test_timers_with_equal_deadlines_run_in_scheduling_order(clock, scheduler):
    seen = []
    for name in "abcde":
        scheduler.call_later(1, seen.append, name)
    clock.advance(1)
    scheduler.run_due()
    assert seen == list("abcde")


def test_run_due_with_explicit_now_ignores_the_clock(clock, scheduler):
    seen = []
    scheduler.call_later(5, seen.append, 1)
    assert scheduler.run_due(4.9) == 0
    assert scheduler.run_due(5.0) == 1
    assert seen == [1]
    assert clock() == 0


def test_nothing_runs_before_its_deadline(clock, scheduler):
    scheduler.call_later(1.0, pytest.fail)
    clock.advance(0.999)
    assert scheduler.run_due() == 0
    assert len(scheduler) == 1


def test_timer_scheduled_by_a_callback_runs_in_the_same_call_when_due(clock, scheduler):
    seen = []

    def first():
        seen.append("first")
        scheduler.call_later(0, seen.append, "now")
        scheduler.call_later(10, seen.append, "later")

    scheduler.call_later(1, first)
    clock.advance(2)
    assert scheduler.run_due() == 2
    assert seen == ["first", "now"]
    assert len(scheduler) == 1
    assert scheduler.next_deadline() == 12.0


def test_cancelled_timer_does_not_run(clock, scheduler):
    handle = scheduler.call_later(1, pytest.fail)
    assert handle.active
    handle.cancel()
    assert not handle.active
    assert len(scheduler) == 0
    clock.advance(2)
    assert scheduler.run_due() == 0


def test_cancel_is_idempotent_and_harmless_after_running(clock, scheduler):
    seen = []
    ran = scheduler.call_later(1, seen.append, 1)
    scheduler.call_later(5, seen.append, 5)
    twice = scheduler.call_later(3, seen.append, 3)
    twice.cancel()
    twice.cancel()
    clock.advance(1)
    scheduler.run_due()
    assert not ran.active
    ran.cancel()
    assert len(scheduler) == 1
    clock.advance(10)
    assert scheduler.run_due() == 1
    assert seen == [1, 5]
    assert len(scheduler) == 0


def test_a_timer_may_cancel_another_due_in_the_same_call(clock, scheduler):
    seen = []
    victim = None

    def killer():
        seen.append("killer")
        victim.cancel()

    scheduler.call_later(1, killer)
    victim = scheduler.call_later(1, seen.append, "victim")
    clock.advance(1)
    assert scheduler.run_due() == 1
    assert seen == ["killer"]


def test_next_deadline_skips_cancelled_timers(scheduler):
    assert scheduler.next_deadline() is None
    first = scheduler.call_later(1, pytest.fail)
    scheduler.call_later(2, lambda: None)
    assert scheduler.next_deadline() == 1
    first.cancel()
    assert scheduler.next_deadline() == 2
    assert len(scheduler) == 1


def test_next_deadline_is_none_when_only_cancelled_timers_remain(scheduler):
    scheduler.call_later(1, pytest.fail).cancel()
    assert scheduler.next_deadline() is None
    assert len(scheduler) == 0


def test_sleep_time_is_until_the_next_deadline_within_resolution_and_idle_tick(clock, scheduler):
    # Nothing scheduled: the idle tick.
    assert scheduler.sleep_time(0.0, resolution=0.003, idle=0.05) == 0.05
    assert scheduler.sleep_time(0.0) == timers.IDLE_TICK
    later = scheduler.call_later(0.015, lambda: None)
    assert scheduler.sleep_time(0.0, resolution=0.003, idle=0.05) == pytest.approx(0.015)
    # From the `now` given, not the scheduler's clock.
    assert scheduler.sleep_time(0.01, resolution=0.003, idle=0.05) == pytest.approx(0.005)
    # A deadline closer than the resolution (or already past) waits the resolution:
    # what falls due meanwhile runs together.
    soon = scheduler.call_later(0.0002, lambda: None)
    assert scheduler.sleep_time(0.0, resolution=0.003, idle=0.05) == 0.003
    assert scheduler.sleep_time(5.0, resolution=0.003, idle=0.05) == 0.003
    assert scheduler.sleep_time(0.0) == timers.RESOLUTION
    soon.cancel()
    later.cancel()
    scheduler.call_later(30, lambda: None)
    assert scheduler.sleep_time(0.0, resolution=0.003, idle=0.05) == 0.05


def test_exception_in_a_callback_is_logged_and_the_rest_still_run(clock, scheduler, caplog):
    seen = []

    def boom():
        raise RuntimeError("boom")

    scheduler.call_later(1, seen.append, "before")
    scheduler.call_later(2, boom)
    scheduler.call_later(3, seen.append, "after")
    clock.advance(3)
    with caplog.at_level(logging.ERROR, logger="gdispatch.transaction"):
        assert scheduler.run_due() == 3
    assert seen == ["before", "after"]
    [record] = caplog.records
    assert record.name == "gdispatch.transaction"
    assert record.exc_info[0] is RuntimeError
    # and the scheduler still works afterwards
    scheduler.call_later(1, seen.append, "again")
    clock.advance(1)
    assert scheduler.run_due() == 1
    assert seen[-1] == "again"


def test_heap_is_compacted_when_most_entries_are_cancelled(clock, scheduler):
    handles = [scheduler.call_later(1 + i, lambda: None) for i in range(1000)]
    for handle in handles[:600]:
        handle.cancel()
    assert len(scheduler) == 400
    # More than half cancelled: the dead entries are gone, not just skipped.
    assert held(scheduler) < 1000
    assert held(scheduler) <= 2 * len(scheduler)
    assert scheduler.next_deadline() == 601
    clock.advance(2000)
    assert scheduler.run_due() == 400
    assert len(scheduler) == 0


def test_heap_stays_bounded_under_schedule_and_cancel_churn(scheduler):
    keep = [scheduler.call_later(1000 + i, lambda: None) for i in range(10)]
    for i in range(100_000):
        scheduler.call_later(i % 97, lambda: None).cancel()
    assert len(scheduler) == len(keep)
    assert held(scheduler) <= 2 * (len(keep) + 40)


def test_dead_entries_are_compacted_while_pops_keep_the_cancelled_count_level(clock, scheduler):
    # 33 cancelled timers far ahead, and the 100 live ones that kept them from being
    # compacted run. Then every cancel is followed by the pop of what it cancelled, so the
    # count of cancelled entries goes 33, 34, 33, 34...: compaction is still asked every
    # so many cancels, and the 33 dead entries go.
    dead = [scheduler.call_later(100, lambda: None) for _ in range(33)]
    for _ in range(100):
        scheduler.call_later(50, lambda: None)
    for handle in dead:
        handle.cancel()
    assert held(scheduler) == 133
    clock.advance(50)
    assert scheduler.run_due() == 100
    for _ in range(64):
        scheduler.call_later(0.1, lambda: None).cancel()
        clock.advance(0.2)  # 64 of them stay well before the dead entries' deadline
        assert scheduler.run_due() == 0
    assert clock.now() < 100
    assert len(scheduler) == 0
    assert held(scheduler) <= 1


def test_compaction_inside_run_due_keeps_order_and_counts(clock, scheduler):
    seen = []
    victims = [scheduler.call_later(5 + i, seen.append, "victim") for i in range(100)]

    def cancel_all():
        for handle in victims:
            handle.cancel()
        seen.append("cancelled")

    scheduler.call_later(1, cancel_all)
    scheduler.call_later(2, seen.append, "two")
    scheduler.call_later(500, seen.append, "late")
    clock.advance(1000)
    assert scheduler.run_due() == 3
    assert seen == ["cancelled", "two", "late"]
    assert len(scheduler) == 0
    assert held(scheduler) == 0


def test_cancelled_handle_releases_its_callback(scheduler):
    class Owner:
        def cb(self):
            pass

    owner = Owner()
    handle = scheduler.call_later(1, owner.cb, owner)
    handle.cancel()
    assert owner.cb not in handle and owner not in handle and not handle.active


# -- lists for the fixed delays --------------------------------------------------------


def test_timers_in_lists_and_heap_run_in_deadline_order_ties_as_scheduled(clock):
    scheduler = Scheduler(clock)
    scheduler.fixed_delays(2, 5)
    seen = []
    for name, delay in [("a5", 5), ("b2", 2), ("c3", 3), ("d2", 2), ("e5", 5), ("f4", 4)]:
        scheduler.call_later(delay, seen.append, name)
    clock.advance(1)
    scheduler.call_later(1, seen.append, "g1")  # due at 2: ties with b2 and d2, after them
    scheduler.call_later(4, seen.append, "h4")  # due at 5: ties with a5, e5, after them
    assert scheduler.next_deadline() == 2
    clock.advance(9)
    assert scheduler.run_due() == 8
    assert seen == ["b2", "d2", "g1", "c3", "f4", "a5", "e5", "h4"]
    assert len(scheduler) == 0


def test_a_clock_that_goes_back_does_not_unsort_a_list():
    now = [100.0]
    scheduler = Scheduler(lambda: now[0])
    scheduler.fixed_delays(10)
    seen = []
    scheduler.call_later(10, seen.append, "at 110")
    now[0] = 50.0
    scheduler.call_later(10, seen.append, "at 60")  # earlier than the list's last: the heap
    assert scheduler.next_deadline() == 60
    assert scheduler.run_due(60) == 1
    assert scheduler.run_due(110) == 1
    assert seen == ["at 60", "at 110"]


def test_the_scheduler_runs_what_a_plain_sorted_model_runs(clock):
    """Random delays (some fixed, some not), cancels and clock steps: the timers that run
    and their order are those of a list sorted by (deadline, order of scheduling)."""
    import random

    rng = random.Random(3261)
    scheduler = Scheduler(clock)
    scheduler.fixed_delays(0.5, 1.0, 2.0, 32.0, 5.0)
    model: list[tuple[float, int]] = []
    handles = {}
    seen: list[int] = []
    n = 0
    for _ in range(3000):
        roll = rng.random()
        if roll < 0.5:
            n += 1
            delay = rng.choice((0.5, 1.0, 2.0, 32.0, 5.0, rng.uniform(0, 40)))
            handles[n] = scheduler.call_later(delay, seen.append, n)
            model.append((clock() + delay, n))
        elif roll < 0.75 and handles:
            victim = rng.choice(list(handles))
            handles.pop(victim).cancel()
            model = [entry for entry in model if entry[1] != victim]
        else:
            clock.advance(rng.uniform(0, 3))
            seen.clear()
            scheduler.run_due()
            due = sorted(entry for entry in model if entry[0] <= clock())
            assert seen == [number for _, number in due]
            model = [entry for entry in model if entry[0] > clock()]
            for number in seen:
                del handles[number]
        assert len(scheduler) == len(model)
        assert scheduler.next_deadline() == (min(model)[0] if model else None)
