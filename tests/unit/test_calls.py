"""Call-load accounting: counts follow attempts, failovers, answers, ends and expiry."""

from gdispatch.calls import CallLoad
from gdispatch.transaction.timers import FakeClock, Scheduler


class Dest:
    def __init__(self, name):
        self.name = name
        self.load = 0


def setup():
    clock = FakeClock()
    sched = Scheduler(clock)
    return clock, sched, CallLoad(sched, expire=100.0, init_expire=10.0)


def test_attempt_failover_answer_end():
    clock, sched, cl = setup()
    a, b = Dest("a"), Dest("b")
    cl.attempt(b"c1", a)
    assert (a.load, b.load) == (1, 0)
    cl.attempt(b"c1", a)  # the same destination again changes nothing
    assert a.load == 1
    cl.attempt(b"c1", b)  # failover moves the load
    assert (a.load, b.load) == (0, 1)
    cl.answered(b"c1")
    cl.ended(b"c1")
    assert (a.load, b.load) == (0, 0) and len(cl) == 0
    cl.ended(b"c1")  # a second BYE or a late CANCEL does not go negative
    assert b.load == 0


def test_unanswered_call_expires_after_init_expire():
    clock, sched, cl = setup()
    a = Dest("a")
    cl.attempt(b"c1", a)
    clock.advance(9.9, sched)
    assert a.load == 1
    clock.advance(0.2, sched)
    assert a.load == 0 and len(cl) == 0


def test_answered_call_expires_after_expire_not_init_expire():
    clock, sched, cl = setup()
    a = Dest("a")
    cl.attempt(b"c1", a)
    cl.answered(b"c1")
    clock.advance(50, sched)
    assert a.load == 1
    clock.advance(51, sched)
    assert a.load == 0


def test_ended_call_timer_does_not_touch_a_new_call_with_the_same_id():
    clock, sched, cl = setup()
    a = Dest("a")
    cl.attempt(b"c1", a)
    cl.ended(b"c1")
    cl.attempt(b"c1", a)
    clock.advance(9, sched)
    cl.answered(b"c1")
    clock.advance(5, sched)
    assert a.load == 1


def test_one_sweep_timer_while_calls_exist_and_none_when_idle():
    clock, sched, cl = setup()
    a = Dest("a")
    for n in range(100):
        cl.attempt(b"c%d" % n, a)
    assert len(sched) == 1  # one sweep, not a timer per call
    for n in range(100):
        cl.ended(b"c%d" % n)
    assert a.load == 0 and len(sched) == 0


def test_expiry_is_noticed_within_a_64th_of_it():
    clock, sched, cl = setup()  # init_expire 10 s: a sweep every 10/64 s
    a = Dest("a")
    cl.attempt(b"c1", a)
    clock.advance(5, sched)
    cl.attempt(b"c2", a)
    clock.advance(5 + 10 / 64, sched)
    assert a.load == 1  # c1 expired, c2 not yet
    clock.advance(5, sched)
    assert a.load == 0 and len(sched) == 0
