"""The short way (gdispatch.sip.shortway) against the general way.

What `read_in_dialog` accepts, `parse_message` + `validate_request` accept too, with the
same fields, and `forward_in_dialog` writes the bytes `forward_request` writes; what it
refuses is left to the general way. `read_response` reads what `parse_message` reads.
Checked on a base BYE and ACK, on variants of them (valid and broken), on responses, on
the RFC 4475 torture messages, and through the proxy: the same calls with and without the
short way send the same datagrams, and what SIPp sends takes the short way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from proxy_fakes import UAC, FakeProxy, full_call, in_dialog, invite, signed_route

from gdispatch.sip import ParseError, build_response, forward_request, parse_message
from gdispatch.sip.shortway import forward_in_dialog, read_in_dialog, read_response
from tests.support import sipmsg

OURS = signed_route("call-1@127.0.0.1", "uac1", "127.0.0.1").encode()
OWN = frozenset({b"<sip:127.0.0.1:5060;lr;gds="})
VIA = b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-test.1"
# Call 1 as the caller sends its requests inside the dialog (sipmsg.request keywords).
CALL_1 = dict(vias="SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-bye-1;rport", routes=[OURS.decode()],
              from_="<sip:caller@127.0.0.1:6000>", from_tag="uac1", to="<sip:svc@127.0.0.1:5060>", to_tag="uas1",
              call_id="call-1@127.0.0.1", cseq=2)
RFC4475 = Path(__file__).resolve().parents[1] / "data" / "rfc4475"


def request(method: str = "BYE", **kw) -> bytes:
    """A request of call 1 from the caller, with our Route (CSeq 2); `kw`: sipmsg.request's."""
    return sipmsg.request(method, "sip:svc@127.0.0.1:5071", **{**CALL_1, **kw})


def general(data: bytes, top_via: bytes | None = None) -> tuple:
    msg = parse_message(data)
    msg.validate_request()
    mf = msg.max_forwards
    out = forward_request(msg, via=VIA, pop_routes=1, max_forwards=69 if mf is None else mf - 1, top_via=top_via)
    return msg, out


def assert_same_as_general(data: bytes) -> None:
    found = read_in_dialog(data, OWN)
    assert found is not None
    quick, route, token = found
    msg, expected = general(data)
    assert quick._lines[route].endswith(b";lr;gds=" + token + b">")
    for name in ("method", "ruri", "raw", "body", "content_length", "call_id", "cseq", "from_tag", "to_tag",
                 "max_forwards", "start_line"):
        assert getattr(quick, name) == getattr(msg, name), name
    assert quick.top_via.raw == msg.top_via.raw and quick.top_via.branch == msg.top_via.branch
    assert quick.uri.raw == msg.uri.raw
    assert forward_in_dialog(quick, route, VIA, None) == expected
    received = msg.top_via.raw + b";received=192.0.2.1"
    assert forward_in_dialog(quick, route, VIA, received) == general(data, received)[1]


