"""A multi-homed proxy, end to end: listening on 127.0.0.1 and 127.0.0.2, a destination
with `socket=` (or `sockname=`) gets its call from 127.0.0.2 (INVITE, ACK, the BYE
either way), another without one from 127.0.0.1; over UDP, over TCP (the connection
bound to 127.0.0.2), and with two workers. A socket that is not a listen address keeps the list from
loading (strict), or leaves its line out (skip), and a reload with one keeps the
running list."""

from __future__ import annotations

import re
import socket
import time
import uuid

import pytest

from tests.support import sipmsg

from . import harness
from .harness import HOST

OTHER = "127.0.0.2"


def read_message(sock: socket.socket, buffer: bytearray, deadline: float) -> bytes | None:
    """One SIP message from a TCP stream, framed by Content-Length."""
    while time.monotonic() < deadline:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end >= 0:
            m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", bytes(buffer[:head_end]))
            end = head_end + 4 + (int(m.group(1)) if m else 0)
            if len(buffer) >= end:
                data = bytes(buffer[:end])
                del buffer[:end]
                return data
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65535)
        except TimeoutError:
            continue
        if not chunk:
            return None
        buffer += chunk
    return None


class Peer:
    """One end of the calls, on 127.0.0.1: a caller (UDP) or a gateway (UDP, or TCP
    accepting the proxy's connection). Records where each message came from."""

    def __init__(self, transport: str = "udp"):
        self.transport = transport
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind((HOST, 0))
        if transport == "tcp":
            self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.conn: socket.socket | None = None
        self.conn_from: tuple[str, int] | None = None
        self.buffer = bytearray()
        self.last_from: tuple[str, int] | None = None

    def uri(self, user: str) -> str:
        return f"sip:{user}@{HOST}:{self.port}" + (";transport=tcp" if self.transport == "tcp" else "")

    def expect(self, start: bytes, timeout: float = 5.0) -> tuple[bytes, tuple[str, int]]:
        """The next message starting with `start` (b"INVITE", b"SIP/2.0 200"...) and its
        sender; what comes before it (a 100, a retransmission) is passed over."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data, addr = self._receive(deadline)
            if data is not None and data.startswith(start):
                self.last_from = addr
                return data, addr
        raise AssertionError(f"no {start!r} within {timeout} s")

    def _receive(self, deadline: float) -> tuple[bytes | None, tuple[str, int]]:
        if self.transport == "udp":
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                return self.sock.recvfrom(65535)
            except TimeoutError:
                return None, ("", 0)
        if self.conn is None:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.conn, self.conn_from = self.sock.accept()
            except TimeoutError:
                return None, ("", 0)
        assert self.conn_from is not None
        return read_message(self.conn, self.buffer, deadline), self.conn_from

    def send(self, data: bytes, to: tuple[str, int] | None = None) -> None:
        if self.transport == "tcp":
            assert self.conn is not None
            self.conn.sendall(data)
        else:
            self.sock.sendto(data, to or self.last_from)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.sock.close()


def values(data: bytes, name: bytes) -> list[str]:
    return [v.strip() for line in re.findall(rb"(?im)^" + name + rb":\s*(.*?)\r$", data)
            for v in line.decode().split(",")]


def header(data: bytes, name: bytes) -> str:
    return re.search(rb"(?im)^" + name + rb":\s*(.*?)\r$", data).group(1).decode()


def route_host(route: str) -> tuple[str, int]:
    m = re.match(r"<sip:([\d.]+):(\d+)", route)
    assert m, route
    return m.group(1), int(m.group(2))


def call(p: harness.Proxy, user: str, caller: Peer, gateway: Peer, bye_from_gateway: bool
         ) -> tuple[dict[str, tuple[str, int]], dict[str, tuple[str, int]]]:
    """One call through the proxy, the BYE from either end; returns where the gateway saw
    each message come from (INVITE, ACK, the BYE or the 200 of its own), and where the
    caller did (the 200 of the INVITE, the gateway's BYE or the 200 of its own)."""
    seen: dict[str, tuple[str, int]] = {}
    heard: dict[str, tuple[str, int]] = {}
    call_id, tag = uuid.uuid4().hex, uuid.uuid4().hex[:8]
    contact = f"Contact: <{caller.uri('caller')}>"
    caller.send(harness.build_request("INVITE", f"sip:{user}@{HOST}:{p.port}", local_port=caller.port,
                                      call_id=call_id, from_tag=tag, headers=[contact]), (HOST, p.port))
    invite, seen["INVITE"] = gateway.expect(b"INVITE")
    rr = [f"Record-Route: {v}" for v in values(invite, b"Record-Route")]
    gw_tag = uuid.uuid4().hex[:8]
    ok = sipmsg.response(200, vias=values(invite, b"Via"), from_=header(invite, b"From"), from_tag=None,
                         to=header(invite, b"To") + f";tag={gw_tag}", call_id=call_id, cseq="1 INVITE",
                         headers=[*rr, f"Contact: <{gateway.uri('gw')}>"])
    gateway.send(ok)
    answer, heard["200"] = caller.expect(b"SIP/2.0 200")
    to_caller = values(answer, b"Record-Route")
    to_gateway = to_caller[::-1]  # RFC 3261 §12.1.2: the caller's route set is the reverse
    first_hop = route_host(to_gateway[0])
    assert first_hop == (HOST, p.port)  # the caller reaches us where it sent its INVITE

    def from_caller(method: str, cseq: int) -> bytes:
        return sipmsg.request(method, gateway.uri("gw"), routes=to_gateway, call_id=call_id,
                              vias=f"SIP/2.0/UDP {HOST}:{caller.port};rport;branch=z9hG4bK{uuid.uuid4().hex[:12]}",
                              from_=f"<sip:harness@{HOST}:{caller.port}>", from_tag=tag,
                              to=header(answer, b"To"), to_tag=None, cseq=cseq)

    caller.send(from_caller("ACK", 1), first_hop)
    _, seen["ACK"] = gateway.expect(b"ACK")
    if bye_from_gateway:
        # The callee's route set is the Record-Route as it came (§12.1.2).
        bye = sipmsg.request("BYE", caller.uri("caller"), routes=to_caller, call_id=call_id,
                             vias=f"SIP/2.0/{gateway.transport.upper()} {HOST}:{gateway.port};branch=z9hG4bKgw{gw_tag}",
                             from_=header(invite, b"To") + f";tag={gw_tag}", from_tag=None,
                             to=header(invite, b"From"), to_tag=None, cseq=1)
        gateway.send(bye, route_host(to_caller[0]))
        got, heard["BYE"] = caller.expect(b"BYE")
        caller.send(sipmsg.response(200, vias=values(got, b"Via"), from_=header(got, b"From"), from_tag=None,
                                    to=header(got, b"To"), call_id=call_id, cseq="1 BYE"))
        _, seen["200"] = gateway.expect(b"SIP/2.0 200")
    else:
        caller.send(from_caller("BYE", 2), first_hop)
        got, seen["BYE"] = gateway.expect(b"BYE")
        gateway.send(sipmsg.response(200, vias=values(got, b"Via"), from_=header(got, b"From"), from_tag=None,
                                     to=header(got, b"To"), call_id=call_id, cseq="2 BYE"))
        _, heard["200 of the BYE"] = caller.expect(b"SIP/2.0 200")
    return seen, heard


ROUTES = """
[[route]]
user_prefix = ["carrier"]
set = 1
[[route]]
set = 2
"""


@pytest.fixture
def peers():
    made: list[Peer] = []

    def make(transport: str = "udp") -> Peer:
        made.append(Peer(transport))
        return made[-1]

    yield make
    for peer in made:
        peer.close()


@pytest.mark.parametrize("workers,attr", [(1, "socket"), (2, "sockname")])
def test_calls_leave_from_the_destinations_socket_and_the_others_from_the_default(proxy, peers, workers, attr):
    caller, carrier, other = peers(), peers(), peers()
    port = harness.free_port("both")
    socket_attr = f"socket=udp:{OTHER}:{port}" if attr == "socket" else "sockname=carrier"
    p = proxy(f"1 {carrier.uri('gw')} 0 0 {socket_attr}\n2 {other.uri('gw')} 0 0\n", ROUTES,
              listen=("udp:127.0.0.1:{port}", f'udp:{OTHER}:{{port}} name "carrier"'),
              args=["--workers", str(workers)], port=port)
    for bye_from_gateway in (False, True):
        at_gateway, at_caller = call(p, "carrier", caller, carrier, bye_from_gateway)
        assert set(at_gateway) == ({"INVITE", "ACK", "200"} if bye_from_gateway else {"INVITE", "ACK", "BYE"})
        # With one worker the listen socket itself sends; with two, the worker's own
        # socket at that address (its responses come back to it).
        assert {ip for ip, _ in at_gateway.values()} == {OTHER}, at_gateway
        if workers == 1:
            assert set(at_gateway.values()) == {(OTHER, port)}, at_gateway
        # The caller hears from the socket it called.
        assert {ip for ip, _ in at_caller.values()} == {HOST}, at_caller
        at_gateway, at_caller = call(p, "plain", caller, other, bye_from_gateway)
        assert {ip for ip, _ in at_gateway.values()} == {HOST}, at_gateway


def test_a_tcp_destination_is_connected_to_from_its_socket(proxy, peers):
    """Bind before connect, as Kamailio binds a connection to a forced socket: the
    gateway's connection comes from 127.0.0.2, and every request of the call, the
    caller's ACK and BYE included, goes on that one connection."""
    caller, carrier = peers(), peers("tcp")
    port = harness.free_port("both")
    p = proxy(f"1 {carrier.uri('gw')} 0 0 socket=tcp:{OTHER}:{port}\n", ROUTES.split("[[route]]\nset = 2")[0],
              listen=("udp:127.0.0.1:{port}", f"udp:{OTHER}:{{port}}", "tcp:127.0.0.1:{port}",
                      f"tcp:{OTHER}:{{port}}"), port=port)
    for bye_from_gateway in (False, True):
        # The gateway accepts one connection: the second call, as every request of the
        # first, must come on it.
        at_gateway, at_caller = call(p, "carrier", caller, carrier, bye_from_gateway)
        assert {ip for ip, _ in at_gateway.values()} == {OTHER}, at_gateway
        assert {ip for ip, _ in at_caller.values()} == {HOST}, at_caller


@pytest.mark.parametrize("mode", ["strict", "skip"])
def test_a_socket_that_is_not_a_listen_address_is_refused_at_load_and_reload(proxy, tmp_path, mode):
    port = harness.free_port("both")
    good = f"1 sip:gw@127.0.0.1:5999 0 0 socket=udp:{OTHER}:{port}\n"
    bad = "2 sip:gw@127.0.0.1:5998 0 0 socket=udp:127.0.0.9:5060\n"
    where = f"{tmp_path}/start/dispatcher.list:2"
    why = (f"bad attr socket=udp:127.0.0.9:5060: not a listen address of this proxy (listening on: "
           f"udp:127.0.0.1:{port}, udp:{OTHER}:{port})")
    config = f'[dispatcher]\nload_mode = "{mode}"\n'
    listen = ("udp:127.0.0.1:{port}", f"udp:{OTHER}:{{port}}")
    if mode == "strict":
        start = harness.Proxy(tmp_path / "start", good + bad, config, listen, port=port)
        with pytest.raises(RuntimeError, match="exited with 1"):
            start.start()
        assert f"{where}: {why}" in start.log() and "no dispatcher list loaded; not starting" in start.log()
        p = proxy(good, config, listen, port=port)
    else:
        p = proxy(good + bad, config, listen, port=port)
        assert f"{p.list_path}:2: {why} (line skipped" in p.log()
        assert set(p.states()) == {"sip:gw@127.0.0.1:5999"}
    p.list_path.write_text(good + bad)
    out = p.rpc("dispatcher.reload")
    if mode == "strict":
        assert out.stdout.startswith("error: 500 - Reload Failed") and why in out.stderr, out  # as kamcmd
        assert "the running one stays" in p.log()
    assert set(p.states()) == {"sip:gw@127.0.0.1:5999"}  # the running list, or the good line
