"""With several workers an ACK comes to the worker after the owner of its call
(gdispatch.steering): the proxy forwards the ACK of a 2xx there and hands the ACK of a
non-2xx final to the worker holding its INVITE transaction, which noted it before the
final left (gdispatch.acknotes). Two proxies on fake transports play worker 0 (the
owner) and worker 1, sharing one table of notes."""

from __future__ import annotations

from proxy_fakes import UAC, FakeProxy, in_dialog, invite

from gdispatch import acknotes
from gdispatch.net import Relayed
from gdispatch.proxy import STATELESS_TAG
from gdispatch.sip import build_response, parse_message


def workers() -> tuple[FakeProxy, FakeProxy, list]:
    buf = bytearray(2 * acknotes.TABLE_BYTES)
    handed: list = []
    fps = []
    for i in range(2):
        fp = FakeProxy("1 sip:127.0.0.1:5071 0 0\n")
        fp.proxy.acks = acknotes.AckNotes(buf, i, 2, 37.0, fp.clock)
        fp.proxy.hand_over = lambda data, source, worker, i=i: handed.append((i, worker, data)) or True
        fps.append(fp)
    return fps[0], fps[1], handed


def answer(fp: FakeProxy, request: bytes, status: int) -> tuple:
    """Send `request` through `fp`, answer the forwarded copy with `status` (a 2xx with
    the Record-Route and a Contact); returns the gateway and what `fp` sent then."""
    out = fp.receive(request, UAC)
    (gateway, data), = [(a, d) for a, d in out if d[:4] != b"SIP/"]
    req = parse_message(data)
    headers = ((b"Record-Route: " + req.get("record-route"), b"Contact: <sip:service@127.0.0.1:5071>")
               if status < 300 else ())
    return gateway, fp.receive(build_response(req, status, "X", to_tag="uas1", headers=headers), gateway)


def test_the_ack_of_a_refused_re_invite_goes_back_to_the_worker_that_noted_it():
    owner, other, handed = workers()
    gateway, _ = answer(owner, invite(1), 200)
    # The ACK of the 2xx, at the other worker: forwarded from there.
    out = other.receive(in_dialog("ACK", 1, 1, gateway, "z9hG4bK-ack-1"), UAC)
    assert [a for a, _ in out] == [gateway] and handed == []
    # A re-INVITE (it has our Route) refused with 488: noted, then relayed upstream.
    _, out = answer(owner, in_dialog("INVITE", 1, 2, gateway, "z9hG4bK-re-1"), 488)
    assert [d[:11] for a, d in out if a == UAC] == [b"SIP/2.0 488"]
    # Its ACK at the other worker reads like the ACK of a 2xx, but goes to the owner.
    ack = in_dialog("ACK", 1, 2, gateway, "z9hG4bK-re-1")
    assert other.receive(ack, UAC) == []
    assert handed == [(1, 0, ack)]
    # There the transaction absorbs it: Timer G resends nothing.
    assert owner.proxy.on_message(ack, Relayed("udp", UAC, owner.listener)) is None
    assert owner.transports.take() == []
    owner.advance(5.0)
    assert [a for a, d in owner.transports.take() if d.startswith(b"SIP/2.0 488")] == []
    # The notes are the owner's: the owner itself does not hand its own ACK away.
    assert owner.proxy.acks.noted_by(("z9hG4bK-re-1", "127.0.0.1", 6000, "INVITE")) is None
    assert other.proxy.acks.noted_by(("z9hG4bK-re-1", "127.0.0.1", 6000, "INVITE")) == 0


def test_the_ack_of_a_refused_initial_invite_goes_to_the_owner_of_the_call():
    owner, other, handed = workers()
    _, out = answer(owner, invite(2), 486)
    assert [d[:11] for a, d in out if a == UAC] == [b"SIP/2.0 486"]
    # No Route in the INVITE, none in its ACK: not for a dialog of ours, no note needed.
    assert other.proxy.acks.noted_by(("z9hG4bK-uac-2", "127.0.0.1", 6000, "INVITE")) is None
    ack = invite(2).replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK")
    assert other.receive(ack, UAC) == []
    assert [(i, w) for i, w, _ in handed] == [(1, None)]
    # What was handed over is not handed on: dropped where no transaction holds it.
    handed.clear()
    other.proxy.on_message(ack, Relayed("udp", UAC, other.listener))
    assert handed == [] and other.transports.take() == []
    assert other.proxy.stats["bad_messages_dropped"] == 1


def test_one_worker_keeps_no_notes():
    fp = FakeProxy("1 sip:127.0.0.1:5071 0 0\n")
    assert fp.proxy.acks is None and fp.proxy.hand_over is None
    gateway, _ = answer(fp, in_dialog("INVITE", 3, 2, ("127.0.0.1", 5071), "z9hG4bK-re-3"), 488)
    assert fp.receive(in_dialog("ACK", 3, 2, gateway, "z9hG4bK-re-3"), UAC) == []  # absorbed


def test_the_ack_of_a_stateless_answer_ends_where_it_arrives():
    """Past capacity every new call is turned away statelessly (503): its ACK, at
    whichever worker, is absorbed there by its To tag, not handed to the owner (which
    holds nothing for it) at the moment the workers have the least time for it."""
    owner, other, handed = workers()
    owner.proxy.guard.max_calls_in_setup = 1
    owner.proxy.calls_in_setup = 1  # as if a call were waiting for its answer
    out = owner.receive(invite(4), UAC)
    assert [d[:11] for _, d in out] == [b"SIP/2.0 503"]
    to = parse_message(out[0][1]).get("to")
    assert b";tag=" + STATELESS_TAG.encode() in to
    ack = invite(4).replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK").replace(
        b"To: <sip:service@127.0.0.1:5060>", b"To: " + to)
    for fp in (other, owner):
        assert fp.receive(ack, UAC) == []
        assert fp.proxy.stats["bad_messages_dropped"] == 0
    assert handed == []