VALID = {
    "BYE": request(),
    "ACK without To tag": request("ACK", to_tag=None),
    "ACK": request("ACK"),
    "INFO with a body": request("INFO", body="Signal=1\r\nDuration=100\r\n",
                                headers=["Content-Type: application/dtmf-relay"]),
    "no Max-Forwards": request(max_forwards=None),
    "Max-Forwards 1": request(max_forwards=1),
    "no Content-Length": request(content_length=None),
    "body longer than Content-Length": request(body="xyz", content_length=1),
    "two Via lines": request(headers=["Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-up"]),
    "Via received, rport value": request(
        vias="SIP/2.0/UDP 10.0.0.1:6000;branch=z9hG4bK-x;rport=6000;received=127.0.0.1"),
    "compact forms": request(compact=["Call-ID", "From"]),
    "Contact": request(headers=["Contact: <sip:caller@127.0.0.1:6000>"]),
    "display names": request(from_='"Alice" <sip:caller@127.0.0.1:6000>', to="Bob <sip:svc@127.0.0.1:5060>"),
    "extension headers": request(headers=["X-Custom: a, b", "User-Agent: phone/1.0 (x)"]),
    "Route after Max-Forwards": request(max_forwards=None).replace(b"Route:", b"Max-Forwards: 9\r\nRoute:"),
    "Route and Max-Forwards above Via": request(vias="SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-b").replace(
        b"Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-b\r\n", b"").replace(
        b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nVia: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-b\r\n"),
    "Max-Forwards above Route": request().replace(b"Max-Forwards: 70\r\n", b"").replace(
        b"Route:", b"Max-Forwards: 70\r\nRoute:"),
    "header name never seen": request(headers=["X-Never-Seen-Before-%d: 1" % id(object())]),
    "Request-URI with transport=UDP (SIPp)": request().replace(b"5071 SIP", b"5071;transport=UDP SIP"),
}

INVALID = {
    "INVITE": request("INVITE"),
    "CANCEL": request("CANCEL"),
    "no To tag": request(to_tag=None),
    "Max-Forwards 0": request(max_forwards=0),
    "Max-Forwards 256": request(max_forwards=256),
    "Max-Forwards not a number": request(max_forwards="7x"),
    "CSeq method differs": request(cseq="2 INFO"),
    "CSeq number too large": request(cseq="4294967296 BYE"),
    "CSeq with two spaces": request(cseq="2  BYE"),
    "two From": request(headers=["From: <sip:x@127.0.0.1>;tag=2"]),
    "two Max-Forwards": request(headers=["Max-Forwards: 70"]),
    "Call-ID with a space": request().replace(b"Call-ID: call-1@127.0.0.1", b"Call-ID: call 1"),
    "empty Call-ID": request().replace(b"Call-ID: call-1@127.0.0.1", b"Call-ID: "),
    "no Route": request().replace(b"Route: " + OURS + b"\r\n", b""),
    "Route in another case": request().replace(b"Route:", b"route:"),
    "another proxy's Route": request(routes=["<sip:192.0.2.7;lr>"]),
    "our Route then another": request(routes=[OURS.decode() + ",<sip:192.0.2.7;lr>"]),
    "two Route lines": request(headers=["Route: <sip:192.0.2.7;lr>"]),
    "Via list on one line": request(vias="SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-a, SIP/2.0/UDP 192.0.2.1"),
    "bad Via": request(vias="SIP/2.0/UDP 127.0.0.1:6000;;branch=z9hG4bK-a"),
    "Request-URI with transport": request().replace(b"127.0.0.1:5071 SIP", b"127.0.0.1:5071;transport=tcp SIP"),
    "Request-URI with maddr": request().replace(b"127.0.0.1:5071 SIP", b"127.0.0.1:5071;maddr=192.0.2.1 SIP"),
    "Request-URI with headers": request().replace(b"127.0.0.1:5071 SIP", b"127.0.0.1:5071?X=1 SIP"),
    "sips Request-URI": request().replace(b"BYE sip:", b"BYE sips:"),
    "version 2.1": request().replace(b" SIP/2.0\r\n", b" SIP/2.1\r\n", 1),
    "folded line": request(headers=["Subject: a\r\n b"]),
    "bare LF": request(headers=["Subject: a\nX: b"]),
    "Content-Length larger than the body": request(body="x", content_length=5),
    "two Content-Length": request(headers=["Content-Length: 0"]),
    "Contact list": request(headers=["Contact: <sip:a@127.0.0.1>, <sip:b@127.0.0.1>"]),
    "leading CRLF": b"\r\n" + request(),
    "double SP in the Request-Line": request().replace(b"BYE sip", b"BYE  sip"),
    "no blank line": request().rstrip(b"\r\n"),
}


@pytest.mark.parametrize("name", VALID)
def test_accepted_as_the_general_way_reads_and_forwards_it(name):
    assert_same_as_general(VALID[name])


@pytest.mark.parametrize("name", INVALID)
def test_left_to_the_general_way(name):
    assert read_in_dialog(INVALID[name], OWN) is None


RESPONSE = (b"SIP/2.0 200 OK\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1.2\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-bye-1;rport=6000\r\n"
            b"From: <sip:caller@127.0.0.1:6000>;tag=uac1\r\n"
            b"To: <sip:svc@127.0.0.1:5060>;tag=uas1\r\n"
            b"Call-ID: call-1@127.0.0.1\r\n"
            b"CSeq: 2 BYE\r\n"
            b"Content-Length: 0\r\n\r\n")


@pytest.mark.parametrize("data", [
    RESPONSE,
    RESPONSE.replace(b"200 OK", b"180 Ringing").replace(b"Content-Length: 0\r\n\r\n",
                                                          b"Content-Length: 3\r\n\r\nv=0junk"),
    RESPONSE.replace(b"200 OK", b"486"),
    RESPONSE.replace(b"Content-Length: 0\r\n", b""),
    RESPONSE.replace(b"200 OK", b"603 Declined, with words").replace(b"CSeq:", b"Contact: <sip:x@192.0.2.1>\r\nCSeq:"),
])
def test_a_response_read_as_parse_message_reads_it(data):
    quick = read_response(data)
    msg = parse_message(data)
    assert quick is not None
    for name in ("is_request", "status", "reason", "method", "raw", "body", "content_length", "cseq", "start_line"):
        assert getattr(quick, name) == getattr(msg, name), name
    assert quick._lines == msg._lines and quick._names == msg._names


@pytest.mark.parametrize("data", [
    RESPONSE.replace(b"SIP/2.0 200", b"SIP/2.0 099"),
    RESPONSE.replace(b"SIP/2.0 200", b"SIP/2.0 700"),
    RESPONSE.replace(b"SIP/2.0 200 OK", b"SIP/2.1 200 OK"),
    RESPONSE.replace(b"CSeq: 2 BYE", b"CSeq: 2"),
    RESPONSE.replace(b"CSeq: 2 BYE", b"CSeq: 99999999999 BYE"),
    RESPONSE.replace(b"CSeq: 2 BYE\r\n", b""),
    RESPONSE.replace(b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1.2\r\n", b"").replace(
        b"Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-bye-1;rport=6000\r\n", b""),
    RESPONSE.replace(b"Content-Length: 0", b"Content-Length: 9"),
    RESPONSE.replace(b"To:", b"To: <sip:a@b>\r\n  ;x=1\r\nX-To:"),
    b"BYE sip:x@127.0.0.1 SIP/2.0\r\n" + RESPONSE.split(b"\r\n", 1)[1],
])
def test_a_response_off_the_usual_shape_is_left_to_the_general_way(data):
    assert read_response(data) is None


def test_torture_messages_with_our_route():
    """Every RFC 4475 message, given our Route under its start line: what the short way
    takes, the general way takes and forwards the same."""
    taken = 0
    for path in sorted(RFC4475.glob("*.dat")):
        data = path.read_bytes()
        for line_end in (b"\r\n", b"\n"):
            cut = data.find(line_end)
            if cut < 0:
                continue
            variant = data[:cut] + line_end + b"Route: " + OURS + data[cut:]
            if read_in_dialog(variant, OWN) is None:
                continue
            try:
                assert_same_as_general(variant)
            except ParseError as e:  # pragma: no cover - the failure message names the file
                pytest.fail(f"{path.name}: taken the short way, refused the general way ({e})")
            taken += 1
    assert taken == 0  # none is an in-dialog request of the usual shape


def test_torture_responses_read_as_parse_message_reads_them():
    """The RFC 4475 responses (and requests) the short way reads, `parse_message` reads
    the same; those it refuses, it refuses."""
    read = 0
    for path in sorted(RFC4475.glob("*.dat")):
        data = path.read_bytes()
        quick = read_response(data)
        if quick is None:
            continue
        msg = parse_message(data)
        assert (quick.status, quick.reason, quick.method, quick.body, quick._lines) == \
            (msg.status, msg.reason, msg.method, msg.body, msg._lines), path.name
        read += 1
    assert read >= 1


def rejected_call(fp: FakeProxy, n: int) -> None:
    """An INVITE answered 486: the proxy ACKs the gateway, the caller ACKs the proxy with
    the INVITE's branch (RFC 3261 §17.1.1.3, §17.2.1): that ACK ends here."""
    out = fp.receive(invite(n), UAC)
    gateway, data = next((a, d) for a, d in out if d.startswith(b"INVITE"))
    req = parse_message(data)
    fp.receive(build_response(req, 486, "Busy Here", to_tag=f"busy{n}"), gateway)
    ack = in_dialog("ACK", n, 1, gateway, f"z9hG4bK-uac-{n}")
    ack = ack.replace(b"Route: %s\r\n" % signed_route(f"call-{n}@127.0.0.1", f"uac{n}", gateway[0]).encode(), b"")
    fp.receive(ack.replace(b";tag=uas%d" % n, b";tag=busy%d" % n), UAC)


def unanswered_bye(fp: FakeProxy, n: int) -> None:
    """A BYE the gateway never answers: retransmitted, then 408 (RFC 3261 §16.8)."""
    fp.receive(in_dialog("BYE", n, 2, ("127.0.0.1", 5071), f"z9hG4bK-lost-{n}"), UAC)
    fp.advance(0.6)
    fp.receive(in_dialog("BYE", n, 2, ("127.0.0.1", 5071), f"z9hG4bK-lost-{n}"), UAC)
    fp.advance(40)


def joined_vias(response: bytes) -> bytes:
    """`response` with its Via lines joined on one line, as some peers (SIPp) send them."""
    head, sep, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    vias = [line[line.find(b":") + 1:].strip() for line in lines if line.startswith(b"Via:")]
    first = next(i for i, line in enumerate(lines) if line.startswith(b"Via:"))
    rest = [line for line in lines if not line.startswith(b"Via:")]
    return b"\r\n".join(rest[:first] + [b"Via: " + b", ".join(vias)] + rest[first:]) + sep + body


def joining_vias(receive):
    """`FakeProxy.receive` for a gateway that joins the Vias of its responses."""
    return lambda data, src: receive(joined_vias(data) if data.startswith(b"SIP/2.0") else data, src)


def test_the_proxy_sends_the_same_bytes_either_way(monkeypatch):
    import gdispatch.proxy as proxy_module

    recorded = {}
    for short_way in (True, False):
        fp = FakeProxy()
        sent = []
        original_send, original_reply = fp.transports.send, fp.transports.reply

        def send(transport, addr, data, on_error=None, listener=None, sent=sent, original=original_send):
            sent.append((addr, data))
            return original(transport, addr, data, on_error, listener)

        def reply(source, addr, data, sent=sent, original=original_reply):
            sent.append((addr, data))
            return original(source, addr, data)

        fp.transports.send, fp.transports.reply = send, reply
        with monkeypatch.context() as m:
            if not short_way:
                m.setattr(proxy_module, "read_in_dialog", lambda data, own: None)
                m.setattr(proxy_module, "read_response", lambda data: None)
            for n in range(3):
                full_call(fp, n)
            fp.receive = joining_vias(fp.receive)
            full_call(fp, 5)
            del fp.receive
            rejected_call(fp, 3)
            unanswered_bye(fp, 4)
            fp.advance(40)
        recorded[short_way] = (sent, dict(fp.proxy.stats), len(fp.proxy.server_txns), len(fp.proxy.client_txns))
    assert recorded[True] == recorded[False]
    sent, stats, servers, clients = recorded[True]
    assert [d.split(b" ", 2)[1] for _a, d in sent if d.startswith(b"SIP/2.0 4")] == [b"486", b"408"]
    assert sum(1 for _a, d in sent if d.startswith(b"BYE")) > 4 + 1  # the lost one, retransmitted
    assert stats["retransmissions_absorbed"] == 1 and servers == clients == 0


def test_responses_take_the_short_way_with_their_vias_on_one_line_or_several(monkeypatch):
    """The responses to what the proxy sent are matched by their top Via, which it wrote,
    without the general way (`on_response`), whether the peer copied the Vias line by line
    or joined them (counted by the general way's entry point)."""
    fp = FakeProxy()
    general = []
    original = fp.proxy.on_response
    monkeypatch.setattr(fp.proxy, "on_response", lambda msg, source: general.append(msg) or original(msg, source))
    full_call(fp, 1)
    fp.receive = joining_vias(fp.receive)
    full_call(fp, 2)
    assert general == []
    assert fp.proxy.stats["responses"] == 2 * 4


SIPP_BYE = (b"BYE sip:127.0.0.1:5071;transport=UDP SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-13208-1-21\r\n"
            b"Route: %s\r\n"
            b"From: sipp <sip:sipp@127.0.0.1:6000>;tag=13208Uac1\r\n"
            b"To: service <sip:service@127.0.0.1:5060>;tag=13201Ok2\r\n"
            b"Call-ID: 1-13208@127.0.0.1\r\n"
            b"CSeq: 2 BYE\r\n"
            b"Contact: <sip:sipp@127.0.0.1:6000;transport=UDP>\r\n"
            b"Max-Forwards: 70\r\n"
            b"Content-Length: 0\r\n\r\n") % signed_route("1-13208@127.0.0.1", "13208Uac1", "127.0.0.1").encode()


def test_the_in_dialog_requests_sipp_sends_take_the_short_way(monkeypatch):
    """As tests/scenarios/uac.xml sends them (a Request-URI with transport=UDP, display
    names): forwarded without the general way's entry point."""
    fp = FakeProxy()
    general = []
    original = fp.proxy.on_request
    monkeypatch.setattr(fp.proxy, "on_request", lambda msg, source: general.append(msg) or original(msg, source))
    assert_same_as_general(SIPP_BYE)
    for data in (SIPP_BYE.replace(b"BYE", b"ACK").replace(b"-21", b"-19"), SIPP_BYE):
        out = fp.receive(data, UAC)
        assert [a for a, _d in out] == [("127.0.0.1", 5071)]
    assert general == []


def test_a_retransmitted_bye_is_absorbed_the_short_way():
    fp = FakeProxy()
    full_call(fp, 1)
    bye = request(cseq=3, vias="SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-again;rport")
    first = fp.receive(bye, UAC)
    again = fp.receive(bye, UAC)
    assert len([d for _a, d in first if d.startswith(b"BYE")]) == 1
    assert again == []
    assert fp.proxy.stats["retransmissions_absorbed"] == 1


def test_the_bye_leaves_before_its_transactions_are_built():
    """The short way sends the BYE on first and builds its transactions after (so that at
    low load their cost does not delay it); its 200 still finds them."""
    fp = FakeProxy()
    full_call(fp, 1)
    seen = []
    original = fp.transports.send

    def send(transport, addr, data, on_error=None, listener=None):
        if data.startswith(b"BYE"):
            seen.append((len(fp.proxy.server_txns), len(fp.proxy.client_txns)))
        return original(transport, addr, data, on_error, listener)

    fp.transports.send = send
    bye = request(cseq=3, vias="SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-first;rport")
    forwarded = [d for _a, d in fp.receive(bye, UAC) if d.startswith(b"BYE")]
    assert len(forwarded) == 1
    servers, clients = len(fp.proxy.server_txns), len(fp.proxy.client_txns)
    assert seen == [(servers - 1, clients - 1)]
    ok = fp.receive(build_response(parse_message(forwarded[0]), 200, "OK"), ("127.0.0.1", 5071))
    assert [d.split(b"\r\n", 1)[0] for _a, d in ok] == [b"SIP/2.0 200 OK"]
    # Retransmissions of the request go on the transaction's timer (RFC 3261 §17.1.2.2).
    fp.transports.send = original
    bye2 = request(cseq=4, vias="SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-lost;rport")
    assert len([d for _a, d in fp.receive(bye2, UAC) if d.startswith(b"BYE")]) == 1
    fp.advance(0.6)
    assert len([d for _a, d in fp.transports.take() if d.startswith(b"BYE")]) == 1


@pytest.mark.parametrize("short_way", [True, False])
def test_a_bye_that_cannot_be_sent_is_answered_as_the_general_way_answers(monkeypatch, short_way):
    import gdispatch.proxy as proxy_module
    from gdispatch.transport import TransportError

    fp = FakeProxy()
    full_call(fp, 1)
    original = fp.transports.send
    tries = []

    def send(transport, addr, data, on_error=None, listener=None):
        if data.startswith(b"BYE"):
            tries.append(addr)
            raise TransportError(1, "udp send refused")
        return original(transport, addr, data, on_error, listener)

    fp.transports.send = send
    if not short_way:
        monkeypatch.setattr(proxy_module, "read_in_dialog", lambda data, own: None)
    out = fp.receive(request(cseq=3, vias="SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-fail;rport"), UAC)
    # As if a 503 came (RFC 3261 §16.9), which goes upstream as a 500 (§16.7 step 6).
    assert [d.split(b"\r\n", 1)[0] for _a, d in out] == [b"SIP/2.0 500 Server Internal Error"]
    assert len(tries) == (2 if short_way else 1)  # the short way's send, then the transaction's
    fp.advance(40)
    assert not fp.proxy.server_txns and not fp.proxy.client_txns
