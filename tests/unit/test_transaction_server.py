"""Server transactions: RFC 3261 §17.2 with RFC 6026, driven by a fake clock."""

import pytest
from transaction_fakes import Harness

from gdispatch.transaction.timers import TimerConfig

TRYING_100 = b"SIP/2.0 100 Trying\r\n\r\n"
RINGING_180 = b"SIP/2.0 180 Ringing\r\n\r\n"
OK_200 = b"SIP/2.0 200 OK\r\n\r\n"
BUSY_486 = b"SIP/2.0 486 Busy Here\r\n\r\n"
ERROR_503 = b"SIP/2.0 503 Service Unavailable\r\n\r\n"


@pytest.fixture
def h():
    return Harness()


# -- INVITE ---------------------------------------------------------------------------


def test_invite_starts_in_proceeding_with_no_response(h):
    st = h.server()
    assert st.is_invite and st.method == "INVITE"
    assert st.state == "proceeding"
    assert st.last_status == 0 and st.last_response is None
    assert st.context is None
    assert st.key == ("z9hG4bK1", "INVITE")
    assert len(h.scheduler) == 0


def test_invite_provisionals_stay_in_proceeding_and_are_sent(h):
    st = h.server()
    st.respond(100, TRYING_100)
    st.respond(180, RINGING_180)
    assert st.state == "proceeding"
    assert [d for _, d in h.sent] == [TRYING_100, RINGING_180]
    assert st.last_status == 180 and st.last_response == RINGING_180


def test_invite_retransmission_in_proceeding_resends_the_last_provisional(h):
    st = h.server()
    st.on_request_retransmission()  # nothing sent yet: nothing to resend
    assert h.sent == []
    st.respond(100, TRYING_100)
    st.respond(180, RINGING_180)
    st.on_request_retransmission()
    assert [d for _, d in h.sent] == [TRYING_100, RINGING_180, RINGING_180]


def test_invite_failure_over_udp_retransmits_with_timer_g_capped_at_t2_until_timer_h(h):
    st = h.server()
    st.respond(486, BUSY_486)
    assert st.state == "completed"
    h.run(40)
    # RFC 3261 §17.2.1: T1, 2*T1, 4*T1, then T2 (4 s) until Timer H at 64*T1 = 32 s.
    assert h.times(BUSY_486) == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert st.state == "terminated"
    assert st.timed_out_waiting_ack
    assert h.terminated == [st]
    assert len(h.scheduler) == 0


