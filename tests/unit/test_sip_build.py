"""Building outgoing messages by splicing bytes (gdispatch/sip/build.py) and stream
framing (gdispatch/sip/framing.py)."""

import pytest

from gdispatch.sip import (
    MAX_MESSAGE_SIZE,
    ParseError,
    build_ack,
    build_cancel,
    build_response,
    forward_request,
    frame_stream,
    parse_message,
    strip_top_via,
)

BODY = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\n"

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK74bf9 ,"
    b" SIP/2.0/TCP  edge.example.com;branch=z9hG4bK1\r\n"
    b"Via: SIP/2.0/UDP ua.example.com;branch=z9hG4bK0\r\n"
    b"max-forwards:  70\r\n"
    b"Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    b"Route: <sip:p3.example.com;lr>\r\n"
    b"Record-Route: <sip:rr.example.com;lr>\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"f: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
    b"i: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 2 INVITE\r\n"
    b"Subject: folded\r\n"
    b"  subject line\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"l: %d\r\n"
    b"\r\n" % len(BODY)
) + BODY
NEW_VIA = b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.proxy1"


def header_lines(data: bytes) -> list[bytes]:
    """The header lines of a message as sent, folds kept inside their header."""
    head = data.split(b"\r\n\r\n", 1)[0]
    return head.replace(b"\r\n ", b"\x00 ").split(b"\r\n")[1:]


def assert_kept(
    original: bytes, edited: bytes, *, except_for: tuple[bytes, ...] = ()
) -> None:
    """Every header line of `original` not starting with an excepted prefix appears,
    byte for byte and in the same order, in `edited`."""
    kept = [line for line in header_lines(original) if not line.startswith(except_for)]
    out = header_lines(edited)
    positions = [out.index(line) for line in kept]
    assert positions == sorted(positions)


def test_forward_adds_via_above_all_and_keeps_everything_else():
    msg = parse_message(INVITE)
    out = forward_request(msg, via=NEW_VIA)
    lines = header_lines(out)
    assert lines[0] == b"Via: " + NEW_VIA
    assert_kept(INVITE, out)
    assert len(lines) == len(header_lines(INVITE)) + 1
    again = parse_message(out)
    assert [v.host for v in again.vias] == [
        "127.0.0.1",
        "pc33.atlanta.example.com",
        "edge.example.com",
        "ua.example.com",
    ]
    assert again.body == BODY
    assert again.content_length == len(BODY)
    assert again.get("subject") == b"folded subject line"
    again.validate_request()


def test_forward_rewrites_request_uri_and_max_forwards_in_place():
    msg = parse_message(INVITE)
    out = forward_request(
        msg, via=NEW_VIA, ruri=b"sip:bob@192.0.2.4:5070", max_forwards=69
    )
    assert out.startswith(b"INVITE sip:bob@192.0.2.4:5070 SIP/2.0\r\n")
    assert b"max-forwards: 69\r\n" in out
    assert_kept(INVITE, out, except_for=(b"max-forwards",))
    again = parse_message(out)
    assert again.max_forwards == 69
    assert again.uri.port == 5070
    assert again.count("max-forwards") == 1


def test_forward_adds_max_forwards_when_absent():
    data = INVITE.replace(b"max-forwards:  70\r\n", b"")
    out = forward_request(parse_message(data), via=NEW_VIA, max_forwards=70)
    again = parse_message(out)
    assert again.max_forwards == 70
    assert again.body == BODY
    assert_kept(data, out)


def test_forward_puts_record_routes_on_top_in_order():
    msg = parse_message(INVITE)
    out = forward_request(
        msg,
        via=NEW_VIA,
        record_route=[b"<sip:a.example.com;lr>", b"<sip:b.example.com;lr>"],
    )
    again = parse_message(out)
    assert [r.uri.host for r in again.record_routes] == [
        "a.example.com",
        "b.example.com",
        "rr.example.com",
    ]
    assert_kept(INVITE, out)


def test_forward_adds_record_route_below_vias_when_there_is_none():
    data = INVITE.replace(b"Record-Route: <sip:rr.example.com;lr>\r\n", b"")
    out = forward_request(
        parse_message(data), via=NEW_VIA, record_route=[b"<sip:a.example.com;lr>"]
    )
    lines = header_lines(out)
    assert lines[3] == b"Record-Route: <sip:a.example.com;lr>"
    assert lines[2].startswith(b"Via: SIP/2.0/UDP ua.example.com")
    assert [r.uri.host for r in parse_message(out).record_routes] == ["a.example.com"]


@pytest.mark.parametrize(
    "count,hosts,first_route_line",
    [
        (1, ["p2.example.com", "p3.example.com"], b"Route: <sip:p2.example.com;lr>"),
        (2, ["p3.example.com"], b"Route: <sip:p3.example.com;lr>"),
        (3, [], None),
    ],
)
def test_forward_pops_routes_across_comma_joined_and_separate_lines(
    count, hosts, first_route_line
):
    msg = parse_message(INVITE)
    out = forward_request(msg, via=NEW_VIA, pop_routes=count)
    again = parse_message(out)
    assert [r.uri.host for r in again.routes] == hosts
    routes = [line for line in header_lines(out) if line.startswith(b"Route")]
    assert (routes[0] if routes else None) == first_route_line
    assert_kept(INVITE, out, except_for=(b"Route",))
    again.validate_request()


