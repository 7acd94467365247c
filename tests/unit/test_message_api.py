"""The message API plugins see (gdispatch/message_api.py): RequestView reads, Attempt edits
and their checks, and what the proxy builds from them (with gdispatch.sip.forward_request)."""

from __future__ import annotations

import pytest

from gdispatch.dispatcher.listfile import parse_line
from gdispatch.message_api import Attempt, EditError, FailureAction, RequestView, RouteChoice, is_valid_user
from gdispatch.sip import forward_request, parse_message, parse_uri
from tests.support import sipmsg

SOURCE = ("udp", "192.0.2.7", 5062)


def request(ruri: str = "sip:0044123@example.com", *headers: str) -> bytes:
    """Some headers in their compact forms, some not."""
    return sipmsg.request("INVITE", ruri, vias="SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK-1",
                          from_="<sip:alice@example.org>", from_tag="a1", to="<sip:bob@example.com>",
                          call_id="call-1@example.org", headers=["Subject: first", "X-Carrier: a, b", *headers],
                          compact=["Via", "From", "Call-ID", "Content-Length"])


def attempt(ruri: str = "sip:0044123@example.com", *headers: str, attrs: str = "duid=gw1", number: int = 1):
    dest = parse_line(f"1 sip:127.0.0.1:5080 0 0 {attrs}", "test:1")
    return Attempt(parse_message(request(ruri, *headers)), dest, number, SOURCE)


def sent(a: Attempt) -> bytes:
    """What the proxy sends for this attempt (as Proxy._start_branch builds it)."""
    return forward_request(a._msg, via=b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.p1", ruri=a.new_ruri(),
                           max_forwards=69, add_headers=a.header_lines(), remove_headers=a.removed_headers())


# ------------------------------------------------------------------ reading

def test_request_view_reads_the_request_line_and_headers_in_any_form():
    v = RequestView(parse_message(request("sip:0044123@Example.COM:5070;user=phone")), SOURCE)
    assert v.method == "INVITE"
    assert v.ruri == "sip:0044123@Example.COM:5070;user=phone"
    assert (v.ruri_user, v.ruri_host, v.ruri_port) == ("0044123", "example.com", 5070)
    assert v.call_id == "call-1@example.org"
    assert v.header("call-id") == v.header("I") == "call-1@example.org"  # compact form, any case
    assert v.header("Via").startswith("SIP/2.0/UDP 192.0.2.7")
    assert v.header("X-Missing") is None
    assert v.headers("x-carrier") == ["a", "b"]
    assert v.source == SOURCE


def test_attempt_exposes_the_destination_and_its_attrs():
    a = attempt(attrs="duid=gold;Prefix=1001", number=2)
    assert a.attrs == {"duid": "gold", "prefix": "1001"}  # names lowercased
    assert a.destination.duid == "gold" and a.number == 2
    assert not a.edited and a.new_ruri() is None
    assert a.header_lines() == [] and a.removed_headers() == []


# ------------------------------------------------------------------ Request-URI user

@pytest.mark.parametrize("ruri, user, expected", [
    ("sip:0044123@example.com", "+44123", "sip:+44123@example.com"),
    # parameters and headers of the URI stay
    ("sip:0044123@example.com:5070;user=phone;transport=tcp?X-A=1",
     "011", "sip:011@example.com:5070;user=phone;transport=tcp?X-A=1"),
    # the password stays
    ("sip:alice:secret@example.com", "bob", "sip:bob:secret@example.com"),
    # IPv6 hosts, with and without port
    ("sip:0044123@[2001:db8::1]:5060;transport=udp", "99", "sip:99@[2001:db8::1]:5060;transport=udp"),
    ("sip:0044123@[2001:db8::1]", "99", "sip:99@[2001:db8::1]"),
    # no user yet: one is added
    ("sip:example.com;lr", "100", "sip:100@example.com;lr"),
    ("sips:0044123@example.com", "1", "sips:1@example.com"),
    # escapes and user-unreserved characters are allowed as they are
    ("sip:a@example.com", "%23123;phone-context=+44", "sip:%23123;phone-context=+44@example.com"),
])
def test_ruri_user_edit(ruri, user, expected):
    a = attempt(ruri)
    a.ruri_user = user
    assert a.ruri_user == user
    assert a.edited
    assert a.new_ruri() == expected.encode()
    assert parse_uri(a.new_ruri()).user == user  # it re-parses to what was asked


