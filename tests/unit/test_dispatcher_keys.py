"""What the hash algorithms hash: URI keys, the Digest username, hash templates."""

import pytest

from gdispatch.dispatcher.keys import TemplateError, auth_username, compile_template, uri_keys
from gdispatch.sip import parse_message, parse_uri
from tests.support import sipmsg


def request(*headers, ruri="sip:bob@biloxi.example.com", from_uri="sip:alice@atlanta.example.com"):
    return parse_message(sipmsg.request("INVITE", ruri, vias="SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1", max_forwards=None,
                                        from_=f"<{from_uri}>", from_tag="1", to="<sip:bob@biloxi.example.com>",
                                        call_id="c1", headers=headers, content_length=None))


@pytest.mark.parametrize("uri,keys", [
    ("sip:alice@example.com", (b"alice", b"example.com")),
    ("sip:alice@Example.COM:5060", (b"alice", b"Example.COM")),  # case kept, default port left out
    ("sip:alice@example.com:5070;transport=tcp", (b"alice", b"example.com:5070")),
    ("sips:alice@example.com:5061", (b"alice", b"example.com")),
    ("sips:alice@example.com:5060", (b"alice", b"example.com:5060")),
    ("sip:alice:pw@[2001:db8::1]:5060", (b"alice", b"[2001:db8::1]")),
    ("sip:[2001:db8::1]:5080", (b"", b"[2001:db8::1]:5080")),
    ("sip:example.com?subject=x", (b"", b"example.com")),
    ("SIP:%61lice@example.com", (b"%61lice", b"example.com")),  # escapes hashed as written
    ("tel:+4930123;phone-context=x", (b"+4930123", b"")),
])
def test_uri_keys(uri, keys):
    assert uri_keys(uri.encode()) == keys
    if uri.startswith(("sip", "SIP")):
        assert uri_keys(parse_uri(uri)) == keys
    assert uri_keys(uri.encode(), user_only=True) == (keys[0], b"")


@pytest.mark.parametrize("headers,user", [
    ((), None),
    (('Authorization: Digest username="bob", realm="r"',), b"bob"),
    (('Authorization: digest realm="r",username="b\\"o\\\\b"',), b'b"o\\b'),
    (("Authorization: Digest realm=r, username=carol@example.com",), b"carol"),
    (('Proxy-Authorization: Digest username="alice"', 'Authorization: Digest username="bob"'), b"alice"),
    (('Authorization: Digest username="bob"', 'Proxy-Authorization: Digest username="alice"'), b"alice"),
    (('Proxy-Authorization: Digest realm="r"', 'Authorization: Digest username="bob"'), b"bob"),
    (('Authorization: Basic Ym9iOng=',), None),
    (('Authorization: Digest username=""',), None),
    (('Authorization: Digest myusername="x"',), None),
])
def test_auth_username(headers, user):
    assert auth_username(request(*headers)) == user


def test_template_variables_read_the_request_as_written():
    msg = request("X-Account: 42", ruri="sip:+4930@gw.example.com:5070;user=phone",
                  from_uri="sip:Alice@[2001:db8::1]")
    assert compile_template("$rU|$rd|$fU|$fd|$ci|$hdr(X-ACCOUNT)").expand(msg) == (
        b"+4930|gw.example.com|Alice|[2001:db8::1]|c1|42")
    # Absent values expand to nothing; the result is trimmed.
    assert compile_template(" $hdr(X-None) $tU ").expand(msg) == b"bob"
    assert compile_template("$hdr(X-None)").expand(msg) == b""
    assert compile_template("$fU").expand(request(from_uri="")) == b""  # unparseable From


def test_template_errors_name_the_variable():
    with pytest.raises(TemplateError) as e:
        compile_template("$fU@$cid")
    assert "unknown variable $cid" in str(e.value) and "$ci, $fu" in str(e.value)
    assert compile_template("$fU@$ci").source == "$fU@$ci"
