"""URIs and name-addr values (gdispatch/sip/uri.py)."""

import pytest

from gdispatch.sip import ParseError, format_hostport, parse_name_addr, parse_uri


def test_full_sip_uri_splits_into_its_parts():
    uri = parse_uri(
        b"sip:alice:secret@Atlanta.Example.COM:5070;transport=TCP;lr?subject=hi"
    )
    assert uri.scheme == "sip"
    assert uri.user == "alice"
    assert uri.password == "secret"
    assert uri.host == "atlanta.example.com"
    assert uri.port == 5070
    assert uri.params == {"transport": "TCP", "lr": None}
    assert uri.headers == "subject=hi"
    assert uri.transport == "tcp"
    assert (
        uri.raw
        == b"sip:alice:secret@Atlanta.Example.COM:5070;transport=TCP;lr?subject=hi"
    )


def test_minimal_uri_has_no_optional_parts():
    uri = parse_uri("SIP:example.com")
    assert uri.scheme == "sip"
    assert (uri.user, uri.password, uri.port, uri.headers) == (None, None, None, None)
    assert uri.params == {}
    assert uri.transport == "udp"
    assert uri.hostport() == "example.com"
    assert uri.raw == b"SIP:example.com"


def test_sips_defaults_to_tls_and_an_explicit_transport_wins():
    assert parse_uri("sips:bob@example.com").transport == "tls"
    assert parse_uri("sips:bob@example.com;transport=ws").transport == "ws"


def test_ipv6_host_loses_its_brackets_and_hostport_puts_them_back():
    uri = parse_uri(b"sip:[2001:DB8::1]:5060;lr")
    assert uri.host == "2001:db8::1"
    assert uri.port == 5060
    assert uri.is_ipv6
    assert uri.hostport() == "[2001:db8::1]:5060"
    no_port = parse_uri(b"sip:user@[::1]")
    assert no_port.host == "::1"
    assert no_port.port is None
    assert no_port.hostport() == "[::1]"
    assert not parse_uri("sip:10.0.0.1").is_ipv6


def test_user_part_may_hold_semicolons_question_marks_and_commas():
    # RFC 4475 §3.1.1.9 (semiuri) and §3.1.1.2 (intmeth).
    assert (
        parse_uri("sip:user;par=u%40example.net@example.com").user
        == "user;par=u%40example.net"
    )
    uri = parse_uri(
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird@example.com"
    )
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird"
    assert uri.host == "example.com"


def test_escapes_are_kept_as_written():
    uri = parse_uri(b"sip:%75se%72@example.com;n%61me=v%61lue")
    assert uri.user == "%75se%72"
    assert uri.params == {"n%61me": "v%61lue"}


def test_tel_uri_keeps_the_number_as_user():
    uri = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert uri.scheme == "tel"
    assert uri.user == "+1-201-555-0123"
    assert uri.host == ""
    assert uri.params == {"phone-context": "example.com"}


@pytest.mark.parametrize(
    "value",
    [
        "nobodyKnowsThisScheme:totallyopaquecontent",
        "soap.beep://192.0.2.103:3002",
        "isbn:2983792873",
    ],
)
def test_other_schemes_are_opaque(value):
    uri = parse_uri(value)
    assert uri.scheme == value.split(":")[0].lower()
    assert uri.opaque == value.split(":", 1)[1]
    assert uri.host == ""
    assert uri.user is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "example.com",
        ":nothing",
        "<sip:user@example.com>",
        "sip:user@example.com; lr",
        "sip:",
        "sip:user@",
        "sip:@example.com",
        "sip:[::1",
        "sip:[::1]5060",
        "sip:[example.com]",
        "sip:example.com:",
        "sip:example.com:port",
        "sip:example.com:65536",
        "sip:example.com:123456",
        "sip:example.com;;lr",
        "sip:exa mple.com",
        "1sip:example.com",
        "tel:",
        "http:",
        "mailto:a b@example.com",
    ],
)
def test_garbage_uris_raise(value):
    with pytest.raises(ParseError) as info:
        parse_uri(value)
    assert info.value.status == 400


