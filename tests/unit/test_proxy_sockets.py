"""The socket a request leaves from on a proxy with two listen addresses: a destination's
`socket` or `sockname` attr, else `[dispatcher].default_socket`/`default_sockname`, else
the first listen address (Kamailio's order); the Via and Record-Route name it, with two
Record-Route entries when it is not the socket the request came in on (RFC 3261 §16.6
steps 4 and 8, Kamailio's enable_double_rr); the CANCEL and the ACK of a non-2xx leave
from the INVITE's socket; requests inside the dialog leave from the socket their last
Route entry of ours names; pings follow `ping_socket`, `sockname`, `socket`, the default."""

from __future__ import annotations

import pytest
from proxy_fakes import UAC, FakeProxy, caller, invite

from gdispatch.config import Config, Listen
from gdispatch.probing.pinger import Prober
from gdispatch.probing.policy import ProbeSettings
from gdispatch.sip import build_response, parse_message
from tests.support import sipmsg

A = Listen("udp", "127.0.0.1", 5060)
B = Listen("udp", "127.0.0.2", 5060, name="carrier")
GW = ("127.0.0.1", 5071)


def proxy(attrs: str = "", **config) -> FakeProxy:
    return FakeProxy(f"1 sip:{GW[0]}:{GW[1]} 0 0 {attrs}\n", Config(listen=(A, B), **config))


def forwarded(fp: FakeProxy, method: str = "INVITE"):
    """The one request `method` the last datagram made the proxy send: (socket, bytes)."""
    out = [(lst, data) for lst, _addr, data in fp.transports.sockets if data.startswith(method.encode())]
    assert len(out) == 1, fp.transports.sockets
    return out[0]


def hostport(listen: Listen) -> bytes:
    return f"{listen.host}:{listen.port}".encode()


@pytest.mark.parametrize("attrs,config", [
    ("socket=udp:127.0.0.2:5060", {}),
    ("socket=127.0.0.2", {}),  # Kamailio's grep_sock_info: any proto, any port
    ("sockname=carrier", {}),
    ("sockname=carrier;socket=udp:127.0.0.1:5060", {}),  # the name wins
    ("", {"default_socket": "udp:127.0.0.2:5060"}),
    ("", {"default_sockname": "carrier"}),
    ("", {"default_socket": "udp:127.0.0.1:5060", "default_sockname": "carrier"}),
])
def test_the_invite_leaves_from_the_destinations_socket_which_via_and_record_route_name(attrs, config):
    fp = proxy(attrs, **config)
    out = fp.receive(invite(1), UAC, at=0)
    listen, data = forwarded(fp)
    assert listen == B
    msg = parse_message(data)
    assert msg.vias[0].host == "127.0.0.2" and msg.vias[0].port == 5060
    # Double record-routing: the callee reaches us at B, the caller at A; the entry on top
    # faces the callee (RFC 3261 §16.6 step 4).
    rr = msg.values("record-route")
    assert [r.split(b";")[0] for r in rr] == [b"<sip:127.0.0.2:5060", b"<sip:127.0.0.1:5060"]
    # The caller's answers leave from where its INVITE came in.
    assert [lst for lst, addr, d in fp.transports.sockets if addr == UAC] == [A]
    assert any(a == UAC and d.startswith(b"SIP/2.0 100") for a, d in out)


def test_without_a_socket_the_first_listen_address_and_one_record_route():
    fp = proxy()
    fp.receive(invite(1), UAC, at=0)
    listen, data = forwarded(fp)
    assert listen == A
    msg = parse_message(data)
    assert msg.vias[0].host == "127.0.0.1"
    assert len(msg.values("record-route")) == 1


def test_a_request_from_the_destinations_socket_gets_one_record_route():
    """In and out on the same socket: one entry serves both sides."""
    fp = proxy("socket=udp:127.0.0.2:5060")
    fp.receive(invite(1), UAC, at=1)
    listen, data = forwarded(fp)
    assert listen == B
    assert [r.split(b";")[0] for r in parse_message(data).values("record-route")] == [b"<sip:127.0.0.2:5060"]


