"""RFC 4475 torture messages (tests/data/rfc4475) against the SIP message layer.

Each file has the outcome RFC 4475 §3 asks of a proxy's parser:

- VALID: parse_message and validate_request/validate_response accept it.
- PARSE: parse_message raises ParseError with the given status.
- REFUSE: parse_message accepts it, validation raises ParseError with the given status.
- PROXY: it parses and validates; answering it is a proxy, transaction or UAS decision
  made above this layer (the note names it), so here we check the fields that decision
  reads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gdispatch.sip import ParseError, SipMessage, parse_message, parse_name_addr

DATA = Path(__file__).resolve().parent.parent / "data" / "rfc4475"

VALID, PARSE, REFUSE, PROXY = "valid", "parse", "refuse", "proxy"

# file: (RFC 4475 section, outcome, status, note)
EXPECTED: dict[str, tuple[str, str, int | None, str]] = {
    # §3.1.1 valid messages
    "wsinv": ("3.1.1.1", VALID, None, "short tortuous INVITE"),
    "intmeth": ("3.1.1.2", VALID, None, "wide range of valid characters"),
    "esc01": ("3.1.1.3", VALID, None, "valid use of % escaping"),
    "escnull": ("3.1.1.4", VALID, None, "escaped NULs in URIs"),
    "esc02": ("3.1.1.5", VALID, None, "% that is not an escape"),
    "lwsdisp": ("3.1.1.6", VALID, None, "no LWS between display name and <"),
    "longreq": ("3.1.1.7", VALID, None, "long values in header fields"),
    "dblreq": ("3.1.1.8", VALID, None, "extra trailing octets in a UDP datagram"),
    "semiuri": ("3.1.1.9", VALID, None, "semicolons in the URI user part"),
    "transports": ("3.1.1.10", VALID, None, "varied and unknown transports"),
    "mpart01": ("3.1.1.11", VALID, None, "multipart MIME body"),
    "unreason": ("3.1.1.12", VALID, None, "unusual reason phrase"),
    "noreason": ("3.1.1.13", VALID, None, "empty reason phrase"),
    # §3.1.2 invalid messages
    "badinv01": ("3.1.2.1", REFUSE, 400, "extraneous separators in Via"),
    "clerr": ("3.1.2.2", PARSE, 400, "Content-Length larger than the datagram's body"),
    "ncl": ("3.1.2.3", PARSE, 400, "negative Content-Length"),
    "scalar02": ("3.1.2.4", REFUSE, 400, "overlarge CSeq (and Max-Forwards)"),
    "scalarlg": (
        "3.1.2.5",
        REFUSE,
        400,
        "overlarge scalar fields in a response: dropped",
    ),
    "quotbal": ("3.1.2.6", REFUSE, 400, "unterminated quoted display name"),
    "ltgtruri": ("3.1.2.7", REFUSE, 400, "<> around the Request-URI"),
    "lwsruri": ("3.1.2.8", PARSE, 400, "LWS inside the Request-URI"),
    "lwsstart": ("3.1.2.9", PARSE, 400, "several SPs between Request-Line elements"),
    "trws": ("3.1.2.10", PARSE, 400, "SP at the end of the Request-Line"),
    "escruri": ("3.1.2.11", REFUSE, 400, "escaped headers in the Request-URI"),
    # RFC 4475 §3.1.2.12: an element "shouldn't" reject a bad Date unless it uses it; a
    # proxy does not, so it forwards the request untouched.
    "baddate": ("3.1.2.12", VALID, None, "non-GMT Date, ignored by a proxy"),
    "regbadct": ("3.1.2.13", REFUSE, 400, "Contact URI with headers outside <>"),
    "badaspec": ("3.1.2.14", REFUSE, 400, "spaces inside <> in To"),
    "baddn": (
        "3.1.2.15",
        REFUSE,
        400,
        "unquoted display names with non-token characters",
    ),
    "badvers": ("3.1.2.16", REFUSE, 505, "SIP/7.0"),
    "mismatch01": (
        "3.1.2.17",
        REFUSE,
        400,
        "CSeq method differs from the start line's",
    ),
    "mismatch02": ("3.1.2.18", REFUSE, 501, "unknown method, CSeq method differs"),
    "bigcode": ("3.1.2.19", PARSE, 400, "response code beyond 699: dropped"),
    # §3.2 transaction layer semantics
    "badbranch": (
        "3.2.1",
        PROXY,
        None,
        "branch is the bare magic cookie: 400, or RFC 2543 transaction matching",
    ),
    # §3.3 application layer semantics
    "insuf": ("3.3.1", REFUSE, 400, "no Call-ID, From or To"),
    "unkscm": ("3.3.2", REFUSE, 416, "unknown Request-URI scheme"),
    "novelsc": ("3.3.3", REFUSE, 416, "registered scheme a proxy never routes"),
    "unksm2": ("3.3.4", VALID, None, "unknown schemes in To, From and Contact"),
    "bext01": (
        "3.3.5",
        PROXY,
        None,
        "Proxy-Require names an unknown option: the proxy answers 420 (RFC 3261 §16.3 step 5)",
    ),
    "invut": (
        "3.3.6",
        PROXY,
        None,
        "unknown Content-Type: forwarded; 415 is the UAS's answer",
    ),
    "regaut01": (
        "3.3.7",
        PROXY,
        None,
        "unknown Authorization scheme: forwarded; 401 is the registrar's answer",
    ),
    "multi01": ("3.3.8", REFUSE, 400, "several values in single-value headers"),
    "mcl01": ("3.3.9", PARSE, 400, "conflicting Content-Length values"),
    "bcast": (
        "3.3.10",
        PROXY,
        None,
        "200 OK whose next Via is 255.255.255.255: the proxy must not send the response there",
    ),
    "zeromf": (
        "3.3.11",
        PROXY,
        None,
        "Max-Forwards: 0: the proxy answers 483 (RFC 3261 §16.3 step 3)",
    ),
    "cparam01": ("3.3.12", VALID, None, "addr-spec Contact with a header parameter"),
    "cparam02": ("3.3.13", VALID, None, "name-addr Contact with a URI parameter"),
    "regescrt": (
        "3.3.14",
        PROXY,
        None,
        "escaped Route header in a Contact URI: forwarded; the registrar decides",
    ),
    "sdp01": (
        "3.3.15",
        PROXY,
        None,
        "unacceptable Accept: forwarded; 406 is the UAS's answer",
    ),
    # §3.4 backward compatibility
    "inv2543": (
        "3.4.1",
        VALID,
        None,
        "RFC 2543 INVITE: no branch, no From tag, no Content-Length, no Max-Forwards",
    ),
    # Not in RFC 4475 §3: shipped with the Appendix A archive. No SIP-Version in the
    # Request-Line and a header line without a colon.
    "test": ("-", PARSE, 400, "malformed: no SIP-Version, header line without a colon"),
}


def load(name: str) -> bytes:
    return (DATA / f"{name}.dat").read_bytes()


def validate(msg: SipMessage) -> None:
    if msg.is_request:
        msg.validate_request()
    else:
        msg.validate_response()


def test_files_match_their_pinned_checksums():
    listed = {}
    for line in (DATA / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        listed[name] = digest
    on_disk = {path.name for path in DATA.glob("*.dat")}
    assert set(listed) == on_disk
    for name, digest in listed.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


def test_every_file_has_an_expected_outcome():
    assert {path.stem for path in DATA.glob("*.dat")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rfc4475_message(name):
    _section, outcome, status, note = EXPECTED[name]
    data = load(name)
    if outcome == PARSE:
        with pytest.raises(ParseError) as info:
            parse_message(data)
        assert info.value.status == status, note
        return
    msg = parse_message(data)
    if outcome == REFUSE:
        with pytest.raises(ParseError) as info:
            validate(msg)
        assert info.value.status == status, note
        return
    validate(msg)
    # What every later layer reads must be there and readable.
    assert msg.top_via.host
    assert msg.call_id
    assert msg.cseq[1] == msg.method
    assert msg.from_tag is None or msg.from_tag
    assert msg.to_tag is None or msg.to_tag


def test_wsinv_reads_through_folds_and_white_space():
    msg = parse_message(load("wsinv"))
    assert msg.max_forwards == 68
    assert msg.cseq == (9, "INVITE")
    assert msg.to_tag == b"1918181833n"
    assert msg.from_tag == b"98asjd8"
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.get("subject") == b""
    assert msg.get("newfangledheader") == b"newfangled value continued newfangled value"
    assert msg.get("unknownheaderwithunusualvalue") == b";;,,;;,;"
    assert msg.routes[0].uri.params == {
        "lr": None,
        "unknownwith": "value",
        "unknown-no-value": None,
    }
    assert len(msg.body) == 150


def test_intmeth_keeps_unusual_characters_as_written():
    msg = parse_message(load("intmeth"))
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.cseq[1] == msg.method
    assert msg.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.call_id == b"intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.to_addr.display == b"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"
    assert msg.from_tag == b"_token~1'+`*%!-."
    assert msg.get("extensionheader-!.%*+_`'~") == "\ufeff大停電".encode()


def test_dblreq_ignores_the_second_request_in_the_datagram():
    data = load("dblreq")
    msg = parse_message(data)
    assert msg.method == "REGISTER"
    assert msg.body == b""
    assert msg.raw == data[: data.index(b"\r\n\r\n") + 4]


def test_esc02_header_name_with_percent_is_not_contact():
    msg = parse_message(load("esc02"))
    assert len(msg.get_all("contact")) == 2
    assert msg.get("C%6Fntact") == b"<sip:alias2@host2.example.com>"
    assert msg.method == "RE%47IST%45R"


def test_longreq_counts_every_via():
    msg = parse_message(load("longreq"))
    assert len(msg.vias) == 34
    assert msg.top_via.host == "sip33.example.com"
    assert msg.vias[-1].received == "192.0.2.5"


def test_mpart01_binary_body_is_framed_by_content_length():
    msg = parse_message(load("mpart01"))
    assert len(msg.body) == 553
    assert b"\x00" in msg.body
    assert msg.top_via.rport == ""


def test_reason_phrases_are_kept_as_bytes():
    assert parse_message(load("noreason")).reason == b""
    unreason = parse_message(load("unreason")).reason
    assert unreason.startswith(b"= 2**3 * 5**2 ")
    assert unreason.decode("utf-8").endswith("простое")


def test_contact_parameters_land_on_the_right_side():
    # §3.3.12: after an addr-spec, the parameter is the Contact's, not the URI's.
    (bare,) = parse_message(load("cparam01")).get_all("contact")
    assert parse_name_addr(bare).params == {"unknownparam": None}
    assert parse_name_addr(bare).uri.params == {}
    # §3.3.13: inside <>, it is the URI's.
    (bracketed,) = parse_message(load("cparam02")).get_all("contact")
    assert parse_name_addr(bracketed).params == {}
    assert parse_name_addr(bracketed).uri.params == {"unknownparam": None}


def test_proxy_level_cases_expose_what_the_proxy_decides_on():
    assert parse_message(load("zeromf")).max_forwards == 0
    assert parse_message(load("badbranch")).top_via.branch == "z9hG4bK"
    bext01 = parse_message(load("bext01"))
    assert bext01.get_all("proxy-require") == [
        b"noProxiesSupportThis",
        b"norDoAnyProxiesSupportThis",
    ]
    bcast = parse_message(load("bcast"))
    assert bcast.vias[1].host == "255.255.255.255"
