"""No relay for anybody, end to end: requests inside a dialog leave the proxy only along
a Route it signed for that dialog, and from the caller only towards the dialog's
destination (gdispatch.recordroute), over UDP and TCP, with one worker or two, and
after a restart with the same key file."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid

import pytest

from tests.support import sipmsg
from tests.support.wait import wait_for

from . import harness
from .harness import HOST
from .test_proxy_calls import UdpSink


class Dialog:
    """A call from a Python caller through the proxy to a gateway, answered 200: what the
    caller needs to send requests inside it (RFC 3261 §12.1.2)."""

    def __init__(self, p: harness.Proxy, gateway: harness.Answerer):
        self.proxy = p
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.call_id = uuid.uuid4().hex
        self.tag = uuid.uuid4().hex[:8]
        self.cseq = 1
        invite = harness.build_request("INVITE", f"sip:svc@{HOST}:{p.port}", local_port=self.port,
                                       call_id=self.call_id, from_tag=self.tag,
                                       headers=[f"Contact: <sip:caller@{HOST}:{self.port}>"])
        self.sock.sendto(invite, (HOST, p.port))
        self.ok = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not self.ok:
            try:
                data = self.sock.recv(65535)
            except OSError:
                continue
            if harness.status_code(data) == 200:
                self.ok = data
        assert self.ok, "the call was not answered"
        # The route set: the Record-Route of the 200, reversed (§12.1.2); the target: its Contact.
        self.routes = [v.strip() for line in re.findall(rb"(?im)^Record-Route:\s*(.*)$", self.ok)
                       for v in line.decode().split(",")][::-1]
        self.target = re.search(rb"(?im)^Contact:\s*<([^>]*)>", self.ok).group(1).decode()
        self.to = re.search(rb"(?im)^To:\s*(.*)$", self.ok).group(1).decode().strip()

    def request(self, method: str, *, target: str | None = None, routes: list[str] | None = None) -> bytes:
        self.cseq += 1
        routes = self.routes if routes is None else routes
        cseq = 1 if method == "ACK" else self.cseq
        return sipmsg.request(method, target or self.target,
                              vias=f"SIP/2.0/UDP {HOST}:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport",
                              routes=routes, from_=f"<sip:harness@{HOST}:{self.port}>", from_tag=self.tag,
                              to=self.to, call_id=self.call_id, cseq=cseq, contact=f"<sip:caller@{HOST}:{self.port}>")

    def send(self, data: bytes) -> list[int | None]:
        """Send; the status codes received until a final one, or 1 s."""
        self.sock.sendto(data, (HOST, self.proxy.port))
        codes: list[int | None] = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not any(c and c >= 200 for c in codes):
            try:
                codes.append(harness.status_code(self.sock.recv(65535)))
            except OSError:
                pass
        return codes

    def close(self) -> None:
        self.sock.close()


def tampered(route: str) -> str:
    """Our Route value with the last digit of its signature changed."""
    last = route[-2]
    return route[:-2] + ("0" if last != "0" else "1") + route[-1]


@pytest.fixture
def sink():
    """Where a forged request would go: a socket on 127.0.0.5 that counts what arrives."""
    s = UdpSink("127.0.0.5")
    yield s
    s.close()


def forged(method: str, p: harness.Proxy, sink_port: int, transport: str = "UDP") -> bytes:
    """The reproducer: a request with a To tag and a Route to the proxy, no dialog (the
    attacker's bytes, as written)."""
    return (
        f"{method} sip:x@127.0.0.5:{sink_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:40000;branch=z9hG4bK-dlg-{method};rport\r\n"
        f"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.5:{sink_port}>;tag=zz\r\n"
        f"Call-ID: dlg-{method}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
        f"Route: <sip:{HOST}:{p.port};lr>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def nothing_arrived(sink, wait: float = 0.5) -> bool:
    time.sleep(wait)  # the scenario: quiet for `wait` seconds
    return not sink.received


@pytest.mark.parametrize("method", ["BYE", "INVITE", "ACK"])
def test_a_forged_request_inside_no_dialog_never_leaves(proxy, answerers, sink, method):
    gw = answerers()
    p = proxy(f"1 {gw.uri} 0 0\n", listen=("udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}"))
    replies = p.send_udp(forged(method, p, sink.port), timeout=0.5 if method == "ACK" else 2)
    assert [harness.status_code(r) for r in replies] == ([] if method == "ACK" else [403])
    if method != "ACK":
        replies = harness._tcp_exchange(forged(method, p, sink.port, "TCP"), HOST, p.port, 2)
        assert [harness.status_code(r) for r in replies] == [403]
    assert nothing_arrived(sink)
    assert not gw.received or all(d.startswith(b"OPTIONS") for d in gw.received)


def test_a_genuine_dialog_passes_and_cannot_be_steered(proxy, answerers, sink):
    gw = answerers()
    p = proxy(f"1 {gw.uri} 0 0\n")
    d = Dialog(p, gw)
    try:
        d.sock.sendto(d.request("ACK"), (HOST, p.port))
        foreign = f"sip:x@127.0.0.5:{sink.port}"
        assert d.send(d.request("INVITE", target=foreign))[-1:] == [403]  # re-INVITE elsewhere
        assert d.send(d.request("BYE", target=foreign))[-1:] == [403]
        d.sock.sendto(d.request("ACK", target=foreign), (HOST, p.port))
        assert d.send(d.request("INFO", routes=[tampered(d.routes[0])]))[-1:] == [403]
        forged_kid = re.sub(r"gds=[^.]+\.", "gds=k0.", d.routes[0])
        assert d.send(d.request("INFO", routes=[forged_kid]))[-1:] == [403]
        assert nothing_arrived(sink)
        before = len(gw.received)
        assert d.send(d.request("BYE"))[-1:] == [200]
        methods = [m.split(b" ")[0] for m in gw.received[before - 1:]]
        assert b"BYE" in methods and b"INFO" not in methods
        assert any(m.startswith(b"ACK ") for m in gw.received)
    finally:
        d.close()
    assert json.loads(p.rpc("stats", json_out=True).stdout)["in_dialog_refused"] == 5


def test_a_dialog_from_before_a_restart_goes_on(proxy, answerers, tmp_path):
    gw = answerers()
    config = f'[security]\nkey_file = "{tmp_path / "dialog.key"}"\n'
    first = proxy(f"1 {gw.uri} 0 0\n", config=config)
    d = Dialog(first, gw)
    try:
        first.stop()
        again = proxy(f"1 {gw.uri} 0 0\n", config=config, port=first.port)
        d.proxy = again
        assert d.send(d.request("BYE"))[-1:] == [200]
    finally:
        d.close()


def test_two_workers_verify_each_others_dialogs(proxy, answerers):
    """The ACK of a 2xx goes to the worker after the call's owner (gdispatch.cluster.steering):
    that worker verifies a signature the owner wrote."""
    gw = answerers()
    p = proxy(f"1 {gw.uri} 0 0\n", args=("--workers", "2"))
    for _ in range(4):
        d = Dialog(p, gw)
        try:
            acks = sum(m.startswith(b"ACK ") for m in gw.received)
            d.sock.sendto(d.request("ACK"), (HOST, p.port))
            wait_for(lambda acks=acks: sum(m.startswith(b"ACK ") for m in gw.received) > acks, 2, 0.02)
            assert sum(m.startswith(b"ACK ") for m in gw.received) == acks + 1
            assert d.send(d.request("BYE"))[-1:] == [200]
        finally:
            d.close()
