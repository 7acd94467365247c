"""How a dispatched request is walked: a state machine fed each attempt's outcome, with
no greenlet unless something may wait (gdispatch.proxy.forking)."""

from __future__ import annotations

from proxy_fakes import UAC, FakeProxy, full_call, invite

import gdispatch.proxy.forking as proxy_module
from gdispatch.sip import build_response, parse_message


def count_spawns(monkeypatch) -> list:
    spawned = []
    real = proxy_module.gevent.spawn

    def spawn(*args, **kwargs):
        spawned.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(proxy_module.gevent, "spawn", spawn)
    return spawned


def test_a_call_answered_by_the_first_destination_starts_no_greenlet(monkeypatch):
    spawned = count_spawns(monkeypatch)
    fp = FakeProxy()
    for n in range(5):
        full_call(fp, n)
    assert spawned == []
    assert fp.proxy.calls_in_setup == 0


def test_a_failed_first_attempt_fails_over_without_a_greenlet(monkeypatch):
    spawned = count_spawns(monkeypatch)
    fp = FakeProxy()
    out = fp.receive(invite(1), UAC)
    first, data = next((a, d) for a, d in out if d.startswith(b"INVITE"))
    out = fp.receive(build_response(parse_message(data), 503, "Busy", to_tag="x"), first)
    second, data = next((a, d) for a, d in out if d.startswith(b"INVITE"))
    assert second != first and spawned == []  # the next one was tried at once
    assert fp.proxy.stats["failovers"] == 1 and fp.proxy.calls_in_setup == 1
    out = fp.receive(build_response(parse_message(data), 200, "OK", to_tag="y"), second)
    assert [a for a, d in out if d.startswith(b"SIP/2.0 200")] == [UAC]
    assert fp.proxy.calls_in_setup == 0


def test_an_error_in_an_attempt_answers_500_and_frees_the_count(monkeypatch):
    # The attempts are sent from the receiver greenlet: a bug there must end the walk with
    # a 500, not leave the caller and the overload count hanging.
    fp = FakeProxy()

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(fp.proxy.branches, "send", broken)
    out = fp.receive(invite(1), UAC)
    assert [d.split(b"\r\n", 1)[0] for _, d in out] == [b"SIP/2.0 500 Internal Server Error"]
    assert fp.proxy.calls_in_setup == 0


def test_the_100_trying_follows_the_forwarded_invite():
    """The INVITE leaves first, then the 100 that quenches the caller's retransmissions
    (RFC 3261 §16.2): the forwarding does not wait for the 100."""
    fp = FakeProxy()
    out = fp.receive(invite(1), UAC)
    assert [(a, d.split(b"\r\n", 1)[0]) for a, d in out] == [
        (out[0][0], b"INVITE sip:service@127.0.0.1:5060 SIP/2.0"), (UAC, b"SIP/2.0 100 Trying")]


def test_an_invite_answered_here_gets_its_final_without_a_100():
    fp = FakeProxy()
    looped = invite(1).replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    out = fp.receive(looped, UAC)
    assert [d.split(b"\r\n", 1)[0] for _, d in out] == [b"SIP/2.0 483 Too Many Hops"]
    assert fp.receive(looped, UAC) == [(UAC, out[0][1])]  # a retransmission gets the final again
