"""An in-process proxy for unit tests: fake transports, a fake clock, scripted peers.

The proxy runs as in production (its dispatch greenlets included), but every datagram it
sends lands in a list instead of a socket, and time moves only when a test says so. A
`Call` plays both ends of one dialog: the caller (UAC on 127.0.0.1:6000) and whichever
gateway the proxy picked.
"""

from __future__ import annotations

import gevent

from gdispatch.config import Config, Listen
from gdispatch.dispatcher.listfile import parse_list
from gdispatch.dispatcher.sockets import SocketTable
from gdispatch.net import Source, Transports
from gdispatch.proxy import Proxy
from gdispatch.recordroute import Keyring, packed_address
from gdispatch.sip import build_response, parse_message
from gdispatch.transaction.timers import FakeClock, Scheduler
from tests.support import sipmsg

PROXY = ("127.0.0.1", 5060)
UAC = ("127.0.0.1", 6000)
# The key the fake proxies sign their Record-Route with, so that a test can write the
# Route of a dialog the way a caller copies it from the 200 (`signed_route`).
KEYS = Keyring([("t1", bytes(range(32)))])


def signed_route(call_id: str, caller_tag: str, destination: str, proxy: tuple[str, int] = PROXY) -> str:
    """The Route value of a dialog the fake proxy record-routed towards `destination`."""
    token = KEYS.token(call_id.encode(), caller_tag.encode(), packed_address(destination)).decode()
    return f"<sip:{proxy[0]}:{proxy[1]};lr;gds={token}>"


class FakeListener:
    def __init__(self, listen: Listen):
        self.listen = listen
        self.transport = listen.transport
        self.public = self
        self.private = None
        self.index = 0


class FakeTransports:
    """What the proxy sends, as (to_addr, bytes); nothing leaves the process. `sockets`
    has (the listen address it left from, to_addr, bytes) for each."""

    # The real choice of a socket: the proxy's decision is what the tests are about.
    listener_at = Transports.listener_at
    sender = Transports.sender

    def __init__(self, listens):
        self.listeners = [FakeListener(lst) for lst in listens]
        self.sent: list[tuple[tuple[str, int], bytes]] = []
        self.sockets: list[tuple[Listen, tuple[str, int], bytes]] = []
        self.peers: list = []  # the TlsPeer of each send
        self.on_unreachable = None

    def listener_for(self, transport, host):
        return next((lst for lst in self.listeners if lst.transport == transport), None)

    def can_reach(self, transport, host):
        return ""

    def send(self, transport, addr, data, on_error=None, listener=None, bind=False, peer=None):
        listener = listener or self.listener_for(transport, addr[0])
        self.peers.append(peer)
        self.sent.append((addr, data))
        self.sockets.append((listener.listen, addr, data))
        return listener

    def reply(self, source, addr, data):
        self.sent.append((addr, data))
        self.sockets.append((source.listener.listen, addr, data))

    def backlog(self):
        return 0.0

    def take(self):
        out, self.sent = self.sent, []
        return out


class FakeProxy:
    """A Proxy on fake transports and a fake clock, with a list of gateways."""

    def __init__(self, list_text: str = "1 sip:127.0.0.1:5071 0 0\n1 sip:127.0.0.1:5072 0 0\n",
                 config: Config | None = None):
        self.clock = FakeClock(1000.0)
        self.scheduler = Scheduler(self.clock)
        self.config = config or Config(listen=(Listen("udp", *PROXY),))
        self.transports = FakeTransports(self.config.listen)
        dlist = parse_list(list_text, sockets=SocketTable(self.config.listen))
        for d in dlist.destinations():
            d.address = (d.sip_uri.host, d.sip_uri.port or 5060)
        self.proxy = Proxy(self.config, self.transports, self.scheduler, dlist, keyring=KEYS)
        self.listener = self.transports.listeners[0]

    def receive(self, data: bytes, src: tuple[str, int], at: int = 0) -> list[tuple[tuple[str, int], bytes]]:
        """Hand a datagram (a message read on a connection, when the listener's
        transport is a stream's) to the proxy on its listener number `at`, let its
        greenlets run, return what it sent (`transports.sockets`: with the listen
        address each left from)."""
        self.transports.sockets = []
        listener = self.transports.listeners[at]
        self.proxy.on_message(data, Source(listener.transport, src, listener))
        for _ in range(3):
            gevent.sleep(0)
        return self.transports.take()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds, self.scheduler)
        gevent.sleep(0)


def caller(n: int) -> dict:
    """The caller's side of call `n`: sipmsg.request keywords."""
    return dict(from_="<sip:caller@127.0.0.1:6000>", from_tag=f"uac{n}", to="<sip:service@127.0.0.1:5060>",
                call_id=f"call-{n}@127.0.0.1")


def invite(n: int) -> bytes:
    return sipmsg.request("INVITE", "sip:service@127.0.0.1:5060",
                          vias=f"SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-uac-{n};rport", **caller(n),
                          contact="<sip:caller@127.0.0.1:6000>", content_type="application/sdp", body="v=0\n")


def in_dialog(method: str, n: int, cseq: int, gateway: tuple[str, int], branch: str,
              route: str | None = None) -> bytes:
    """A request of call `n` from the caller; `route`: its Route (default: the one the
    fake proxy signed for the call, `signed_route`)."""
    route = route or signed_route(f"call-{n}@127.0.0.1", f"uac{n}", gateway[0])
    return sipmsg.request(method, f"sip:service@{gateway[0]}:{gateway[1]}",
                          vias=f"SIP/2.0/UDP 127.0.0.1:6000;branch={branch};rport", routes=[route],
                          **caller(n), to_tag=f"uas{n}", cseq=cseq)


def full_call(fp: FakeProxy, n: int) -> tuple[str, int]:
    """INVITE, 100, 180, 200, ACK, BYE, 200 through the proxy; returns the gateway used."""
    out = fp.receive(invite(n), UAC)
    fwd = [(a, d) for a, d in out if d.startswith(b"INVITE")]
    assert len(fwd) == 1, out
    gateway, data = fwd[0]
    req = parse_message(data)
    contact = f"Contact: <sip:service@{gateway[0]}:{gateway[1]}>".encode()
    rr = b"Record-Route: " + req.get("record-route")
    for status, reason in ((100, "Trying"), (180, "Ringing"), (200, "OK")):
        resp = build_response(req, status, reason, to_tag=f"uas{n}", headers=(rr, contact))
        out = fp.receive(resp, gateway)
        if status > 100:
            assert [a for a, d in out] == [UAC], (status, out)
    out = fp.receive(in_dialog("ACK", n, 1, gateway, f"z9hG4bK-ack-{n}"), UAC)
    assert [a for a, d in out] == [gateway]
    out = fp.receive(in_dialog("BYE", n, 2, gateway, f"z9hG4bK-bye-{n}"), UAC)
    assert [a for a, d in out] == [gateway]
    bye = parse_message(out[0][1])
    out = fp.receive(build_response(bye, 200, "OK"), gateway)
    assert [a for a, d in out] == [UAC]
    return gateway