def test_the_cancel_and_the_ack_of_a_non_2xx_leave_from_the_invites_socket():
    fp = proxy("socket=udp:127.0.0.2:5060")
    fp.receive(invite(1), UAC, at=0)
    _, data = forwarded(fp)
    req = parse_message(data)
    fp.receive(build_response(req, 180, "Ringing", to_tag="uas1"), GW, at=1)
    cancel = sipmsg.request("CANCEL", "sip:service@127.0.0.1:5060", vias="SIP/2.0/UDP 127.0.0.1:6000;"
                            "branch=z9hG4bK-uac-1;rport", **caller(1))
    fp.receive(cancel, UAC, at=0)
    listen, data = forwarded(fp, "CANCEL")
    assert listen == B and hostport(B) in parse_message(data).get("via")
    fp.receive(build_response(req, 487, "Request Terminated", to_tag="uas1"), GW, at=1)
    listen, _ = forwarded(fp, "ACK")
    assert listen == B


def test_requests_inside_the_dialog_leave_from_the_socket_of_the_last_route_entry():
    fp = proxy("socket=udp:127.0.0.2:5060")
    fp.receive(invite(1), UAC, at=0)
    _, data = forwarded(fp)
    req = parse_message(data)
    rr = req.values("record-route")
    fp.receive(build_response(req, 200, "OK", to_tag="uas1", headers=[b"Record-Route: " + v for v in rr]), GW, at=1)
    # The caller's route set is the Record-Route reversed (RFC 3261 §12.1.2): A, then B.
    to_gateway = [v.decode() for v in reversed(rr)]
    for method, cseq in (("ACK", 1), ("BYE", 2)):
        request = sipmsg.request(method, f"sip:service@{GW[0]}:{GW[1]}", routes=to_gateway, **caller(1),
                                 vias=f"SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-{method};rport",
                                 to_tag="uas1", cseq=cseq)
        fp.receive(request, UAC, at=0)
        listen, data = forwarded(fp, method)
        assert listen == B, method
        assert hostport(B) in parse_message(data).get("via"), method
    # The callee's route set is the Record-Route as it is: B, then A. Its request
    # reaches the caller from A, where the caller reached us.
    from_callee = sipmsg.request("BYE", "sip:caller@127.0.0.1:6000", routes=[v.decode() for v in rr],
                                 vias=f"SIP/2.0/UDP {GW[0]}:{GW[1]};branch=z9hG4bK-gwbye",
                                 from_="<sip:service@127.0.0.1:5060>", from_tag="uas1",
                                 to="<sip:caller@127.0.0.1:6000>", to_tag="uac1", call_id="call-1@127.0.0.1")
    fp.receive(from_callee, GW, at=1)
    listen, data = forwarded(fp, "BYE")
    assert listen == A and hostport(A) in parse_message(data).get("via")


def test_an_unsigned_route_entry_naming_another_of_our_addresses_does_not_choose_the_socket():
    """Anybody can append a Route value naming one of our listen addresses after the
    signed one: the socket stays the one the signed entries name."""
    fp = proxy()  # no socket attr: one Record-Route entry, for A
    fp.receive(invite(1), UAC, at=0)
    _, data = forwarded(fp)
    req = parse_message(data)
    rr = [v.decode() for v in req.values("record-route")]
    assert len(rr) == 1
    fp.receive(build_response(req, 200, "OK", to_tag="uas1", headers=[b"Record-Route: " + rr[0].encode()]), GW,
               at=1)
    forged = rr + [f"<sip:{B.host}:{B.port};lr>"]
    bye = sipmsg.request("BYE", f"sip:service@{GW[0]}:{GW[1]}", routes=forged, **caller(1),
                         vias="SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-forged;rport", to_tag="uas1", cseq=2)
    fp.receive(bye, UAC, at=0)
    listen, _ = forwarded(fp, "BYE")
    assert listen == A


@pytest.mark.parametrize("attrs,config,expected", [
    ("socket=udp:127.0.0.2:5060", {}, B),
    ("sockname=carrier", {}, B),
    ("ping_socket=udp:127.0.0.2:5060;socket=udp:127.0.0.1:5060", {}, B),
    ("ping_socket=udp:127.0.0.1:5060;sockname=carrier", {}, A),
    ("", {"default_sockname": "carrier"}, B),
    ("", {}, A),
])
def test_pings_leave_from_ping_socket_then_sockname_then_socket_then_the_default(attrs, config, expected):
    fp = proxy(attrs, **config)
    dlist = fp.proxy.dlist
    prober = Prober(fp.proxy, ProbeSettings(), lambda: dlist)
    prober.attach(dlist, initial=False)
    fp.transports.sockets = []
    prober.ping(next(iter(dlist.destinations())))
    listen, data = forwarded(fp, "OPTIONS")
    assert listen == expected and hostport(expected) in parse_message(data).get("via")
