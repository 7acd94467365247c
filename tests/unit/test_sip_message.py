"""Parsing messages, reading headers, Via, and request/response validation
(gdispatch/sip/message.py, via.py, headers.py)."""

import pytest

from gdispatch.sip import (
    COMPACT_FORMS,
    MAX_MESSAGE_SIZE,
    ParseError,
    canonical_name,
    parse_message,
    parse_via,
)
from tests.support import sipmsg


def sip(*lines: str, body: bytes = b"", eol: bytes = b"\r\n") -> bytes:
    """A message from its start line and header lines; no Content-Length is added."""
    return eol.join(line.encode() for line in lines) + eol + eol + body


# Alice's INVITE to Bob in RFC 3261's examples (§24.2), and its answer.
ALICE_TO_BOB = dict(vias="SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
                    from_="Alice <sip:alice@atlanta.example.com>", to="Bob <sip:bob@biloxi.example.com>", cseq=314159)


def request(*extra: str, method: str = "INVITE", body: bytes = b"") -> bytes:
    return sipmsg.request(method, "sip:bob@biloxi.example.com", **ALICE_TO_BOB, headers=extra, body=body)


def response(*extra: str, status: str = "200 OK") -> bytes:
    code, reason = status.split(" ", 1)
    return sipmsg.response(int(code), reason, **{**ALICE_TO_BOB, "vias": ALICE_TO_BOB["vias"] + ";received=192.0.2.1"},
                           to_tag="a6c85cf", headers=extra)


# -- start line and body -----------------------------------------------------------------


def test_request_start_line_and_body():
    data = request("Content-Type: application/sdp", body=b"v=0\r\n")
    msg = parse_message(data)
    assert msg.is_request
    assert msg.method == "INVITE"
    assert msg.ruri == b"sip:bob@biloxi.example.com"
    assert msg.status == 0 and msg.reason == b""
    assert msg.version == "SIP/2.0"
    assert msg.body == b"v=0\r\n"
    assert msg.content_length == 5
    assert msg.raw == data
    assert msg.uri.user == "bob"


def test_response_start_line_and_method_from_cseq():
    msg = parse_message(response(status="486 Busy Here"))
    assert not msg.is_request
    assert msg.status == 486
    assert msg.reason == b"Busy Here"
    assert msg.method == "INVITE"
    assert msg.ruri == b""


@pytest.mark.parametrize("line", ["SIP/2.0 100 ", "SIP/2.0 100"])
def test_empty_reason_phrase_is_accepted(line):
    msg = parse_message(sip(line, "Content-Length: 0"))
    assert msg.status == 100
    assert msg.reason == b""


@pytest.mark.parametrize(
    "line",
    [
        "SIP/2.0 4294967301 big",
        "SIP/2.0 700 Too High",
        "SIP/2.0 099 Too Low",
        "SIP/2.0 20 Short",
        "SIP/2.0 2x0 Letters",
        "SIP/2.0",
        "INVITE  sip:a@b  SIP/2.0",
        "INVITE sip:a@b; lr SIP/2.0",
        "INVITE sip:a@b SIP/2.0 ",
        "INVITE sip:a@b",
        "INVITE sip:a@b HTTP/1.1",
        "INV(ITE sip:a@b SIP/2.0",
    ],
)
def test_malformed_start_lines_raise(line):
    with pytest.raises(ParseError) as info:
        parse_message(sip(line, "Content-Length: 0"))
    assert info.value.status == 400


def test_other_sip_version_parses_and_is_refused_with_505():
    msg = parse_message(sip("OPTIONS sip:a@b SIP/7.0", "Content-Length: 0"))
    assert msg.version == "SIP/7.0"
    with pytest.raises(ParseError) as info:
        msg.validate_request()
    assert info.value.status == 505


def test_leading_crlfs_are_skipped():
    data = request()
    assert parse_message(b"\r\n\r\n" + data).raw == data
    with pytest.raises(ParseError):
        parse_message(b"\r\n\r\n")


def test_oversize_message_is_413():
    data = request(body=b"x" * MAX_MESSAGE_SIZE)
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert info.value.status == 413


# -- Content-Length ------------------------------------------------------------------------


def test_datagram_body_longer_than_content_length_is_cut():
    # RFC 3261 §18.3, RFC 4475 §3.1.1.8 (dblreq).
    data = request(body=b"abc")
    msg = parse_message(data + b"INVITE junk")
    assert msg.body == b"abc"
    assert msg.raw == data


