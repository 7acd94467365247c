"""Client transactions: RFC 3261 §17.1 with RFC 6026, driven by a fake clock."""

import pytest
from transaction_fakes import INVITE, OPTIONS, Harness

from gdispatch.transaction.client import ClientTransaction
from gdispatch.transaction.timers import TimerConfig


class Response:
    """Stands in for the proxy's parsed message: the transaction never looks inside."""

    def __init__(self, status):
        self.status = status

    def __repr__(self):
        return f"<Response {self.status}>"


@pytest.fixture
def h():
    return Harness()


def started(h, method="INVITE", **kwargs):
    ct = h.client(method, **kwargs)
    ct.start()
    return ct


# -- construction ---------------------------------------------------------------------


def test_invite_starts_in_calling_and_sends_only_on_start(h):
    ct = h.client()
    assert ct.is_invite and ct.state == "calling" and ct.last_status == 0
    assert ct.request == INVITE and ct.context is None
    assert h.sent == []
    ct.start()
    assert h.sent == [(0, INVITE)]


def test_start_twice_is_an_error(h):
    ct = started(h)
    with pytest.raises(RuntimeError):
        ct.start()


def test_invite_needs_make_ack(h):
    with pytest.raises(ValueError):
        ClientTransaction(
            1, "INVITE", INVITE, reliable=False, send=h.send, scheduler=h.scheduler,
            timers=h.timers, on_response=lambda *a: None, on_timeout=lambda ct: None,
        )


def test_ack_does_not_create_a_client_transaction(h):
    with pytest.raises(ValueError):
        h.client("ACK")


# -- INVITE: Timers A and B -----------------------------------------------------------


def test_invite_over_udp_retransmits_with_timer_a_and_times_out_with_timer_b(h):
    ct = started(h)
    h.run(31.99)
    # RFC 3261 §17.1.1.2: intervals double without a cap.
    assert h.times(INVITE) == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert ct.state == "calling" and h.events == []
    h.run(0.01)
    assert h.events == [("timeout", "calling"), ("terminated",)]
    assert ct.state == "terminated" and ct.timed_out
    assert len(h.scheduler) == 0


def test_invite_over_tcp_sends_once_and_times_out_with_timer_b(h):
    ct = started(h, reliable=True)
    h.run(40)
    assert h.times() == [0]
    assert h.events == [("timeout", "calling"), ("terminated",)]
    assert ct.state == "terminated"


def test_timer_b_follows_t1():
    h = Harness(TimerConfig(t1=0.25, t2=4.0))
    started(h)
    h.run(20)
    assert h.times() == [0, 0.25, 0.75, 1.75, 3.75, 7.75, 15.75]
    assert h.events == [("timeout", "calling"), ("terminated",)]
    assert h.clock() == 20


# -- INVITE: responses ----------------------------------------------------------------


def test_provisional_stops_timers_a_and_b_and_every_provisional_is_passed_up(h):
    ct = started(h)
    h.run(1)
    r100, r180, r183 = Response(100), Response(180), Response(183)
    ct.receive_response(100, r100)
    assert ct.state == "proceeding"
    ct.receive_response(180, r180)
    ct.receive_response(183, r183)
    ct.receive_response(180, r180)
    assert h.events == [
        ("response", 100, r100),
        ("response", 180, r180),
        ("response", 183, r183),
        ("response", 180, r180),
    ]
    assert ct.last_status == 180
    h.run(100)
    # no retransmission after the 1xx, and no Timer B in Proceeding
    assert h.times() == [0, 0.5]
    assert ct.state == "proceeding"
    assert len(h.scheduler) == 0


def test_failure_sends_ack_enters_completed_and_passes_up_once(h):
    ct = started(h)
    ct.receive_response(180, Response(180))
    busy = Response(486)
    ct.receive_response(486, busy)
    assert ct.state == "completed"
    assert h.acks_built == [busy]
    assert h.sent[-1] == (0, b"ACK for 486")
    assert h.statuses() == [180, 486]
    assert ct.last_status == 486


