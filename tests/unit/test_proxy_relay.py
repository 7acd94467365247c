"""No relay for anybody: requests inside a dialog pass only along a Route this proxy
signed for that dialog, and from the caller only towards the dialog's destination
(gdispatch.recordroute, as the proxy applies it), whether the proxy recognises its Route
entry by its bytes or parses it."""

from __future__ import annotations

import pytest
from proxy_fakes import KEYS, UAC, FakeProxy, full_call, in_dialog, invite, signed_route

from gdispatch.config import Config, Listen, Security
from gdispatch.recordroute import Keyring
from gdispatch.sip import build_response, parse_message
from tests.support import sipmsg

GW = ("127.0.0.1", 5071)
ELSEWHERE = ("127.0.0.5", 5099)


def statuses(out):
    return [parse_message(d).status for _, d in out if d.startswith(b"SIP/2.0")]


def established(fp: FakeProxy, n: int) -> tuple[str, int]:
    """A call answered 200 and ACKed, not yet ended; returns its gateway."""
    out = fp.receive(invite(n), UAC)
    gateway, data = next((a, d) for a, d in out if d.startswith(b"INVITE"))
    req = parse_message(data)
    rr = b"Record-Route: " + req.get("record-route")
    fp.receive(build_response(req, 200, "OK", to_tag=f"uas{n}", headers=(rr,)), gateway)
    assert [a for a, _ in fp.receive(in_dialog("ACK", n, 1, gateway, f"z9hG4bK-ack-{n}"), UAC)] == [gateway]
    return gateway


def retarget(data: bytes, to: tuple[str, int]) -> bytes:
    """The request with its Request-URI pointing at `to`."""
    line, rest = data.split(b"\r\n", 1)
    method = line.split(b" ")[0]
    return b"%s sip:x@%s:%d SIP/2.0\r\n%s" % (method, to[0].encode(), to[1], rest)