def test_format_hostport_brackets_ipv6_only():
    assert format_hostport("::1", 5060) == "[::1]:5060"
    assert format_hostport("::1", None) == "[::1]"
    assert format_hostport("[::1]", 5060) == "[::1]:5060"
    assert format_hostport("example.com", None) == "example.com"
    assert format_hostport("192.0.2.1", 5061) == "192.0.2.1:5061"


def test_name_addr_with_quoted_display_name():
    na = parse_name_addr(
        b'"Alice \\"A\\" Smith" <sip:alice@example.com;lr>;tag=1234;x="a;b"'
    )
    assert na.display == b'Alice \\"A\\" Smith'
    assert na.uri_raw == b"sip:alice@example.com;lr"
    assert na.uri.params == {"lr": None}
    assert na.params == {"tag": "1234", "x": '"a;b"'}
    assert na.tag == "1234"


def test_name_addr_with_unquoted_display_name_and_no_space_before_bracket():
    # RFC 4475 §3.1.1.6 (lwsdisp): accepted although RFC 3261's grammar wants LWS.
    na = parse_name_addr(b"caller<sip:caller@example.com>;tag=323")
    assert na.display == b"caller"
    assert na.tag == "323"
    assert parse_name_addr(b"Big  Bob <sip:b@example.com>").display == b"Big Bob"


def test_addr_spec_parameters_belong_to_the_header():
    # RFC 3261 §20.10; RFC 4475 §3.3.12 (cparam01) and §3.3.13 (cparam02).
    bare = parse_name_addr(b"sip:+19725552222@gw1.example.net;unknownparam")
    assert bare.params == {"unknownparam": None}
    assert bare.uri.params == {}
    bracketed = parse_name_addr(b"<sip:+19725552222@gw1.example.net;unknownparam>")
    assert bracketed.params == {}
    assert bracketed.uri.params == {"unknownparam": None}


def test_name_addr_tolerates_lws_around_parameters():
    na = parse_name_addr(b"sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n")
    assert na.uri_raw == b"sip:vivekg@chair-dnrc.example.com"
    assert na.tag == "1918181833n"


def test_name_addr_keeps_raw_and_parses_uri_lazily():
    na = parse_name_addr(b"  <nobody:thing>  ")
    assert na.raw == b"  <nobody:thing>  "
    assert na.display is None
    assert na.uri.scheme == "nobody"


def test_name_addr_with_garbage_uri_fails_only_when_the_uri_is_read():
    na = parse_name_addr(b"<sip:[bad>")
    with pytest.raises(ParseError):
        _ = na.uri


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b'"Mr. J. User <sip:j.user@example.com>',  # RFC 4475 quotbal
        b"Bell, Alexander <sip:a.g.bell@example.com>;tag=43",  # RFC 4475 baddn
        b'"Watson, Thomas" < sip:t.watson@example.org >',  # RFC 4475 badaspec
        b"sip:user@example.com?Route=%3Csip:sip.example.com%3E",  # RFC 4475 regbadct
        b'"Joe" <sip:joe@example.org>;;;;',  # RFC 4475 badinv01
        b"<sip:joe@example.org",
        b"sip:joe@example.org>",
        b'"Joe" sip:joe@example.org',
        b"<sip:a@b>;tag=",
        b"<sip:a@b> junk",
        b"<>",
    ],
)
def test_malformed_name_addr_raises(value):
    with pytest.raises(ParseError):
        parse_name_addr(value)


@pytest.mark.parametrize("text,port", [
    ("sip:a@example.com", 5060), ("sip:a@example.com;transport=tcp", 5060),
    ("sip:a@example.com;transport=TLS", 5061), ("sips:a@example.com", 5061), ("sips:a@example.com:5071", 5071),
])
def test_a_uri_without_port_has_its_transport_s_default_port(text, port):
    assert parse_uri(text).port_or_default == port