def test_datagram_body_shorter_than_content_length_is_an_error():
    data = request(body=b"abcdef")[:-2]
    with pytest.raises(ParseError, match="Content-Length mismatch"):
        parse_message(data)


def test_datagram_without_content_length_takes_the_rest_as_body():
    data = sip("MESSAGE sip:a@b SIP/2.0", "Via: SIP/2.0/UDP h", body=b"hello")
    msg = parse_message(data)
    assert msg.body == b"hello"
    assert msg.content_length is None


def test_stream_message_requires_content_length():
    data = sip("MESSAGE sip:a@b SIP/2.0", "Via: SIP/2.0/UDP h", body=b"hello")
    with pytest.raises(ParseError, match="Missing Content-Length"):
        parse_message(data, stream=True)
    assert parse_message(request(body=b"hi"), stream=True).body == b"hi"


@pytest.mark.parametrize("value", ["-999", "five", "", "1 2", "99999999999"])
def test_bad_content_length_values_raise(value):
    with pytest.raises(ParseError):
        parse_message(sip("OPTIONS sip:a@b SIP/2.0", f"Content-Length: {value}"))


def test_conflicting_content_lengths_raise_and_equal_ones_do_not():
    conflicting = sip(
        "OPTIONS sip:a@b SIP/2.0", "Content-Length: 3", "l: 5", body=b"abcde"
    )
    with pytest.raises(ParseError, match="Conflicting"):
        parse_message(conflicting)
    equal = sip("OPTIONS sip:a@b SIP/2.0", "Content-Length: 3", "l: 3", body=b"abc")
    assert parse_message(equal).body == b"abc"


# -- headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compact,full", sorted(COMPACT_FORMS.items()))
def test_every_compact_form_is_read_under_its_full_name(compact, full):
    # "0" is a fine value for every one of them, Content-Length included.
    msg = parse_message(
        sip("OPTIONS sip:a@b SIP/2.0", f"{compact.upper()}: 0", "Content-Length: 0")
    )
    assert msg.get(full) == b"0"
    assert msg.get(compact) == b"0"
    assert msg.get(full.upper()) == b"0"
    assert msg.headers[0].name == full
    assert canonical_name(compact) == full


def test_header_names_are_case_insensitive_and_may_have_space_before_the_colon():
    msg = parse_message(
        sip("OPTIONS sip:a@b SIP/2.0", "cALL-iD  : abc", "MaX-fOrWaRdS:0068", "l: 0")
    )
    assert msg.get("Call-ID") == b"abc"
    assert msg.get("CALL-ID") == b"abc"
    assert msg.get("i") == b"abc"
    assert msg.max_forwards == 68
    assert msg.has("call-id") and not msg.has("contact")
    assert msg.get("contact") is None
    assert msg.get_all("contact") == []


def test_folded_lines_are_unfolded_in_values_and_kept_in_raw():
    data = sip(
        "OPTIONS sip:a@b SIP/2.0",
        "Subject: first",
        "\tsecond",
        "NewFangledHeader:   newfangled value",
        " continued newfangled value",
        "cseq: 0009",
        "  OPTIONS",
        "l: 0",
    )
    msg = parse_message(data)
    assert msg.get("subject") == b"first second"
    assert msg.get("newfangledheader") == b"newfangled value continued newfangled value"
    assert msg.cseq == (9, "OPTIONS")
    raws = [h.raw for h in msg.headers]
    assert raws[0] == b"Subject: first\r\n\tsecond"
    assert (
        raws[1]
        == b"NewFangledHeader:   newfangled value\r\n continued newfangled value"
    )


def test_bare_lf_line_ends_are_tolerated():
    data = request(body=b"v=0\n").replace(b"\r\n", b"\n")
    msg = parse_message(data)
    assert msg.method == "INVITE"
    assert msg.call_id == b"a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.body == b"v=0\n"
    mixed = sip("OPTIONS sip:a@b SIP/2.0", "Subject: a", "l: 0").replace(
        b"Subject: a\r\n", b"Subject: a\n"
    )
    assert parse_message(mixed).get("subject") == b"a"


