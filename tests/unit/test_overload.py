"""Past capacity, new calls get 503 with Retry-After and what was accepted carries on
(gdispatch.overload, and the proxy's use of it), with a fake clock and fake transports."""

from dataclasses import replace

from proxy_fakes import PROXY, UAC, FakeProxy, in_dialog, invite

from gdispatch.config import Config, Listen, Overload
from gdispatch.overload import LoadGuard
from gdispatch.sip import parse_message
from gdispatch.transaction.timers import FakeClock


def test_guard_refuses_past_the_backlog_bound_and_holds():
    clock = FakeClock()
    g = LoadGuard(clock, max_backlog=0.3, hold=1.0)
    assert g.admit(0.29, 0)
    assert not g.admit(0.31, 0)
    clock.advance(0.5)
    assert not g.admit(0.0, 0)  # still within the hold
    clock.advance(0.6)
    assert g.admit(0.0, 0)
    assert g.refused == 2


def test_guard_bounds_calls_in_setup_without_hold():
    g = LoadGuard(FakeClock(), max_backlog=0, max_calls_in_setup=3)
    assert g.admit(99.0, 2)  # no backlog bound
    assert not g.admit(0.0, 3)
    assert g.admit(0.0, 2)


def overloaded_proxy(**overload) -> FakeProxy:
    return FakeProxy(list_text="1 sip:127.0.0.1:5071 0 0\n",
                     config=Config(listen=(Listen("udp", *PROXY),), overload=replace(Overload(), **overload)))


def statuses(out):
    return [parse_message(d).status for _, d in out if d.startswith(b"SIP/2.0")]


def test_calls_past_max_calls_in_setup_get_503_the_accepted_ones_carry_on():
    fp = overloaded_proxy(max_calls_in_setup=2, retry_after=7)
    for n in (1, 2):
        out = fp.receive(invite(n), UAC)
        assert statuses(out) == [100] and any(d.startswith(b"INVITE") for _, d in out)
    out = fp.receive(invite(3), UAC)
    assert statuses(out) == [503]
    assert b"Retry-After: 7\r\n" in out[0][1]
    assert fp.proxy.stats["overload_rejected"] == 1
    assert len(fp.proxy.server_txns) == 2  # the refused call cost no transaction
    # A retransmission of an accepted INVITE is still absorbed (answered with its 100).
    assert statuses(fp.receive(invite(1), UAC)) == [100]
    # Requests inside dialogs and OPTIONS to the proxy are not new calls.
    out = fp.receive(in_dialog("BYE", 9, 2, ("127.0.0.1", 5071), "z9hG4bK-bye-9"), UAC)
    assert [a for a, _ in out] == [("127.0.0.1", 5071)]
    options = invite(4).replace(b"INVITE sip:service@", b"OPTIONS sip:").replace(b"1 INVITE", b"1 OPTIONS")
    assert statuses(fp.receive(options, UAC)) == [200]


def test_a_backlog_turns_new_calls_away_statelessly():
    fp = overloaded_proxy(max_backlog=0.3, hold=1.0)
    fp.transports.backlog = lambda: 0.5
    out = fp.receive(invite(1), UAC)
    assert statuses(out) == [503] and b"Retry-After: 2\r\n" in out[0][1]
    assert not fp.proxy.server_txns and not any(d.startswith(b"INVITE") for _, d in out)
    fp.transports.backlog = lambda: 0.0
    fp.advance(1.1)  # the hold is over
    out = fp.receive(invite(2), UAC)
    assert statuses(out) == [100]


def test_no_destination_is_logged_once_a_second_per_set(caplog):
    fp = FakeProxy(list_text="1 sip:127.0.0.1:5071 4 0\n")  # disabled: no destination
    with caplog.at_level("WARNING", logger="gdispatch.proxy"):
        for n in range(50):
            assert statuses(fp.receive(invite(n), UAC))[-1] == 503
        fp.advance(1.0)
        fp.receive(invite(99), UAC)
    warnings = [r.getMessage() for r in caplog.records if "no active destination" in r.getMessage()]
    assert len(warnings) == 2 and "(49 more since the last warning)" in warnings[1], warnings
    assert fp.proxy.stats["no_destination"] == 51