def test_timer_g_cap_follows_a_configured_t2():
    h = Harness(TimerConfig(t1=0.5, t2=1.0))
    st = h.server()
    st.respond(503, ERROR_503)
    h.run(6)
    assert h.times() == [0, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
    assert st.state == "completed"


def test_invite_failure_over_tcp_is_not_retransmitted_but_still_waits_timer_h(h):
    st = h.server(reliable=True)
    st.respond(486, BUSY_486)
    h.run(31.9)
    assert h.times() == [0]
    assert st.state == "completed"
    h.run(0.1)
    assert st.state == "terminated" and st.timed_out_waiting_ack


def test_ack_confirms_stops_timer_g_and_h_then_timer_i_terminates(h):
    st = h.server()
    st.respond(486, BUSY_486)
    h.run(2)  # retransmitted at 0.5 and 1.5
    st.on_ack()
    assert st.state == "confirmed"
    h.run(4.9)
    assert h.times() == [0, 0.5, 1.5]
    assert st.state == "confirmed"
    h.run(0.1)  # Timer I = T4 = 5 s
    assert st.state == "terminated"
    assert not st.timed_out_waiting_ack
    assert h.terminated == [st]
    assert len(h.scheduler) == 0


def test_ack_over_tcp_terminates_at_once(h):
    st = h.server(reliable=True)
    st.respond(486, BUSY_486)
    st.on_ack()
    assert st.state == "terminated"
    assert h.terminated == [st]
    assert len(h.scheduler) == 0


def test_retransmitted_invite_in_completed_resends_the_final(h):
    st = h.server()
    st.respond(100, TRYING_100)
    st.respond(486, BUSY_486)
    st.on_request_retransmission()
    assert [d for _, d in h.sent] == [TRYING_100, BUSY_486, BUSY_486]


def test_confirmed_absorbs_acks_and_retransmitted_invites(h):
    st = h.server()
    st.respond(486, BUSY_486)
    st.on_ack()
    st.on_ack()
    st.on_request_retransmission()
    assert st.state == "confirmed"
    assert h.times() == [0]


def test_responses_after_a_failure_are_ignored(h):
    st = h.server()
    st.respond(486, BUSY_486)
    st.respond(180, RINGING_180)
    st.respond(200, OK_200)
    st.respond(503, ERROR_503)
    assert [d for _, d in h.sent] == [BUSY_486]
    assert st.last_status == 486 and st.last_response == BUSY_486
    st.on_ack()
    st.respond(200, OK_200)
    assert [d for _, d in h.sent] == [BUSY_486]


def test_invite_2xx_enters_accepted_for_timer_l(h):
    st = h.server()
    st.respond(100, TRYING_100)
    st.respond(200, OK_200)
    assert st.state == "accepted"
    h.run(31.9)
    assert st.state == "accepted"
    h.run(0.1)  # RFC 6026 Timer L = 64*T1
    assert st.state == "terminated"
    assert h.terminated == [st]
    # the server transaction never retransmits a 2xx itself
    assert h.times(OK_200) == [0]


def test_accepted_sends_2xx_retransmissions_passed_down_and_absorbs_the_rest(h):
    st = h.server()
    st.respond(200, OK_200)
    h.run(1)
    st.respond(200, OK_200)  # RFC 6026 §7.1: the proxy forwards the retransmission
    st.on_request_retransmission()  # absorbed
    st.on_ack()  # absorbed (an ACK for 2xx does not match anyway)
    st.respond(180, RINGING_180)  # ignored
    st.respond(486, BUSY_486)  # ignored
    assert h.sent == [(0, OK_200), (1, OK_200)]
    assert st.state == "accepted"
    h.run(31)  # Timer L was not restarted by the retransmission
    assert st.state == "terminated"


def test_accepted_lasts_timer_l_on_tcp_too(h):
    st = h.server(reliable=True)
    st.respond(200, OK_200)
    h.run(31.9)
    assert st.state == "accepted"
    h.run(0.1)
    assert st.state == "terminated"


def test_respond_rejects_a_status_that_is_not_a_response(h):
    st = h.server()
    for status in (0, 99, 700):
        with pytest.raises(ValueError):
            st.respond(status, b"x")
    assert h.sent == []


def test_ack_does_not_create_a_server_transaction(h):
    with pytest.raises(ValueError):
        h.server("ACK")


# -- non-INVITE -----------------------------------------------------------------------


def test_non_invite_state_sequence_over_udp_with_timer_j(h):
    st = h.server("OPTIONS")
    assert not st.is_invite
    states = [st.state]
    st.on_request_retransmission()  # Trying: absorbed
    assert h.sent == []
    st.respond(100, TRYING_100)
    states.append(st.state)
    st.respond(200, OK_200)
    states.append(st.state)
    h.run(31.9)
    states.append(st.state)
    h.run(0.1)  # Timer J = 64*T1
    states.append(st.state)
    assert states == ["trying", "proceeding", "completed", "completed", "terminated"]
    assert h.terminated == [st]
    # a final for non-INVITE is not retransmitted on a timer
    assert h.times() == [0, 0]


def test_non_invite_retransmissions_resend_the_last_response(h):
    st = h.server("REGISTER")
    st.respond(100, TRYING_100)
    st.on_request_retransmission()
    st.respond(401, BUSY_486)
    st.on_request_retransmission()
    st.on_request_retransmission()
    assert [d for _, d in h.sent] == [TRYING_100, TRYING_100, BUSY_486, BUSY_486, BUSY_486]


def test_non_invite_final_from_trying_and_later_responses_ignored(h):
    st = h.server("BYE")
    st.respond(200, OK_200)
    assert st.state == "completed"
    st.respond(200, OK_200)
    st.respond(180, RINGING_180)
    st.on_ack()
    assert [d for _, d in h.sent] == [OK_200]
    assert st.state == "completed"


def test_non_invite_over_tcp_terminates_at_the_final(h):
    st = h.server("BYE", reliable=True)
    st.respond(200, OK_200)
    assert st.state == "terminated"
    assert h.sent == [(0, OK_200)]
    assert h.terminated == [st]
    assert len(h.scheduler) == 0


# -- termination and transport errors -------------------------------------------------


def test_terminate_stops_timers_and_reports_once(h):
    st = h.server()
    st.respond(486, BUSY_486)
    st.terminate()
    st.terminate()
    assert st.state == "terminated"
    assert h.terminated == [st]
    assert len(h.scheduler) == 0
    h.run(40)
    assert h.times() == [0]
    st.respond(200, OK_200)
    st.on_request_retransmission()
    st.on_ack()
    assert h.times() == [0]


def test_send_error_is_a_transport_error_and_terminates(h):
    st = h.server()
    h.fail_sends = True
    st.respond(100, TRYING_100)
    assert st.state == "terminated"
    assert h.transport_errors == [st]
    assert h.terminated == [st]


def test_send_error_during_timer_g_terminates_without_breaking_the_scheduler(h):
    st = h.server()
    st.respond(486, BUSY_486)
    h.fail_sends = True
    h.run(1)
    assert st.state == "terminated"
    assert h.transport_errors == [st]
    assert h.terminated == [st]
    assert len(h.scheduler) == 0


def test_send_error_without_a_transport_error_callback_just_terminates(h):
    st = h.server("OPTIONS", report_errors=False)
    h.fail_sends = True
    st.respond(200, OK_200)
    assert st.state == "terminated"
    assert h.terminated == [st]


def test_context_is_free_for_the_proxy(h):
    st = h.server()
    st.context = {"branch": 1}
    assert st.context == {"branch": 1}
    with pytest.raises(AttributeError):
        st.something_else = 1  # __slots__: no per-instance dict