def test_popping_more_routes_than_there_are_is_an_error():
    with pytest.raises(ValueError):
        forward_request(parse_message(INVITE), via=NEW_VIA, pop_routes=4)


def test_forward_replaces_the_first_value_of_a_comma_joined_top_via():
    msg = parse_message(INVITE)
    received = msg.top_via.raw + b";received=192.0.2.101;rport=5061"
    out = forward_request(msg, via=NEW_VIA, top_via=received)
    lines = header_lines(out)
    # From the comma on, the line keeps its exact bytes, odd spacing included.
    assert (
        lines[1]
        == b"v: " + received + b", SIP/2.0/TCP  edge.example.com;branch=z9hG4bK1"
    )
    again = parse_message(out)
    assert again.vias[1].received == "192.0.2.101"
    assert again.vias[1].rport == "5061"
    assert again.vias[2].host == "edge.example.com"
    assert_kept(INVITE, out, except_for=(b"v:",))


def test_forward_replaces_a_single_valued_top_via():
    data = INVITE.replace(
        b"pc33.atlanta.example.com;branch=z9hG4bK74bf9 ,"
        b" SIP/2.0/TCP  edge.example.com;branch=z9hG4bK1",
        b"h",
    )
    out = forward_request(
        parse_message(data), via=NEW_VIA, top_via=b"SIP/2.0/UDP h;received=192.0.2.7"
    )
    assert header_lines(out)[1] == b"v: SIP/2.0/UDP h;received=192.0.2.7"


def test_forward_adds_and_removes_headers():
    msg = parse_message(INVITE)
    out = forward_request(
        msg,
        via=NEW_VIA,
        add_headers=[b"X-Dispatcher: set=1", b"P-Hint: x"],
        remove_headers=["Subject", "m"],
    )
    lines = header_lines(out)
    assert lines[-2:] == [b"X-Dispatcher: set=1", b"P-Hint: x"]
    again = parse_message(out)
    assert not again.has("subject") and not again.has("contact")
    assert again.body == BODY
    assert_kept(INVITE, out, except_for=(b"Subject", b"Contact"))


def test_forward_of_a_bare_lf_request_reparses():
    data = INVITE.replace(b"\r\n", b"\n").replace(BODY.replace(b"\r\n", b"\n"), BODY)
    out = forward_request(parse_message(data), via=NEW_VIA, max_forwards=10)
    again = parse_message(out)
    assert again.max_forwards == 10
    assert again.body == BODY
    assert len(again.vias) == 4


def test_strip_top_via_removes_a_whole_line():
    data = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK2\r\n"
        b"Via: SIP/2.0/UDP ua.example.com;branch=z9hG4bK1\r\n"
        b"CSeq: 1 INVITE\r\nContent-Length: 3\r\n\r\nabc"
    )
    out = strip_top_via(parse_message(data))
    assert out == data.replace(
        b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK2\r\n", b""
    )