def forged(method: str, route: str, *, to_tag: str = "zz", n: int = 1) -> bytes:
    """The attacker's request, as written (tests/e2e/test_relay.py has its reproducer)."""
    return (
        f"{method} sip:x@{ELSEWHERE[0]}:{ELSEWHERE[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-dlg-{method};rport\r\n"
        f"From: <sip:a@127.0.0.1>;tag=uac{n}\r\n"
        f"To: <sip:x@{ELSEWHERE[0]}:{ELSEWHERE[1]}>;tag={to_tag}\r\n"
        f"Call-ID: call-{n}@127.0.0.1\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Max-Forwards: 70\r\n"
        f"Route: {route}\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture(params=["entry as written", "entry parsed"])
def fp(request):
    fp = FakeProxy()
    if request.param == "entry parsed":
        # As for a Route entry a UA rewrote: nothing is recognised by its bytes.
        fp.proxy.identity.own_routes = {}
    return fp


@pytest.mark.parametrize("method", ["BYE", "INVITE", "ACK", "INFO"])
@pytest.mark.parametrize("route", ["<sip:127.0.0.1:5060;lr>", "<sip:127.0.0.1:5060;lr;gds=t1.00112233445566778899>",
                                   "<sip:127.0.0.1:5060;lr;gds=zz.00112233445566778899>"],
                         ids=["unsigned", "bad signature", "unknown key id"])
def test_a_forged_request_inside_no_dialog_goes_nowhere(fp, method, route):
    out = fp.receive(forged(method, route), ("127.0.0.1", 40000))
    assert all(addr == ("127.0.0.1", 40000) for addr, _ in out), out
    assert statuses(out) == ([] if method == "ACK" else [403])
    assert fp.proxy.stats["in_dialog_refused"] == 1
    assert not fp.proxy.server_txns and not fp.proxy.client_txns


@pytest.mark.parametrize("method", ["BYE", "INVITE", "ACK"])
def test_a_signature_of_another_dialog_is_refused(fp, method):
    gateway = established(fp, 1)
    # Call 1's Route on a request of call 2 (a copied signature).
    route = signed_route("call-1@127.0.0.1", "uac1", gateway[0])
    data = in_dialog(method, 2, 2, gateway, "z9hG4bK-copy").replace(
        signed_route("call-2@127.0.0.1", "uac2", gateway[0]).encode(), route.encode())
    out = fp.receive(data, UAC)
    assert all(addr == UAC for addr, _ in out) and fp.proxy.stats["in_dialog_refused"] == 1


@pytest.mark.parametrize("method", ["BYE", "INVITE", "ACK", "INFO"])
def test_a_genuine_dialog_cannot_steer_its_requests_elsewhere(fp, method):
    gateway = established(fp, 1)
    out = fp.receive(retarget(in_dialog(method, 1, 2, gateway, "z9hG4bK-away"), ELSEWHERE), UAC)
    assert all(addr == UAC for addr, _ in out), out
    assert statuses(out) == ([] if method == "ACK" else [403])
    # ... the same request to the dialog's destination goes.
    out = fp.receive(in_dialog(method, 1, 3, gateway, "z9hG4bK-home"), UAC)
    assert [a for a, _ in out if a == gateway] == [gateway]


def test_the_callee_reaches_the_caller_wherever_it_is_the_caller_cannot_pose_as_callee(fp):
    gateway = established(fp, 1)
    route = signed_route("call-1@127.0.0.1", "uac1", gateway[0])
    from_callee = sipmsg.request("BYE", f"sip:caller@{ELSEWHERE[0]}:{ELSEWHERE[1]}",
                                 vias=f"SIP/2.0/UDP {gateway[0]}:{gateway[1]};branch=z9hG4bK-gwbye", routes=[route],
                                 from_="<sip:service@127.0.0.1:5060>", from_tag="uas1",
                                 to="<sip:caller@127.0.0.1:6000>", to_tag="uac1", call_id="call-1@127.0.0.1")
    out = fp.receive(from_callee, gateway)
    assert [a for a, _ in out] == [ELSEWHERE]
    # The same request from another address: the caller posing as the callee.
    poser = ("127.0.0.9", 6000)
    out = fp.receive(from_callee.replace(b"gwbye", b"posed"), poser)
    assert statuses(out) == [403] and all(a[0] == poser[0] for a, _ in out)


def test_dialogs_signed_by_another_process_with_the_same_keys_pass():
    """Another worker, or this proxy before a restart: same key file, same signatures."""
    first = FakeProxy()
    gateway = established(first, 1)
    again = FakeProxy()  # a new process: no transaction, no memory of the call
    out = again.receive(in_dialog("BYE", 1, 2, gateway, "z9hG4bK-after"), UAC)
    assert [a for a, _ in out] == [gateway]


def test_a_rotated_key_keeps_old_dialogs_and_signs_new_ones():
    fp = FakeProxy()
    gateway = established(fp, 1)
    fp.proxy.keyring = Keyring([("t2", bytes(32)), *KEYS.keys])  # what a reload of the key file does
    assert [a for a, _ in fp.receive(in_dialog("BYE", 1, 2, gateway, "z9hG4bK-old"), UAC)] == [gateway]
    out = fp.receive(invite(2), UAC)
    forwarded = next(d for a, d in out if d.startswith(b"INVITE"))
    assert b";lr;gds=t2." in forwarded
    fp.proxy.keyring = Keyring([("t2", bytes(32))])  # the old key retired
    out = fp.receive(in_dialog("BYE", 1, 3, gateway, "z9hG4bK-retired"), UAC)
    assert statuses(out) == [403]


def test_rule_any_lets_a_genuine_dialog_go_anywhere_but_no_forged_one():
    fp = FakeProxy(config=Config(listen=(Listen("udp", "127.0.0.1", 5060),),
                                 security=Security(dialog_next_hop="any")))
    out = fp.receive(invite(1), UAC)
    req = parse_message(next(d for a, d in out if d.startswith(b"INVITE")))
    route = req.get("record-route").decode()
    bye = in_dialog("BYE", 1, 2, GW, "z9hG4bK-any").replace(
        signed_route("call-1@127.0.0.1", "uac1", GW[0]).encode(), route.encode())
    assert [a for a, _ in fp.receive(retarget(bye, ELSEWHERE), UAC)] == [ELSEWHERE]
    out = fp.receive(forged("BYE", "<sip:127.0.0.1:5060;lr>"), ("127.0.0.1", 40000))
    assert statuses(out) == [403]


def test_double_record_route_is_signed_alike_and_a_full_call_still_goes_through(fp):
    full_call(fp, 1)
    assert fp.proxy.stats["in_dialog_refused"] == 0


@pytest.mark.parametrize("method", ["BYE", "ACK"])
def test_a_forged_request_makes_no_dns_query(method, monkeypatch):
    """A host name in a forged request is never looked up: the request is refused on its
    Route entry first (no query for names an attacker chose)."""
    fp = FakeProxy()
    looked_up = []
    monkeypatch.setattr(fp.proxy, "_next_hop", lambda uri: looked_up.append(uri.host) or None)
    for route in ("<sip:127.0.0.1:5060;lr>", "<sip:127.0.0.1:5060;lr;gds=zz.00112233445566778899>"):
        data = forged(method, route).replace(b"sip:x@127.0.0.5:5099 SIP/2.0", b"sip:x@attacker.example SIP/2.0")
        fp.receive(data, ("127.0.0.1", 40000))
    assert looked_up == [] and fp.proxy.stats["in_dialog_refused"] == 2


@pytest.mark.parametrize("method", ["BYE", "ACK", "INFO"])
def test_a_genuine_dialog_passes_in_compact_forms_and_several_vias(fp, method):
    """The signature is read whatever the header forms around it: compact names (RFC 3261
    §7.3.3), a second Via line, a display name."""
    gateway = established(fp, 1)
    data = in_dialog(method, 1, 2, gateway, "z9hG4bK-compact")
    for long, short in ((b"\r\nFrom:", b"\r\nf:"), (b"\r\nTo:", b"\r\nt:"), (b"\r\nCall-ID:", b"\r\ni:"),
                        (b"\r\nContent-Length:", b"\r\nl:"), (b"\r\nVia:", b"\r\nv:")):
        data = data.replace(long, short)
    data = data.replace(b"\r\nv: ", b"\r\nv: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-up\r\nVia: ", 1)
    data = data.replace(b"f: <", b'f: "Alice" <')
    out = fp.receive(data, UAC)
    assert [a for a, _ in out if a == gateway] == [gateway], out
    assert fp.proxy.stats["in_dialog_refused"] == 0