def test_header_without_headers_end_on_a_datagram_runs_to_the_end():
    msg = parse_message(b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\nl: 0\r\n")
    assert msg.call_id == b"x"
    assert msg.body == b""
    with pytest.raises(ParseError):
        parse_message(b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\nl: 0\r\n", stream=True)


@pytest.mark.parametrize(
    "line",
    ["Foobar roobar", ": no name", "Bad Name: x", " leading: fold of the start line"],
)
def test_malformed_header_lines_raise(line):
    with pytest.raises(ParseError):
        parse_message(sip("OPTIONS sip:a@b SIP/2.0", line, "l: 0"))


def test_headers_list_keeps_order_names_values_and_raw_lines():
    msg = parse_message(sip(
        "INVITE sip:bob@biloxi.example.com SIP/2.0",
        "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
        "Max-Forwards: 70",
        "To: Bob <sip:bob@biloxi.example.com>",
        "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
        "CSeq: 314159 INVITE",
        "X-Custom:  padded value  ",
        "Content-Length: 0",
    ))
    names = [h.name for h in msg.headers]
    assert names == [
        "via",
        "max-forwards",
        "to",
        "from",
        "call-id",
        "cseq",
        "x-custom",
        "content-length",
    ]
    custom = msg.headers[6]
    assert custom.value == b"padded value"
    assert custom.raw == b"X-Custom:  padded value  "


def test_get_all_splits_list_headers_on_commas_outside_quotes_and_brackets():
    msg = parse_message(
        request(
            'Contact: "Doe, John" <sip:john@a.example.com;x=1,2>, <sip:j@b.example.com>',
            "m: sip:third@c.example.com",
            "Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>",
            "Route: <sip:p3.example.com;lr>",
        )
    )
    assert msg.get_all("contact") == [
        b'"Doe, John" <sip:john@a.example.com;x=1,2>',
        b"<sip:j@b.example.com>",
        b"sip:third@c.example.com",
    ]
    assert [r.uri.host for r in msg.routes] == [
        "p1.example.com",
        "p2.example.com",
        "p3.example.com",
    ]
    assert msg.count("route") == 2


def test_get_all_does_not_split_headers_whose_grammar_holds_commas():
    auth = 'Digest username="alice", realm="atlanta.example.com", nonce="84a4cc6f", uri="sip:b"'
    msg = parse_message(
        request(f"Authorization: {auth}", "Date: Sat, 13 Nov 2010 23:29:00 GMT")
    )
    assert msg.get_all("authorization") == [auth.encode()]
    assert msg.get_all("date") == [b"Sat, 13 Nov 2010 23:29:00 GMT"]


def test_non_utf8_bytes_survive_untouched():
    msg = parse_message(request("X-Bin: \xff\xfe".encode("latin-1").decode("latin-1")))
    assert msg.get("x-bin") == "\xff\xfe".encode()


# -- what a proxy reads ----------------------------------------------------------------------


def test_proxy_fields_of_a_request():
    msg = parse_message(
        request(
            "Record-Route: <sip:rr1.example.com;lr>, <sip:rr2.example.com;lr>",
            "Route: <sip:p1.example.com;lr>",
        )
    )
    assert msg.call_id == b"a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.cseq == (314159, "INVITE")
    assert msg.from_tag == b"1928301774"
    assert msg.to_tag is None
    assert msg.max_forwards == 70
    assert msg.top_via.branch == "z9hG4bK776asdhds"
    assert [v.host for v in msg.vias] == ["pc33.atlanta.example.com"]
    assert [r.uri.host for r in msg.record_routes] == [
        "rr1.example.com",
        "rr2.example.com",
    ]
    assert msg.routes[0].uri.params == {"lr": None}
    assert msg.to_addr.display == b"Bob"


def test_absent_optional_fields_are_none():
    msg = parse_message(sip("OPTIONS sip:a@b SIP/2.0", "l: 0"))
    assert msg.max_forwards is None
    assert msg.from_tag is None and msg.to_tag is None
    assert msg.routes == [] and msg.vias == []
    for attribute in ("call_id", "cseq", "top_via", "from_addr", "to_addr"):
        with pytest.raises(ParseError):
            getattr(msg, attribute)


@pytest.mark.parametrize(
    "value",
    ["", "1", "INVITE", "x INVITE", "1 INVITE extra", "-1 INVITE", "4294967296 INVITE"],
)
def test_malformed_cseq_raises(value):
    msg = parse_message(sip("OPTIONS sip:a@b SIP/2.0", f"CSeq: {value}", "l: 0"))
    with pytest.raises(ParseError, match="CSeq"):
        _ = msg.cseq


def test_largest_cseq_number_is_accepted():
    msg = parse_message(
        sip("OPTIONS sip:a@b SIP/2.0", "CSeq: 4294967295 OPTIONS", "l: 0")
    )
    assert msg.cseq == (4294967295, "OPTIONS")


def test_non_numeric_max_forwards_raises():
    msg = parse_message(sip("OPTIONS sip:a@b SIP/2.0", "Max-Forwards: ten", "l: 0"))
    with pytest.raises(ParseError, match="Max-Forwards"):
        _ = msg.max_forwards


def test_top_via_is_the_first_value_of_a_comma_joined_line():
    msg = parse_message(
        sip(
            "SIP/2.0 200 OK",
            "v: SIP/2.0/UDP first.example.com;branch=z9hG4bK1, SIP/2.0/TCP second.example.com",
            "Via: SIP/2.0/TLS third.example.com:5061",
            "l: 0",
        )
    )
    assert msg.top_via.host == "first.example.com"
    assert [v.transport for v in msg.vias] == ["UDP", "TCP", "TLS"]
    assert msg.vias[2].port == 5061


# -- Via ----------------------------------------------------------------------------------


def test_via_fields():
    via = parse_via(
        b"SIP/2.0/udp PC33.Example.com:5066;branch=z9hG4bKa;received=192.0.2.1;rport=5067;X=Y"
    )
    assert via.protocol == "SIP/2.0"
    assert via.transport == "UDP"
    assert via.host == "pc33.example.com"
    assert via.port == 5066
    assert via.branch == "z9hG4bKa"
    assert via.received == "192.0.2.1"
    assert via.rport == "5067"
    assert via.params == {
        "branch": "z9hG4bKa",
        "received": "192.0.2.1",
        "rport": "5067",
        "x": "Y",
    }
    assert via.sent_by() == "pc33.example.com:5066"
    assert (
        via.raw
        == b"SIP/2.0/udp PC33.Example.com:5066;branch=z9hG4bKa;received=192.0.2.1;rport=5067;X=Y"
    )


def test_via_rport_absent_empty_or_valued():
    assert parse_via(b"SIP/2.0/UDP h;branch=z9hG4bK1").rport is None
    assert parse_via(b"SIP/2.0/UDP h;rport;branch=z9hG4bK1").rport == ""
    assert parse_via(b"SIP/2.0/UDP h;rport=1234").rport == "1234"


def test_via_ipv6_sent_by():
    via = parse_via(
        b"SIP/2.0/TCP [2001:DB8::9:1]:5070;branch=z9hG4bK1;received=2001:db8::9:255"
    )
    assert via.host == "2001:db8::9:1"
    assert via.port == 5070
    assert via.sent_by() == "[2001:db8::9:1]:5070"
    assert via.received == "2001:db8::9:255"
    assert parse_via(b"SIP/2.0/UDP [::1]").sent_by() == "[::1]"


def test_via_with_linear_white_space_everywhere():
    # RFC 4475 §3.1.1.1 (wsinv), after unfolding.
    via = parse_via(
        b"SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8"
    )
    assert (via.protocol, via.transport, via.host, via.port) == (
        "SIP/2.0",
        "TCP",
        "spindle.example.com",
        None,
    )
    assert via.branch == "z9hG4bK9ikj8"
    assert parse_via(b"SIP/2.0/UDP host : 5060").port == 5060


def test_via_keeps_escapes_in_branch_as_written():
    assert (
        parse_via(b"SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~").branch
        == "z9hG4bK-.!%66*_+`'~"
    )


def test_unknown_transport_and_version_are_read_as_written():
    assert parse_via(b"SIP/2.0/UNKNOWN t4.example.com").transport == "UNKNOWN"
    assert parse_via(b"SIP/7.0/UDP c.example.com").protocol == "SIP/7.0"


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"SIP/2.0/UDP",
        b"SIP/2.0 host",
        b"SIP/2.0/UDP 192.0.2.15;;,;,,",
        b"SIP/2.0/UDP host;branch=",
        b"SIP/2.0/UDP host:70000",
        b"SIP/2.0/UDP host:port",
        b"SIP/2.0/UDP [::1",
        b"SIP/2.0/UDP [host]",
        b"SIP/2.0/UDP host junk",
    ],
)
def test_bad_via_raises(value):
    with pytest.raises(ParseError, match="Bad Via"):
        parse_via(value)