def test_retransmitted_failure_resends_the_same_ack_and_is_absorbed(h):
    ct = started(h)
    ct.receive_response(486, Response(486))
    h.run(2)
    ct.receive_response(486, Response(486))
    h.run(3)
    ct.receive_response(486, Response(486))
    assert h.sent == [(0, INVITE), (0, b"ACK for 486"), (2, b"ACK for 486"), (5, b"ACK for 486")]
    assert len(h.acks_built) == 1
    assert h.statuses() == [486]


def test_completed_absorbs_provisionals_and_2xx(h):
    ct = started(h)
    ct.receive_response(503, Response(503))
    ct.receive_response(180, Response(180))
    ct.receive_response(200, Response(200))
    assert h.statuses() == [503]
    assert h.times() == [0, 0]  # INVITE, one ACK
    assert ct.last_status == 503


def test_timer_d_over_udp_then_terminated(h):
    ct = started(h)
    h.run(1)
    ct.receive_response(404, Response(404))
    h.run(31.9)
    assert ct.state == "completed"
    h.run(0.1)  # Timer D = 32 s
    assert ct.state == "terminated"
    assert h.events[-1] == ("terminated",)
    assert h.times(INVITE) == [0, 0.5]  # Timer A stopped at the final
    assert len(h.scheduler) == 0


def test_failure_over_tcp_passes_up_then_terminates_at_once(h):
    ct = started(h, reliable=True)
    ct.receive_response(486, Response(486))
    assert ct.state == "terminated"
    assert h.events[0][:2] == ("response", 486)
    assert h.events[1:] == [("terminated",)]  # on_response comes before on_terminated
    assert h.sent == [(0, INVITE), (0, b"ACK for 486")]
    assert len(h.scheduler) == 0


def test_on_response_sees_the_new_state():
    h = Harness()
    seen = []
    ct = ClientTransaction(
        1, "INVITE", INVITE, reliable=True, send=h.send, scheduler=h.scheduler,
        timers=h.timers, on_response=lambda ct, status, resp: seen.append(ct.state),
        on_timeout=lambda ct: None, make_ack=h.make_ack,
    )
    ct.start()
    ct.receive_response(180, Response(180))
    ct.receive_response(486, Response(486))
    assert seen == ["proceeding", "completed"]
    assert ct.state == "terminated"


@pytest.mark.parametrize("method, status", [("OPTIONS", 200), ("INVITE", 200), ("INVITE", 486)])
def test_the_response_goes_up_before_the_timers_change(method, status):
    """on_response runs in the new state but before its timer work (so that the cost of
    the timers does not delay the response): the old state's timers are still there."""
    h = Harness()
    seen = []
    ct = ClientTransaction(
        1, method, INVITE, reliable=False, send=h.send, scheduler=h.scheduler, timers=h.timers,
        on_response=lambda ct, status, resp: seen.append((ct.state, len(h.scheduler), len(h.sent))),
        on_timeout=lambda ct: None, make_ack=h.make_ack if method == "INVITE" else None,
    )
    ct.start()
    ct.receive_response(status, Response(status))
    new_state = {200: "accepted" if method == "INVITE" else "completed", 486: "completed"}[status]
    # A and B (or E and F) still scheduled, the ACK of a 486 not yet sent; after the
    # callback, a single timer (M, D or K), and the ACK went.
    assert seen == [(new_state, 2, 1)]
    assert len(h.scheduler) == 1 and len(h.sent) == (2 if status == 486 else 1)


def test_2xx_enters_accepted_and_every_2xx_is_passed_up_until_timer_m(h):
    ct = started(h)
    ct.receive_response(180, Response(180))
    h.run(5)
    ct.receive_response(200, Response(200))
    assert ct.state == "accepted"
    h.run(1)
    ct.receive_response(200, Response(200))  # RFC 6026 §7.2: passed up too
    ct.receive_response(180, Response(180))  # absorbed
    ct.receive_response(486, Response(486))  # absorbed
    assert h.statuses() == [180, 200, 200]
    assert h.acks_built == []  # the ACK for a 2xx is not the transaction's business
    h.run(30.9)
    assert ct.state == "accepted"
    h.run(0.1)  # Timer M = 64*T1 from the first 2xx
    assert ct.state == "terminated"
    assert h.times() == [0]  # the 180 at 0 stopped Timer A