def test_ruri_user_none_removes_the_user_part():
    a = attempt("sip:alice:pw@example.com;lr")
    a.ruri_user = None
    assert a.ruri_user is None
    assert a.new_ruri() == b"sip:example.com;lr"


@pytest.mark.parametrize("bad", ["", "a b", "a:b", "a@b", "#31", "a\r\nX-Evil: 1", "a\n", "a\x00", "é"])
def test_ruri_user_refuses_what_a_uri_user_cannot_hold(bad):
    a = attempt()
    with pytest.raises(EditError):
        a.ruri_user = bad
    assert not a.edited and a.ruri_user == "0044123"


def test_ruri_user_refuses_non_strings():
    with pytest.raises(EditError, match="expected a string"):
        attempt().ruri_user = 44


def test_is_valid_user_is_what_the_setter_accepts():
    assert is_valid_user("+44-123.x") and is_valid_user("%23")
    assert not is_valid_user("") and not is_valid_user("a b") and not is_valid_user("#")


# ------------------------------------------------------------------ Request-URI host

@pytest.mark.parametrize("ruri, hostport, expected, host, port", [
    ("sip:0044123@example.com;user=phone", "gw1.example.net", "sip:0044123@gw1.example.net;user=phone",
     "gw1.example.net", None),
    ("sip:0044123@example.com:5070", "10.0.0.1:5080", "sip:0044123@10.0.0.1:5080", "10.0.0.1", 5080),
    ("sip:0044123@[2001:db8::1]:5060;lr", "[2001:DB8::2]:5070", "sip:0044123@[2001:DB8::2]:5070;lr",
     "2001:db8::2", 5070),
    ("sip:0044123@example.com", "[::1]", "sip:0044123@[::1]", "::1", None),
    ("sip:example.com?Subject=x", "gw", "sip:gw?Subject=x", "gw", None),
])
def test_ruri_host_edit(ruri, hostport, expected, host, port):
    a = attempt(ruri)
    a.ruri_host = hostport
    assert a.new_ruri() == expected.encode()
    # read back as RequestView gives it: lowercase, IPv6 without brackets, port apart
    assert (a.ruri_host, a.ruri_port) == (host, port)
    assert parse_uri(a.new_ruri()).host == host


@pytest.mark.parametrize("bad", ["", "::1", "a b", "host:99999", "host:", "[::1", "h;lr", "h\r\n", "h/x"])
def test_ruri_host_refuses_what_is_not_host_or_hostport(bad):
    a = attempt()
    with pytest.raises(EditError):
        a.ruri_host = bad
    assert not a.edited and a.ruri_host == "example.com"


def test_user_and_host_edits_together_and_a_user_holding_an_escaped_at():
    # RFC 4475 §3.1.1.2: the user part may hold ';' and an escaped '@'
    a = attempt("sip:user;par=u%40example.net@example.com")
    a.ruri_host = "gw.example.net"
    assert a.new_ruri() == b"sip:user;par=u%40example.net@gw.example.net"
    a.ruri_user = "0123"
    assert a.new_ruri() == b"sip:0123@gw.example.net"
    # '?' is a user-unreserved character (RFC 3261 §25.1): the host is after the '@'
    b = attempt("sip:a?b@example.com;lr")
    assert b.ruri_user == "a?b"
    b.ruri_host = "gw.example.net"
    assert b.new_ruri() == b"sip:a?b@gw.example.net;lr"


# ------------------------------------------------------------------ headers

def test_add_and_remove_headers_reach_the_message_sent():
    a = attempt("sip:0044123@example.com", "X-Orig-IP: 6.6.6.6")
    a.remove_header("x-orig-ip")
    a.remove_header("Subject")
    a.add_header("X-Orig-IP", "192.0.2.7")
    a.add_header("X-Empty", "")
    assert a.header_lines() == [b"X-Orig-IP: 192.0.2.7", b"X-Empty: "]
    out = parse_message(sent(a))
    assert out.get_all("x-orig-ip") == [b"192.0.2.7"]  # the caller's one is gone, ours is there
    assert out.get("subject") is None
    assert out.get("x-carrier") == b"a, b"  # untouched
    assert out.call_id == b"call-1@example.org"