# -- validation -----------------------------------------------------------------------------


def test_well_formed_request_and_response_validate():
    parse_message(request()).validate_request()
    parse_message(request(method="ACK")).validate_request()
    parse_message(response()).validate_response()


@pytest.mark.parametrize("missing", ["Via", "To", "From", "Call-ID", "CSeq"])
def test_request_missing_a_mandatory_header_is_refused(missing):
    lines = request().split(b"\r\n")
    data = b"\r\n".join(
        line for line in lines if not line.startswith(missing.encode() + b":")
    )
    with pytest.raises(ParseError, match=f"Missing {missing}"):
        parse_message(data).validate_request()
    with pytest.raises(ParseError, match=f"Missing {missing}"):
        parse_message(
            response().replace(missing.encode() + b":", b"X-Gone:")
        ).validate_response()


def test_rfc2543_request_without_max_forwards_branch_or_tag_validates():
    data = sip(
        "INVITE sip:UserB@example.com SIP/2.0",
        "Via: SIP/2.0/UDP iftgw.example.com",
        "From: <sip:+13035551111@ift.client.example.net;user=phone>",
        "To: sip:+16505552222@ss1.example.net;user=phone",
        "Call-ID: inv2543.1717@ift.client.example.com",
        "CSeq: 56 INVITE",
    )
    msg = parse_message(data)
    msg.validate_request()
    assert msg.max_forwards is None
    assert msg.from_tag is None
    assert msg.top_via.branch is None