def test_strip_top_via_removes_the_first_value_of_a_comma_joined_line():
    data = (
        b"SIP/2.0 180 Ringing\r\nv: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK2,\r\n"
        b" SIP/2.0/UDP ua.example.com;branch=z9hG4bK1\r\n"
        b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    out = strip_top_via(parse_message(data))
    assert out.startswith(
        b"SIP/2.0 180 Ringing\r\nv: SIP/2.0/UDP ua.example.com;branch=z9hG4bK1\r\n"
    )
    assert [v.host for v in parse_message(out).vias] == ["ua.example.com"]


def test_strip_top_via_without_via_raises():
    with pytest.raises(ParseError):
        strip_top_via(parse_message(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"))


def test_build_response_copies_the_dialog_headers_and_adds_a_to_tag():
    msg = parse_message(INVITE)
    out = build_response(
        msg, 486, "Busy Here", to_tag="t0", headers=[b"Retry-After: 30"]
    )
    resp = parse_message(out)
    assert resp.status == 486 and resp.reason == b"Busy Here"
    assert [v.host for v in resp.vias] == [
        "pc33.atlanta.example.com",
        "edge.example.com",
        "ua.example.com",
    ]
    assert resp.to_tag == b"t0"
    assert resp.from_tag == b"9fxced76sl"
    assert resp.call_id == msg.call_id
    assert resp.cseq == (2, "INVITE")
    assert resp.get("retry-after") == b"30"
    assert resp.content_length == 0 and resp.body == b""
    resp.validate_response()
    # Copied lines are the request's bytes.
    for line in header_lines(INVITE):
        if line.startswith((b"v:", b"Via:", b"f:", b"i:", b"CSeq:")):
            assert line in header_lines(out)


def test_build_response_adds_no_to_tag_to_100_or_to_a_tagged_to():
    msg = parse_message(INVITE)
    assert parse_message(build_response(msg, 100, "Trying", to_tag="t0")).to_tag is None
    tagged = parse_message(
        INVITE.replace(
            b"To: Bob <sip:bob@biloxi.example.com>", b"To: <sip:b@x>;tag=old"
        )
    )
    assert (
        parse_message(build_response(tagged, 200, "OK", to_tag="new")).to_tag == b"old"
    )


def test_build_response_with_body_and_rewritten_top_via():
    msg = parse_message(INVITE)
    top = msg.top_via.raw + b";received=192.0.2.1"
    out = build_response(
        msg,
        200,
        "OK",
        body=b"hello",
        top_via=top,
        headers=[b"Content-Type: text/plain"],
    )
    resp = parse_message(out)
    assert resp.body == b"hello"
    assert resp.vias[0].received == "192.0.2.1"
    assert resp.vias[1].host == "edge.example.com"


def test_build_response_to_a_broken_request_copies_what_exists():
    broken = parse_message(
        b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP ua.example.com;branch=z9hG4bK9\r\n"
        b'To: "unterminated <sip:a@b>\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n'
    )
    with pytest.raises(ParseError):
        broken.validate_request()
    out = build_response(broken, 400, "Bad To", to_tag="x")
    resp = parse_message(out)
    assert resp.status == 400
    assert resp.top_via.host == "ua.example.com"
    assert resp.get("to") == b'"unterminated <sip:a@b>'
    assert not resp.has("from") and not resp.has("call-id")


def test_build_ack_for_a_non_2xx_response():
    request = parse_message(INVITE)
    response = parse_message(build_response(request, 404, "Not Found", to_tag="t9"))
    ack = parse_message(build_ack(request, response))
    assert ack.method == "ACK"
    assert ack.ruri == request.ruri
    assert [v.raw for v in ack.vias] == [request.top_via.raw]
    assert ack.to_tag == b"t9"
    assert ack.from_tag == request.from_tag
    assert ack.call_id == request.call_id
    assert ack.cseq == (2, "ACK")
    assert [r.uri.host for r in ack.routes] == [
        "p1.example.com",
        "p2.example.com",
        "p3.example.com",
    ]
    assert ack.max_forwards == 70
    assert ack.content_length == 0
    ack.validate_request()


def test_build_cancel_for_a_forwarded_invite():
    request = parse_message(INVITE)
    cancel = parse_message(build_cancel(request))
    assert cancel.method == "CANCEL"
    assert cancel.ruri == request.ruri
    assert [v.raw for v in cancel.vias] == [request.top_via.raw]
    assert cancel.get("to") == request.get("to")
    assert cancel.to_tag is None
    assert cancel.cseq == (2, "CANCEL")
    assert len(cancel.routes) == 3
    assert cancel.max_forwards == 70
    assert cancel.body == b""
    cancel.validate_request()


# -- stream framing ---------------------------------------------------------------------------


def test_frame_stream_waits_for_the_header_block_and_the_body():
    for cut in (0, 10, INVITE.index(b"\r\n\r\n") + 2, len(INVITE) - 1):
        assert frame_stream(INVITE[:cut]) == (None, 0)
    assert frame_stream(INVITE) == (INVITE, len(INVITE))


def test_frame_stream_cuts_consecutive_messages_and_skips_keepalives():
    other = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    buf = bytearray(b"\r\n\r\n" + INVITE + b"\r\n" + other + other[:5])
    message, used = frame_stream(buf)
    assert message == INVITE and used == 4 + len(INVITE)
    del buf[:used]
    message, used = frame_stream(buf)
    assert message == other and used == 2 + len(other)
    del buf[:used]
    assert frame_stream(buf) == (None, 0)
    assert frame_stream(b"\r\n\r\n") == (None, 4)


def test_frame_stream_reads_compact_and_folded_content_length():
    folded = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length:\r\n 3\r\n\r\nabcNEXT"
    assert frame_stream(folded) == (folded[:-4], len(folded) - 4)
    bare_lf = b"OPTIONS sip:a@b SIP/2.0\nL : 2\n\nhiNEXT"
    assert frame_stream(bare_lf) == (bare_lf[:-4], len(bare_lf) - 4)


@pytest.mark.parametrize(
    "head",
    [
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n",
        b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n",
        b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\n",
        b"OPTIONS sip:a@b SIP/2.0\r\nX-Content-Length: 1\r\n\r\n",
    ],
)
def test_frame_stream_refuses_a_missing_or_bad_content_length(head):
    with pytest.raises(ParseError) as info:
        frame_stream(head)
    assert info.value.status == 400


def test_frame_stream_refuses_oversize_messages():
    with pytest.raises(ParseError) as info:
        frame_stream(
            b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: %d\r\n\r\n" % MAX_MESSAGE_SIZE
        )
    assert info.value.status == 413
    with pytest.raises(ParseError) as info:
        frame_stream(b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"x" * MAX_MESSAGE_SIZE)
    assert info.value.status == 413


def test_framed_message_parses_as_a_stream_message():
    message, _ = frame_stream(INVITE + INVITE)
    assert parse_message(message, stream=True).body == BODY
