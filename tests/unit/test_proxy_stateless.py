"""No amplification: a request refused before it becomes a transaction is answered once
per copy received, statelessly (as Kamailio's sl_send_reply), and the proxy's own answers
fill in received and rport as relayed ones do (RFC 3261 §18.2.1, RFC 3581 §4)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from proxy_fakes import PROXY, FakeProxy, invite

from gdispatch.config import Config, Listen, Overload, Route
from gdispatch.sip import parse_message
from tests.support import sipmsg

SOURCE = ("127.0.0.1", 6000)
FORGED = ("127.0.0.77", 7777)  # what the Via says and where the answers go (rport)


def request(method: str = "INVITE", ruri: str = "sip:service@127.0.0.1:5060", *, via_host: str = "127.0.0.77:7777",
            **kw) -> bytes:
    """A scanner's request, answered at `via_host` (rport); `kw`: sipmsg.request's."""
    return sipmsg.request(method, ruri, vias=f"SIP/2.0/UDP {via_host};branch=z9hG4bK-scan-{method};rport",
                          from_="<sip:scanner@127.0.0.77>", from_tag="s1", call_id=f"scan-{method}@127.0.0.77", **kw)


REFUSALS = {
    "403 relaying forbidden": (request(ruri="sip:x@example.org"), 403, {}),
    "404 no route": (request("REGISTER", "sip:127.0.0.1:5060"), 404, {}),
    "483 too many hops": (request(max_forwards=0), 483, {}),
    "400 bad request": (request(cseq_method="BYE"), 400, {}),
    "200 options to the proxy": (request("OPTIONS", "sip:127.0.0.1:5060"), 200, {}),
    "403 preloaded route": (request(routes=["<sip:127.0.0.1:5060;lr>, <sip:192.0.2.1;lr>"]), 403, {}),
    "481 cancel of nothing": (request("CANCEL"), 481, {}),
    "403 route reply": (request(ruri="sip:112@127.0.0.1:5060"), 403,
                        {"routes": (Route(methods=frozenset(), user_prefix=("112",), reply=403), Route())}),
    "503 overload": (request(), 503, {"overload": replace(Overload(), max_calls_in_setup=1)}),
    "503 no destination": (request(), 503, {"list_text": "1 sip:127.0.0.1:5071 4 0\n"}),
}


def proxy_for(settings: dict) -> FakeProxy:
    settings = dict(settings)
    list_text = settings.pop("list_text", "1 sip:127.0.0.1:5071 0 0\n")
    config = Config(listen=(Listen("udp", *PROXY),), **settings)
    return FakeProxy(list_text=list_text, config=config)


@pytest.mark.parametrize("name", REFUSALS)
def test_a_refusal_is_one_answer_per_copy_and_no_transaction(name):
    data, status, settings = REFUSALS[name]
    fp = proxy_for(settings)
    if name == "503 overload":
        fp.receive(invite(1), SOURCE)  # the one call in setup
    txns = len(fp.proxy.server_txns)
    out = fp.receive(data, FORGED)
    assert [(a, parse_message(d).status) for a, d in out] == [(FORGED, status)]
    assert len(fp.proxy.server_txns) == txns  # no transaction for it
    again = fp.receive(data, FORGED)  # a copy: one more answer, the same To tag
    assert len(again) == 1
    assert parse_message(again[0][1]).to_tag == parse_message(out[0][1]).to_tag
    fp.advance(40)  # past every retransmission timer (RFC 3261 Timer G, H)
    assert [d for a, d in fp.transports.take() if a == FORGED] == []
    via = parse_message(out[0][1]).top_via
    # RFC 3581 §4: with rport, received goes in even when it repeats the Via's host.
    assert via.rport == str(FORGED[1]) and via.received == FORGED[0]


def test_own_answers_fill_received_and_rport():
    fp = proxy_for({})
    behind_nat = request(ruri="sip:service@127.0.0.1:5060", via_host="10.0.0.5:5062")
    out = fp.receive(behind_nat, SOURCE)
    trying = parse_message(next(d for a, d in out if d.startswith(b"SIP/2.0 100")))
    assert trying.top_via.rport == "6000" and trying.top_via.received == "127.0.0.1"
    fp.advance(2.1)  # fr_timer: the gateway never answered
    fp.advance(0.1)
    final = [parse_message(d) for a, d in fp.transports.take() if d.startswith(b"SIP/2.0 5")]
    assert final and final[0].top_via.rport == "6000" and final[0].top_via.received == "127.0.0.1"
    refused = parse_message(fp.receive(request("REGISTER", "sip:127.0.0.1:5060", via_host="10.0.0.5"),
                                       SOURCE)[0][1])
    assert refused.top_via.rport == "6000" and refused.top_via.received == "127.0.0.1"


def test_the_ack_of_a_stateless_refusal_ends_here():
    fp = proxy_for({})
    out = fp.receive(request(ruri="sip:x@example.org"), FORGED)
    tag = parse_message(out[0][1]).to_tag.decode()
    ack = request("ACK", "sip:x@example.org", to_tag=tag)
    assert fp.receive(ack, FORGED) == []


def test_the_banner_names_no_version_and_can_be_dropped():
    options = request("OPTIONS", "sip:127.0.0.1:5060")
    answer = proxy_for({}).receive(options, FORGED)[0][1]
    assert b"\r\nServer: gdispatch\r\n" in answer and not re.search(rb"(?i)server:[^\r]*\d", answer)
    silent = proxy_for({"server_header": ""}).receive(options, FORGED)[0][1]
    assert b"Server:" not in silent