@pytest.mark.parametrize(
    "extra,reason",
    [
        (("Call-ID: second",), "Multiple Call-ID"),
        (("f: <sip:x@y>;tag=2",), "Multiple From"),
        (("t: <sip:x@y>",), "Multiple To"),
        (("CSeq: 1 INVITE",), "Multiple CSeq"),
        (("Max-Forwards: 5",), "Multiple Max-Forwards"),
    ],
)
def test_repeated_single_value_headers_are_refused(extra, reason):
    with pytest.raises(ParseError, match=reason):
        parse_message(request(*extra)).validate_request()


@pytest.mark.parametrize(
    "old,new,reason",
    [
        (b"Max-Forwards: 70", b"Max-Forwards: 256", "Bad Max-Forwards"),
        (b"Max-Forwards: 70", b"Max-Forwards: x", "Bad Max-Forwards"),
        (b"CSeq: 314159 INVITE", b"CSeq: 314159 OPTIONS", "CSeq method mismatch"),
        (b"CSeq: 314159 INVITE", b"CSeq: 314159", "Bad CSeq"),
        (
            b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
            b"Call-ID: a b",
            "Bad Call-ID",
        ),
        (
            b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
            b"Call-ID:",
            "Bad Call-ID",
        ),
        (
            b"To: Bob <sip:bob@biloxi.example.com>",
            b'To: "Bob <sip:bob@biloxi.example.com>',
            "Bad To",
        ),
        (b"From: Alice <", b"From: Alice, Cooper <", "Bad From"),
        (b";branch=z9hG4bK776asdhds", b";;branch=z9hG4bK776asdhds", "Bad Via"),
        (
            b"sip:bob@biloxi.example.com SIP",
            b"<sip:bob@biloxi.example.com> SIP",
            "Bad Request-URI",
        ),
        (
            b"sip:bob@biloxi.example.com SIP",
            b"sip:bob@biloxi.example.com?Route=x SIP",
            "Bad Request-URI",
        ),
    ],
)
def test_malformed_request_fields_are_refused_with_400(old, new, reason):
    data = request()
    assert old in data
    with pytest.raises(ParseError, match=reason) as info:
        parse_message(data.replace(old, new, 1)).validate_request()
    assert info.value.status == 400


def test_contact_must_be_well_formed_unless_it_is_a_star():
    parse_message(request("Contact: *", method="REGISTER")).validate_request()
    with pytest.raises(ParseError, match="Bad Contact"):
        parse_message(
            request("Contact: sip:a@b?Route=x", method="REGISTER")
        ).validate_request()


