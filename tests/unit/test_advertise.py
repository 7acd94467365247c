"""`[server] advertise`: the shared address a pair of nodes moves between them is what our
Via and Record-Route name (RFC 3261 §16.6 steps 4 and 8), and a Route naming it is ours
(§16.4), on either node (gdispatch.proxy.identity)."""

from __future__ import annotations

import pytest

from gdispatch.config import Listen, from_dict
from gdispatch.proxy.identity import Identity, advertised, parse_advertise
from gdispatch.recordroute import Keyring
from gdispatch.sip import parse_name_addr


class FakeListener:
    def __init__(self, listen: Listen, public: FakeListener | None = None):
        self.listen = listen
        self.transport = listen.transport
        self.public = public or self
        self.private: FakeListener | None = None


def node(host: str, advertise: str, workers: bool = False) -> tuple[Identity, list[FakeListener]]:
    udp = FakeListener(Listen("udp", host, 5060))
    tcp = FakeListener(Listen("tcp", host, 5060))
    v6 = FakeListener(Listen("udp", "::1", 5070))
    if workers:
        udp.private = FakeListener(Listen("udp", host, 40001), public=udp)
    listeners = [udp, tcp, v6]
    return Identity((), listeners, advertise), listeners


def test_parse_advertise():
    assert parse_advertise("192.0.2.10") == ("192.0.2.10", None)
    assert parse_advertise("192.0.2.10:5080") == ("192.0.2.10", 5080)
    assert parse_advertise("[2001:db8::10]:5080") == ("2001:db8::10", 5080)
    assert parse_advertise("[2001:db8::10]") == ("2001:db8::10", None)
    assert parse_advertise("sip.example.com") == ("sip.example.com", None)


def test_an_address_applies_to_its_own_family_a_name_to_all():
    v4, v6 = Listen("udp", "10.0.0.1", 5060), Listen("udp", "::1", 5070)
    assert advertised("192.0.2.10", v4) == ("192.0.2.10", 5060)
    assert advertised("192.0.2.10", v6) is None
    assert advertised("[2001:db8::10]:5090", v6) == ("2001:db8::10", 5090)
    assert advertised("sip.example.com", v6) == ("sip.example.com", 5070)
    assert advertised("", v4) is None


def test_via_and_record_route_name_the_advertised_address():
    ident, (udp, tcp, v6) = node("10.0.0.1", "192.0.2.10")
    assert ident.via_for(udp, "z9hG4bKx") == b"SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKx"
    assert ident.via_for(tcp, "z9hG4bKx") == b"SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bKx"
    assert ident.rr_prefix(udp) == b"<sip:192.0.2.10:5060;lr;gds="
    assert ident.rr_prefix(tcp) == b"<sip:192.0.2.10:5060;transport=tcp;lr;gds="
    # An IPv6 socket is not named by an IPv4 shared address.
    assert ident.via_for(v6, "z9hG4bKx") == b"SIP/2.0/UDP [::1]:5070;branch=z9hG4bKx"


def test_without_advertise_the_listen_address():
    ident, (udp, _, _) = node("10.0.0.1", "")
    assert ident.via_for(udp, "b") == b"SIP/2.0/UDP 10.0.0.1:5060;branch=b"
    assert ident.rr_prefix(udp) == b"<sip:10.0.0.1:5060;lr;gds="


def test_a_worker_keeps_its_own_port_under_the_advertised_host():
    ident, (udp, _, _) = node("10.0.0.1", "192.0.2.10", workers=True)
    assert udp.private is not None
    assert ident.via_for(udp.private, "b") == b"SIP/2.0/UDP 192.0.2.10:40001;branch=b"
    assert ident.rr_prefix(udp.private) == b"<sip:192.0.2.10:5060;lr;gds="
    assert ("192.0.2.10", 40001) in ident.local_hostports


def test_the_other_nodes_record_route_is_ours():
    """Node B (10.0.0.2) recognises the entry node A (10.0.0.1) wrote, by its bytes and
    parsed, and leaves from its own matching socket."""
    a, (a_udp, a_tcp, _) = node("10.0.0.1", "192.0.2.10")
    b, (b_udp, b_tcp, _) = node("10.0.0.2", "192.0.2.10")
    token = Keyring.ephemeral().token(b"c", b"t", b"")
    for a_lst, b_lst in ((a_udp, b_udp), (a_tcp, b_tcp)):
        value = a.rr_prefix(a_lst) + token + b">"
        assert b.route_entry(value) == (True, token)
        assert b.socket_of(value) == b_lst.listen
        # Written otherwise (parameters reordered), it is parsed: still ours.
        other = value.replace(b";lr;", b";foo=1;lr;")
        assert b.route_entry(other) == (True, token)
        assert b.socket_of(other) == b_lst.listen
    assert b.is_local_uri(parse_name_addr(b"<sip:192.0.2.10:5060>").uri)
    assert not b.is_local_uri(parse_name_addr(b"<sip:192.0.2.10:5061>").uri)
    # Its own listen address stays ours (dialogs from before advertise was set).
    assert b.is_local_uri(parse_name_addr(b"<sip:10.0.0.2:5060>").uri)
    assert b.socket_of(b"<sip:10.0.0.2:5060;transport=tcp;lr>") == b_tcp.listen


def test_a_loop_through_the_other_node_is_seen():
    """A request that left node A comes back to node B: the Via naming the shared address
    with this request's hash is ours (RFC 3261 §16.3 step 4)."""
    from gdispatch.proxy.identity import loop_hash
    from gdispatch.sip import parse_message

    a, (a_udp, _, _) = node("10.0.0.1", "192.0.2.10")
    b, _ = node("10.0.0.2", "192.0.2.10")
    raw = (b"OPTIONS sip:x@198.51.100.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKc\r\n"
           b"From: <sip:c@198.51.100.9>;tag=1\r\nTo: <sip:x@198.51.100.1>\r\nCall-ID: l1\r\n"
           b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    msg = parse_message(raw)
    via = a.via_for(a_udp, a.new_branch_id(loop_hash(msg)))
    looped = parse_message(raw.replace(b"Via: ", b"Via: " + via + b"\r\nVia: ", 1))
    assert b.is_loop(looped)


@pytest.mark.parametrize("text", ["192.0.2.10", "192.0.2.10:5080", "[2001:db8::1]:5080", "sip.example.com"])
def test_config_accepts(text):
    assert from_dict({"server": {"advertise": text}}).advertise == text
