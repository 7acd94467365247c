"""What the proxy writes and decides for TLS, on the fake transports (proxy_fakes): a
request leaving from a `tls:` listen address says so in its Via and Record-Route (RFC
3261 §18.2.1, §16.6 step 4), a SIPS Request-URI gets a SIPS Record-Route (§16.6 step 4)
that is recognised as ours when it comes back in a Route (§16.4) and names the TLS
socket; a call arriving over UDP and leaving over TLS is record-routed twice (RFC 5658
§4); a SIPS Request-URI is sent to TLS destinations only (RFC 3261 §26.2.2, RFC 5630);
the connection a destination needs is described by its TlsPeer (the URI's host, its
set, its `tls_profile` attr)."""

from __future__ import annotations

import pytest
from proxy_fakes import FakeProxy

from gdispatch.config import Config, Listen, Route
from gdispatch.net import TlsPeer
from gdispatch.sip import build_response, parse_message
from tests.support import sipmsg

UDP = Listen("udp", "127.0.0.1", 5060)
TCP = Listen("tcp", "127.0.0.1", 5060)
TLS = Listen("tls", "127.0.0.1", 5061)
CALLER = ("127.0.0.1", 6000)
GW = ("127.0.0.1", 5071)
GW_TLS = f"sip:{GW[0]}:{GW[1]};transport=tls"


def proxy(list_text: str, *listens: Listen, **config) -> FakeProxy:
    return FakeProxy(list_text, Config(listen=listens or (TLS,), **config))


def invite(n: int, ruri: str = "sip:service@127.0.0.1:5061", transport: str = "TLS") -> bytes:
    return sipmsg.request("INVITE", ruri, vias=f"SIP/2.0/{transport} 127.0.0.1:6000;branch=z9hG4bK-uac-{n};rport",
                          from_="<sip:caller@127.0.0.1>", from_tag=f"uac{n}", call_id=f"call-{n}@127.0.0.1",
                          contact=f"<sip:caller@127.0.0.1:6000;transport={transport.lower()}>")


def sent(fp: FakeProxy, method: str = "INVITE"):
    """The requests `method` the last message made the proxy send: [(socket, addr, SipMessage)]."""
    return [(lst, addr, parse_message(data)) for lst, addr, data in fp.transports.sockets
            if data.startswith(method.encode())]


def test_a_request_leaving_from_a_tls_socket_says_tls_in_via_and_record_route():
    fp = proxy(f"1 {GW_TLS} 0 0\n")
    fp.receive(invite(1), CALLER)
    [(listen, addr, msg)] = sent(fp)
    assert (listen, addr) == (TLS, GW)
    assert msg.vias[0].raw.startswith(b"SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK")
    [rr] = msg.values("record-route")
    assert rr.startswith(b"<sip:127.0.0.1:5061;transport=tls;lr;gds=") and rr.endswith(b">")
    assert fp.proxy.identity.socket_of(rr) == TLS


def test_a_sips_request_uri_gets_a_sips_record_route_recognised_as_ours_when_it_comes_back():
    fp = proxy(f"1 {GW_TLS} 0 0 tls_profile=carrier\n")
    fp.receive(invite(1, "sips:service@127.0.0.1:5061"), CALLER)
    [(listen, addr, msg)] = sent(fp)
    assert (listen, addr) == (TLS, GW)
    [rr] = msg.values("record-route")
    # sips: means TLS; RFC 5630 §3 deprecates ;transport=tls beside it.
    assert rr.startswith(b"<sips:127.0.0.1:5061;lr;gds=") and b"transport" not in rr
    identity = fp.proxy.identity
    token = rr[rr.rindex(b"=") + 1:-1]
    assert identity.route_entry(rr) == (True, token)
    assert identity.own_entries([rr, b"<sip:gw@127.0.0.1:5071;lr>"]) == (1, token, rr)
    assert identity.socket_of(rr) == TLS
    # The dialog's BYE, its Route the SIPS entry, leaves from the TLS socket without it.
    ok = build_response(msg, 200, "OK", to_tag="uas1",
                        headers=(b"Record-Route: " + rr, b"Contact: <sips:gw@127.0.0.1:5071>"))
    fp.receive(ok, GW)
    bye = sipmsg.request("BYE", "sips:gw@127.0.0.1:5071", routes=[rr.decode()], from_="<sip:caller@127.0.0.1>",
                         from_tag="uac1", to="<sips:service@127.0.0.1:5061>", to_tag="uas1",
                         call_id="call-1@127.0.0.1", cseq=2,
                         vias="SIP/2.0/TLS 127.0.0.1:6000;branch=z9hG4bK-bye-1;rport")
    fp.receive(bye, CALLER)
    [(listen, addr, fwd)] = sent(fp, "BYE")
    assert (listen, addr) == (TLS, GW) and fwd.values("route") == []
    # Should its connection be gone, the destination's own name and client profile
    # verify the connection the BYE opens.
    assert fp.transports.peers[-1] == TlsPeer("127.0.0.1", 1, "carrier")