def test_unknown_request_uri_scheme_is_416_and_tel_is_accepted():
    data = request()
    with pytest.raises(ParseError) as info:
        parse_message(
            data.replace(b"sip:bob@biloxi.example.com SIP", b"http://x.example SIP", 1)
        ).validate_request()
    assert info.value.status == 416
    parse_message(
        data.replace(b"sip:bob@biloxi.example.com SIP", b"tel:+15551234 SIP", 1)
    ).validate_request()


def test_cseq_mismatch_on_an_unknown_method_is_501():
    # RFC 4475 §3.1.2.18 prefers 501 at proxies.
    data = request().replace(b"INVITE sip:", b"NEWMETHOD sip:", 1)
    with pytest.raises(ParseError) as info:
        parse_message(data).validate_request()
    assert info.value.status == 501


def test_response_with_malformed_cseq_or_via_is_refused():
    with pytest.raises(ParseError, match="Bad CSeq"):
        parse_message(
            response().replace(b"CSeq: 314159", b"CSeq: 9292394834772304023312")
        ).validate_response()
    with pytest.raises(ParseError, match="Bad Via"):
        parse_message(
            response().replace(b"SIP/2.0/UDP", b"SIP/2.0/UDP;")
        ).validate_response()


def test_validating_the_wrong_kind_of_message_raises():
    with pytest.raises(ParseError):
        parse_message(response()).validate_request()
    with pytest.raises(ParseError):
        parse_message(request()).validate_response()


NAME_ADDRS = [
    b"sipp <sip:sipp@127.0.0.1:5061>;tag=123Uac4",
    b'"Alice Caller" <sip:alice@atlanta.example.com>;tag=1928301774',
    b"<sip:bob@biloxi.example.com>",
    b"Bob Two <sip:bob@biloxi.example.com;transport=tcp>;tag=a;TAG=b",
    b"<sip:a@b>;tag",
    b"<sip:a@b>;tag=",
    b"<sip:a@b>;xtag=1;tag=2",
    b'"A\\"B" <sip:a@b>;tag=q',
    b'"unterminated <sip:a@b>',
    b"Alice, Cooper <sip:a@b>",
    b"<sip:a b>",
    b"< sip:a@b>",
    b"sip:a@b;tag=1",
    b"sip:a@b?x=y",
    b"sip:sipp@127.0.0.1:5061",
    b"sip:sipp@127.0.0.1:5061;tag=1;expires=60",
    b"sip:a@b;tag=1;tag=2",
    b"sip:a,b@c",
    b"sip:a@b>",
    b"sip:a@b ;tag=1",
    b"sips:[2001:db8::1]:5061;transport=tls",
    b"tel:+1-212-555-0101;tag=z",
    b"<sip:a@b>;;tag=1",
    b"<sip:a@b>;tag=1 ;x",
    b"<tel:+123>;tag=9",
    b"<urn:service:sos>",
    b"Al\xc3\xa9 <sip:a@b>;tag=\xc3\xa9",
    b"<sip:a@b>>",
    b"<>",
]


@pytest.mark.parametrize("value", NAME_ADDRS)
def test_fast_name_addr_check_agrees_with_the_full_parser(value):
    # The From/To/Contact check first tries a regex of the common shape; what it lets
    # through must be what parse_name_addr accepts, with the same tag.
    from gdispatch.sip.message import _NAME_ADDR_FAST
    from gdispatch.sip.uri import parse_name_addr

    data = request().replace(
        b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774", b"From: " + value
    )
    assert b"From: " + value in data
    try:
        full = parse_name_addr(value)
    except ParseError:
        full = None
    if _NAME_ADDR_FAST.match(value) is not None:
        assert full is not None, value
    msg = parse_message(data)
    if full is None:
        with pytest.raises(ParseError, match="Bad From"):
            msg.validate_request()
    else:
        msg.validate_request()
        tag = full.params.get("tag")
        assert msg.from_tag == (None if tag is None else tag.encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize("ruri,sips", [("sips:bob@example.com", True), ("SIPS:bob@example.com", True),
                                       ("sip:bob@example.com;transport=tls", False), ("tel:+15551234", False)])
def test_a_sips_request_uri_is_told_whatever_its_case(ruri, sips):
    assert parse_message(sipmsg.request("INVITE", ruri)).sips is sips
