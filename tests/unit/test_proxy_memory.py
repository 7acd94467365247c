"""What a finished call leaves behind in the proxy: transactions that end on time, hold
no parsed messages while they linger, and form no reference cycles (which only the
cyclic garbage collector could free, and it runs rarely: gdispatch.app.tune_gc)."""

import gc
from dataclasses import replace

import pytest
from proxy_fakes import PROXY, UAC, FakeProxy, full_call, invite

from gdispatch.config import Config, Listen, Timers
from gdispatch.sip import SipMessage, build_response, parse_message


def config(**timers) -> Config:
    return Config(listen=(Listen("udp", *PROXY),), timers=replace(Timers(), **timers))


def test_finished_calls_make_no_reference_cycles():
    fp = FakeProxy()
    full_call(fp, 0)
    fp.advance(60)
    gc.collect()
    gc.disable()
    try:
        for n in range(1, 101):
            full_call(fp, n)
        fp.advance(60)
        assert not fp.proxy.server_txns and not fp.proxy.client_txns
        # Everything the 100 calls allocated went away by reference counting alone.
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_transactions_end_after_wt_timer():
    fp = FakeProxy(config=config(wt_timer=5.0))
    for n in range(20):
        full_call(fp, n)
    assert len(fp.proxy.server_txns) == 40  # INVITE and BYE of each call, lingering
    fp.advance(4.9)
    assert len(fp.proxy.server_txns) == 40
    fp.advance(0.2)
    assert not fp.proxy.server_txns and not fp.proxy.client_txns
    assert len(fp.scheduler) == 0


def test_wt_timer_0_keeps_rfc_3261_timers():
    fp = FakeProxy(config=config(wt_timer=0.0))
    full_call(fp, 1)
    fp.advance(31.9)
    assert len(fp.proxy.server_txns) == 2  # Timer L (INVITE) and J (BYE): 64*T1
    fp.advance(0.2)
    assert not fp.proxy.server_txns and not fp.proxy.client_txns


def _reachable_messages(root) -> list:
    """SipMessage objects reachable from `root` through its references."""
    seen, found, todo = set(), [], [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (type, str, bytes, int, float)):
            continue
        seen.add(id(obj))
        if isinstance(obj, SipMessage):
            found.append(obj)
            continue
        todo.extend(gc.get_referents(obj))
    return found


def test_lingering_transactions_hold_no_parsed_message():
    fp = FakeProxy()
    full_call(fp, 1)
    tables = [fp.proxy.server_txns, fp.proxy.client_txns]
    assert all(tables)
    assert _reachable_messages(tables) == []
    for ct in fp.proxy.client_txns.values():
        assert ct.request == b""


def test_a_2xx_retransmission_is_still_relayed_while_lingering():
    fp = FakeProxy()
    out = fp.receive(invite(7), UAC)
    gateway, data = next((a, d) for a, d in out if d.startswith(b"INVITE"))
    req = parse_message(data)
    ok = build_response(req, 200, "OK", to_tag="uas7",
                        headers=(b"Contact: <sip:service@127.0.0.1:5071>",))
    assert [a for a, _ in fp.receive(ok, gateway)] == [UAC]
    fp.advance(2.0)
    # RFC 6026 §7.2: the client transaction is Accepted and passes every 2xx up.
    assert [a for a, _ in fp.receive(ok, gateway)] == [UAC]
    # The caller's INVITE retransmission is absorbed (RFC 6026 §7.1).
    assert fp.receive(invite(7), UAC) == []


@pytest.mark.parametrize("status", [486, 603])
def test_a_failed_call_frees_its_state_too(status):
    fp = FakeProxy(list_text="1 sip:127.0.0.1:5071 0 0\n")
    gc.collect()
    gc.disable()
    try:
        out = fp.receive(invite(9), UAC)
        gateway, data = next((a, d) for a, d in out if d.startswith(b"INVITE"))
        req = parse_message(data)
        out = fp.receive(build_response(req, status, "No"), gateway)
        assert any(d.startswith(b"ACK") for _, d in out)  # our ACK to the gateway
        assert any(d.startswith(b"SIP/2.0 %d" % status) for _, d in out)  # upstream
        fp.advance(60)
        assert not fp.proxy.server_txns and not fp.proxy.client_txns
        assert gc.collect() == 0
    finally:
        gc.enable()