def test_a_call_in_over_udp_and_out_over_tls_is_record_routed_twice():
    fp = proxy(f"1 {GW_TLS} 0 0\n", UDP, TLS)
    fp.receive(invite(1, "sip:service@127.0.0.1:5060", transport="UDP"), CALLER, at=0)
    [(listen, addr, msg)] = sent(fp)
    assert listen == TLS and msg.vias[0].raw.startswith(b"SIP/2.0/TLS 127.0.0.1:5061;")
    # The entry on top faces the callee, who reaches us over TLS; the other the caller.
    rr = msg.values("record-route")
    assert [r.split(b";lr;")[0] for r in rr] == [b"<sip:127.0.0.1:5061;transport=tls", b"<sip:127.0.0.1:5060"]
    assert [fp.proxy.identity.socket_of(r) for r in rr] == [TLS, UDP]
    # The caller's answers go back over UDP, from where its INVITE came in.
    assert {lst for lst, a, _ in fp.transports.sockets if a == CALLER} == {UDP}


def test_a_sips_call_in_over_tls_and_out_from_another_tls_socket_gets_two_sips_entries():
    other = Listen("tls", "127.0.0.2", 5061)
    fp = proxy(f"1 {GW_TLS} 0 0 socket=tls:127.0.0.2:5061\n", TLS, other)
    fp.receive(invite(1, "sips:service@127.0.0.1:5061"), CALLER, at=0)
    [(listen, _addr, msg)] = sent(fp)
    assert listen == other
    rr = msg.values("record-route")
    assert [r.split(b";lr;")[0] for r in rr] == [b"<sips:127.0.0.2:5061", b"<sips:127.0.0.1:5061"]
    assert [fp.proxy.identity.socket_of(r) for r in rr] == [other, TLS]


def test_a_sips_request_uri_goes_to_tls_destinations_only():
    fp = proxy(f"1 sip:{GW[0]}:5072 0 0\n1 sip:{GW[0]}:5073;transport=tcp 0 0\n1 {GW_TLS} 0 0\n", UDP, TLS, TCP,
               routes=(Route(algorithm=4),))
    for n in range(4):
        fp.receive(invite(n, "sips:service@127.0.0.1:5061"), CALLER, at=1)
        [(listen, addr, _)] = sent(fp)
        assert (listen, addr) == (TLS, GW), n
    # A sip: Request-URI goes to any of them (round robin).
    seen = set()
    for n in range(4, 7):
        fp.receive(invite(n, "sip:service@127.0.0.1:5061"), CALLER, at=1)
        [(_, addr, _)] = sent(fp)
        seen.add(addr)
    assert seen == {GW, (GW[0], 5072), (GW[0], 5073)}