def test_2xx_straight_from_calling_over_tcp_still_waits_timer_m(h):
    ct = started(h, reliable=True)
    ct.receive_response(200, Response(200))
    assert ct.state == "accepted"
    h.run(31.9)
    assert ct.state == "accepted"
    h.run(0.1)
    assert ct.state == "terminated"


def test_status_outside_100_699_is_dropped(h):
    ct = started(h)
    ct.receive_response(99, Response(99))
    ct.receive_response(700, Response(700))
    assert h.events == [] and ct.state == "calling" and ct.last_status == 0


# -- non-INVITE -----------------------------------------------------------------------


def test_non_invite_over_udp_retransmits_with_timer_e_capped_at_t2_until_timer_f(h):
    ct = started(h, "OPTIONS")
    assert ct.state == "trying" and not ct.is_invite
    h.run(40)
    assert h.times(OPTIONS) == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert h.events == [("timeout", "trying"), ("terminated",)]
    assert ct.timed_out


def test_a_request_the_caller_sent_itself_gets_only_the_timers(h):
    """start(sent=True): the proxy sent the request before building the transaction;
    the retransmissions and Timer F run as if start() had sent it."""
    ct = h.client("OPTIONS")
    ct.start(sent=True)
    assert h.sent == [] and ct.state == "trying"
    h.run(40)
    assert h.times(OPTIONS) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert h.events == [("timeout", "trying"), ("terminated",)]
    with pytest.raises(RuntimeError):
        ct.start(sent=True)