def test_remove_header_takes_compact_forms_too():
    a = attempt("sip:x@example.com", "s: compact subject")
    a.remove_header("Subject")
    assert parse_message(sent(a)).get("subject") is None


@pytest.mark.parametrize("name", ["Via", "v", "Call-ID", "i", "CSeq", "From", "f", "To", "t", "Max-Forwards",
                                  "Route", "Record-Route", "Content-Length", "l", "CALL-ID"])
def test_protected_headers_can_be_neither_added_nor_removed(name):
    a = attempt()
    with pytest.raises(EditError, match="managed by the proxy"):
        a.add_header(name, "x")
    with pytest.raises(EditError, match="managed by the proxy"):
        a.remove_header(name)
    assert not a.edited


@pytest.mark.parametrize("name", ["", "X Bad", "X-Bad:", "X-Bad\r\n", "X-Bad\n", "Ä", None, 3])
def test_header_names_must_be_tokens(name):
    a = attempt()
    with pytest.raises(EditError):
        a.add_header(name, "x")
    with pytest.raises(EditError):
        a.remove_header(name)


@pytest.mark.parametrize("value", ["a\r\nVia: SIP/2.0/UDP evil", "a\nb", "a\rb", "a\x00", None, 7])
def test_header_values_refuse_cr_lf_nul_and_non_strings(value):
    a = attempt()
    with pytest.raises(EditError):
        a.add_header("X-Test", value)
    assert a.header_lines() == []


# ------------------------------------------------------------------ every attempt from the original

def test_each_attempt_starts_from_the_request_as_it_arrived():
    # kamailio#3388: an edit made for one destination must not be there for the next
    msg = parse_message(request("sip:0044123@example.com"))
    gold = parse_line("1 sip:127.0.0.1:5080 0 30 duid=gold;prefix=1001", "t:1")
    silver = parse_line("1 sip:127.0.0.1:5080 0 20 duid=silver;prefix=1002", "t:2")
    first = Attempt(msg, gold, 1, SOURCE)
    first.ruri_user = first.attrs["prefix"] + first.ruri_user
    first.add_header("X-Try", "1")
    second = Attempt(msg, silver, 2, SOURCE)
    assert second.ruri_user == "0044123" and not second.edited
    second.ruri_user = second.attrs["prefix"] + second.ruri_user
    assert first.new_ruri() == b"sip:10010044123@example.com"
    assert second.new_ruri() == b"sip:10020044123@example.com"
    assert second.header_lines() == []
    assert msg.ruri == b"sip:0044123@example.com"  # the request itself is never changed


# ------------------------------------------------------------------ answers of choose_route / after_failure

def test_route_choice_and_its_reply_form():
    c = RouteChoice(2, 8, limit=2, failover_codes=[503], mode="domain", name="x")
    assert (c.set, c.algorithm, c.limit, c.failover_codes, c.mode, c.reply_code) == (2, 8, 2, [503], "domain", 0)
    r = RouteChoice.reply(404, "Not Here")
    assert (r.reply_code, r.reply_reason) == (404, "Not Here")
    assert RouteChoice.reply(403).reply_reason == "Rejected"
    for bad in (200, 180, 700):
        with pytest.raises(EditError):
            RouteChoice.reply(bad)
    with pytest.raises(EditError):
        RouteChoice.reply(403, "a\r\nb")


def test_failure_actions():
    assert FailureAction.next().kind == "next"
    assert FailureAction.stop().kind == "stop"
    r = FailureAction.reply(486, "Busy Here")
    assert (r.kind, r.code, r.reason) == ("reply", 486, "Busy Here")
    s = FailureAction.switch(3, 8)
    assert (s.kind, s.set, s.algorithm) == ("switch", 3, 8)
    with pytest.raises(EditError):
        FailureAction.reply(200)