@pytest.mark.parametrize("algorithm", [4, 8, 9])
def test_a_route_limit_counts_the_tls_destinations_of_a_sips_request(algorithm):
    """limit = 1 tries one destination: for a SIPS Request-URI, one that TLS can reach,
    whichever the algorithm would have put first."""
    fp = proxy(f"1 sip:{GW[0]}:5072 0 0\n1 {GW_TLS} 0 0\n1 sip:{GW[0]}:5073;transport=tls 0 0\n", UDP, TLS,
               routes=(Route(algorithm=algorithm, limit=1),))
    for n in range(3):
        fp.receive(invite(n, "sips:service@127.0.0.1:5061"), CALLER, at=1)
        [(listen, addr, msg)] = sent(fp)
        assert listen == TLS and addr in (GW, (GW[0], 5073)), (n, addr)
        out = fp.receive(build_response(msg, 503, "Busy", to_tag="x"), addr, at=1)
        assert sent(fp) == [], n  # the limit: no second try
        # The caller gets the answer, a 503 as 500 (RFC 3261 §16.7 step 6).
        assert any(d.startswith(b"SIP/2.0 500") for a, d in out if a == CALLER), (n, out)


def test_a_failed_tls_destination_fails_over_to_the_next_tls_one_only():
    fp = proxy(f"1 {GW_TLS} 0 0\n1 sip:{GW[0]}:5072 0 0\n1 sip:{GW[0]}:5073;transport=tls 0 0\n", UDP, TLS,
               routes=(Route(algorithm=8),))  # in list order
    fp.receive(invite(1, "sips:service@127.0.0.1:5061"), CALLER, at=1)
    [(_, addr, msg)] = sent(fp)
    assert addr == GW
    fp.receive(build_response(msg, 503, "Busy", to_tag="x"), GW, at=1)
    [(listen, addr, _)] = sent(fp)
    assert (listen, addr) == (TLS, (GW[0], 5073))


@pytest.mark.parametrize("reply", [503, 480])
def test_a_sips_request_uri_without_a_tls_destination_is_refused(reply, caplog):
    fp = proxy(f"1 sip:{GW[0]}:5072 0 0\n1 sip:{GW[0]}:5073;transport=tcp 0 0\n", UDP, TLS,
               routes=(Route(no_destination_reply=reply),))
    out = fp.receive(invite(1, "sips:service@127.0.0.1:5061"), CALLER, at=1)
    assert [d.split(b"\r\n", 1)[0] for _, d in out] == [f"SIP/2.0 {reply} No TLS Destination Available".encode()]
    assert fp.proxy.stats["no_destination"] == 1
    # The log says why: the set's destinations are active, none of them over TLS.
    assert any("no TLS destination in set 1 for INVITE" in r.getMessage() for r in caplog.records)
    # Without destinations at all, the reason stays the usual one.
    fp = proxy("2 sip:127.0.0.1:5072 0 0\n", UDP, TLS, routes=(Route(set=1),))
    out = fp.receive(invite(2, "sips:service@127.0.0.1:5061"), CALLER, at=1)
    assert [d.split(b"\r\n", 1)[0] for _, d in out] == [b"SIP/2.0 503 No Destination Available"]


@pytest.mark.parametrize("line,peer", [
    (f"1 {GW_TLS} 0 0", TlsPeer("127.0.0.1", 1, "")),
    (f"1 {GW_TLS} 0 0 tls_profile=carrier", TlsPeer("127.0.0.1", 1, "carrier")),
    ("2 sip:gw.test:5071;transport=tls 0 0 tls_profile=lab;weight=5", TlsPeer("gw.test", 2, "lab")),
    ("2 sips:gw.test:5071 0 0", TlsPeer("gw.test", 2, "")),
    ("1 sip:127.0.0.1:5071 0 0 tls_profile=carrier", None),  # not over TLS
])
def test_the_tls_peer_of_a_destination_is_its_host_set_and_profile(line, peer):
    setid = int(line[0])
    fp = proxy(line + "\n", UDP, TLS, routes=(Route(set=setid),))
    fp.transports.peers = []
    fp.receive(invite(1, "sip:service@127.0.0.1:5061"), CALLER, at=1)
    [(listen, _addr, _)] = sent(fp)
    assert listen == (TLS if peer else UDP)
    assert fp.transports.peers == [peer]