def test_non_invite_retransmits_every_t2_in_proceeding_and_timer_f_still_runs(h):
    ct = started(h, "OPTIONS")
    h.run(1)
    ct.receive_response(100, Response(100))
    assert ct.state == "proceeding"
    h.run(40)
    # the pending E at 1.5 fires, then every T2 (RFC 3261 §17.1.2.2)
    assert h.times(OPTIONS) == [0, 0.5, 1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert h.events[1:] == [("timeout", "proceeding"), ("terminated",)]


def test_non_invite_final_passed_up_once_then_timer_k(h):
    ct = started(h, "OPTIONS")
    ct.receive_response(180, Response(180))
    ok = Response(200)
    h.run(2)
    ct.receive_response(200, ok)
    assert ct.state == "completed"
    ct.receive_response(200, Response(200))
    ct.receive_response(404, Response(404))
    ct.receive_response(180, Response(180))
    assert h.statuses() == [180, 200]
    assert ct.last_status == 200
    h.run(4.9)
    assert ct.state == "completed"
    h.run(0.1)  # Timer K = T4
    assert ct.state == "terminated"
    # E at 0.5, then every T2 in Proceeding (next at 4.5) until the final at 2 stopped it;
    # no ACK for a non-INVITE
    assert h.times() == [0, 0.5]


def test_non_invite_over_tcp_has_no_timer_e_and_terminates_at_the_final(h):
    ct = started(h, "OPTIONS", reliable=True)
    h.run(10)
    assert h.times() == [0]
    ct.receive_response(200, Response(200))
    assert ct.state == "terminated"
    assert [e[0] for e in h.events] == ["response", "terminated"]


def test_non_invite_over_tcp_times_out_with_timer_f(h):
    started(h, "BYE", reliable=True)
    h.run(32)
    assert h.times() == [0]
    assert h.events == [("timeout", "trying"), ("terminated",)]


# -- stop_retransmissions -------------------------------------------------------------


def test_stop_retransmissions_then_a_late_180_is_still_passed_up(h):
    ct = started(h)
    h.run(2)  # sent at 0, 0.5, 1.5
    ct.stop_retransmissions()
    h.run(8)
    assert h.times() == [0, 0.5, 1.5]
    late = Response(180)
    ct.receive_response(180, late)
    assert ct.state == "proceeding"
    assert h.events == [("response", 180, late)]
    ct.receive_response(487, Response(487))
    assert h.statuses() == [180, 487]
    assert h.times(b"ACK for 487") == [10]


def test_stop_retransmissions_then_timer_b_ends_quietly(h):
    ct = started(h)
    ct.stop_retransmissions()
    h.run(32)
    assert h.times() == [0]
    assert ct.state == "terminated" and ct.timed_out
    assert h.events == [("terminated",)]  # the proxy already acted on its own timeout


def test_stop_retransmissions_non_invite_keeps_listening_until_timer_f(h):
    ct = started(h, "OPTIONS")
    h.run(1)
    ct.stop_retransmissions()
    h.run(20)
    assert h.times() == [0, 0.5]
    ct.receive_response(200, Response(200))
    assert h.statuses() == [200]
    assert ct.state == "completed"


def test_stop_retransmissions_in_proceeding_non_invite_stops_timer_e(h):
    ct = started(h, "OPTIONS")
    ct.receive_response(100, Response(100))
    h.run(5)  # E at 0.5, then T2 later at 4.5
    ct.stop_retransmissions()
    h.run(40)
    assert h.times() == [0, 0.5, 4.5]
    assert h.events[-1] == ("terminated",)


# -- transport errors -----------------------------------------------------------------


def test_send_error_at_start_is_a_transport_error(h):
    ct = h.client()
    h.fail_sends = True
    ct.start()
    assert h.events == [("transport_error", "calling"), ("terminated",)]
    assert ct.state == "terminated"
    assert len(h.scheduler) == 0


def test_send_error_on_retransmission_is_a_transport_error(h):
    ct = started(h, "OPTIONS")
    h.run(1)
    h.fail_sends = True
    h.run(1)
    assert h.events == [("transport_error", "trying"), ("terminated",)]
    assert ct.state == "terminated"
    assert len(h.scheduler) == 0


def test_transport_error_falls_back_to_on_timeout(h):
    ct = h.client("OPTIONS", report_errors=False)
    h.fail_sends = True
    ct.start()
    assert h.events == [("timeout", "trying"), ("terminated",)]


def test_on_transport_error_reported_by_the_transport(h):
    ct = started(h)
    ct.receive_response(100, Response(100))
    ct.on_transport_error()
    assert h.events[1:] == [("transport_error", "proceeding"), ("terminated",)]
    assert ct.state == "terminated"
    ct.on_transport_error()
    ct.receive_response(200, Response(200))
    assert len(h.events) == 3


def test_transport_error_after_the_final_just_terminates(h):
    ct = started(h)
    ct.receive_response(486, Response(486))
    ct.on_transport_error()
    assert h.statuses() == [486]
    assert h.events[-1] == ("terminated",)
    assert ct.state == "terminated"


def test_failed_ack_send_is_not_reported_and_is_retried_on_the_retransmission(h):
    ct = started(h)
    h.fail_sends = True
    ct.receive_response(486, Response(486))
    assert ct.state == "completed"
    assert h.events[0][:2] == ("response", 486) and len(h.events) == 1
    h.fail_sends = False
    h.run(1)
    ct.receive_response(486, Response(486))
    assert h.sent == [(0, INVITE), (1, b"ACK for 486")]


# -- termination ----------------------------------------------------------------------


def test_terminate_stops_everything_and_reports_once(h):
    ct = started(h)
    ct.terminate()
    ct.terminate()
    h.run(60)
    assert h.times() == [0]
    assert h.events == [("terminated",)]
    ct.receive_response(200, Response(200))
    assert h.events == [("terminated",)]
    assert len(h.scheduler) == 0


def test_terminate_from_inside_on_response_is_safe(h):
    ct = h.client()

    def on_response(ct_, status, resp):
        h.events.append(("response", status))
        ct_.terminate()

    ct._on_response = on_response
    ct.start()
    ct.receive_response(486, Response(486))
    assert h.events == [("response", 486), ("terminated",)]
    assert len(h.scheduler) == 0


def test_exception_in_on_timeout_still_terminates_and_is_logged(h, caplog):
    ct = h.client()

    def on_timeout(ct_):
        raise RuntimeError("proxy bug")

    ct._on_timeout = on_timeout
    ct.start()
    h.run(40)
    assert ct.state == "terminated"
    assert h.events == [("terminated",)]
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)


def test_exception_in_on_response_propagates_but_a_zero_timer_still_terminates(h):
    ct = h.client("OPTIONS", reliable=True)

    def on_response(ct_, status, resp):
        raise RuntimeError("proxy bug")

    ct._on_response = on_response
    ct.start()
    with pytest.raises(RuntimeError):
        ct.receive_response(200, Response(200))
    assert ct.state == "terminated"
