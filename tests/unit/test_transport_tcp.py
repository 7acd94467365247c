"""The TCP side of gdispatch.net (tcp.py) under its limits, in process: real sockets on
127.0.0.1 and the real gevent hub. A connection the proxy opens when the table is full
makes room by closing the accepted one idle longest; an accept that fails for want of
descriptors backs off and is logged once, not once per try."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket

import gevent
import pytest
from gevent import socket as gsocket

from gdispatch.config import Listen
from gdispatch.net import TransportError, Transports
from gdispatch.tcplimits import TcpLimits
from tests.support.wait import wait_for

OPTIONS = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKa\r\n"
           b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
           b"Content-Length: 0\r\n\r\n")


@pytest.fixture
def transports():
    made = []

    def make(limits: TcpLimits) -> Transports:
        received = []
        t = Transports((Listen("tcp", "127.0.0.1", 0),), tcp_limits=limits)
        t.received = received
        t.start(lambda data, source: received.append((data, source)))
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def port_of(t: Transports) -> int:
    return t.listeners[0].sock.getsockname()[1]


def client(t: Transports) -> socket.socket:
    return gsocket.create_connection(("127.0.0.1", port_of(t)), timeout=5)


def test_opening_a_connection_when_the_table_is_full_closes_the_accepted_one_idle_longest(transports):
    t = transports(TcpLimits(max_connections=2, max_per_source=2, idle_timeout=60, message_timeout=10))
    first, second = client(t), client(t)
    wait_for(lambda: t.table.open == 2, 5, 0.01)
    second.sendall(OPTIONS)  # the second carried a message: the first is idle longest
    wait_for(lambda: len(t.received) == 1, 5, 0.01)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    try:
        t.send("tcp", server.getsockname(), OPTIONS)
        assert t.stats["tcp_evicted"] == 1 and t.table.open == 2
        assert first.recv(100) == b""  # closed to make room
        second.sendall(OPTIONS)
        wait_for(lambda: len(t.received) == 2, 5, 0.01)  # still served
        peer, _ = server.accept()
        peer.settimeout(5)
        assert peer.recv(len(OPTIONS)) == OPTIONS
        peer.close()
    finally:
        server.close()
        first.close()
        second.close()


def test_with_only_connections_we_opened_a_new_one_is_a_transport_error(transports):
    t = transports(TcpLimits(max_connections=1, max_per_source=1, idle_timeout=60, message_timeout=10))
    servers = []
    try:
        for _ in range(2):
            srv = socket.socket()
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            servers.append(srv)
        t.send("tcp", servers[0].getsockname(), OPTIONS)
        with pytest.raises(TransportError, match=r"\[tcp\].max_connections \(1\) reached"):
            t.send("tcp", servers[1].getsockname(), OPTIONS)
    finally:
        for srv in servers:
            srv.close()


def test_an_accept_without_descriptors_backs_off_and_is_logged_once_until_it_works_again(transports, caplog):
    t = transports(TcpLimits(max_connections=10, max_per_source=10, idle_timeout=60, message_timeout=10))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    pending = socket.socket()
    caplog.set_level(logging.WARNING, logger="gdispatch.transport")
    try:
        pending.setblocking(False)
        # No descriptor left for the proxy's accept (the limit is on descriptor numbers:
        # the lowest free one is made the first one over it): the connection waits in the
        # kernel's queue.
        free = os.dup(0)
        os.close(free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (free, hard))
        pending.connect_ex(("127.0.0.1", port_of(t)))
        wait_for(lambda: t.stats["tcp_accept_failures"] >= 5, 5, 0.01)  # 0.05 + 0.1 + 0.2 + 0.4 s...
        gevent.sleep(0.5)
        failures = t.stats["tcp_accept_failures"]
        assert failures < 10  # waits that grow, not a try every few milliseconds
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    wait_for(lambda: t.table.open == 1, 5, 0.01)
    pending.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("tcp accept failed: [Errno 24]")
    assert lines[1].startswith("tcp accept works again (")


@contextlib.contextmanager
def two_listens_and_a_peer():
    """Transports on two TCP listen addresses (127.0.0.1, 127.0.0.2) and a peer that
    accepts connections on 127.0.0.1: (transports, the peer's listening socket)."""
    t = Transports((Listen("tcp", "127.0.0.1", 0), Listen("tcp", "127.0.0.2", 0)))
    t.start(lambda data, source: None)
    server = gsocket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(5)
    try:
        yield t, server
    finally:
        server.close()
        t.close()


def test_a_chosen_socket_opens_its_connection_from_its_address_and_reuses_only_that_one():
    """Two TCP listen addresses: a message for the socket at 127.0.0.2 goes on a
    connection from 127.0.0.2 (bound before the connect, as Kamailio binds to a forced
    socket); one for 127.0.0.1 does not reuse it; without a chosen socket, any
    connection to the peer will do."""
    with two_listens_and_a_peer() as (t, server):
        first, second = t.listeners
        t.send("tcp", server.getsockname(), OPTIONS, listener=second, bind=True)
        peer, addr = server.accept()
        assert addr[0] == "127.0.0.2"
        t.send("tcp", server.getsockname(), OPTIONS, listener=second, bind=True)
        t.send("tcp", server.getsockname(), OPTIONS, listener=first, bind=True)
        other, addr = server.accept()
        assert addr[0] == "127.0.0.1"
        t.send("tcp", server.getsockname(), OPTIONS, listener=first)  # any connection to the peer
        for conn in (peer, other):
            conn.settimeout(5)
            got = b""
            while len(got) < 2 * len(OPTIONS):
                got += conn.recv(4096)
            assert got == 2 * OPTIONS
            conn.close()
        assert t.table.open == 2


def test_a_connection_the_kernel_gave_an_address_serves_the_socket_at_that_address():
    """The INVITE of a destination without a socket opened a connection from the
    kernel's choice of address; the requests inside its dialog, which leave from the
    socket our Route entry names, reuse it when that is the same address."""
    with two_listens_and_a_peer() as (t, server):
        first, second = t.listeners
        t.send("tcp", server.getsockname(), OPTIONS, listener=first)
        peer, addr = server.accept()
        assert addr[0] == "127.0.0.1"
        wait_for(lambda: t.bound.get(("tcp", server.getsockname(), "127.0.0.1")), 5, 0.01)
        t.send("tcp", server.getsockname(), OPTIONS, listener=first, bind=True)
        peer.settimeout(5)
        got = b""
        while len(got) < 2 * len(OPTIONS):
            got += peer.recv(4096)
        assert got == 2 * OPTIONS and t.table.open == 1
        peer.close()


def test_closing_the_transports_ends_every_connection_s_greenlet(transports):
    # A connection's greenlet waiting on its socket must not outlive it: its watcher
    # would go on watching a descriptor the next socket may be given.
    t = transports(TcpLimits(max_connections=8, max_per_source=8, idle_timeout=60, message_timeout=10))
    peer = client(t)
    wait_for(lambda: t.table.open == 1, 5, 0.01)
    [conn] = t.connections.values()
    gevent.sleep(0.05)  # it waits for a message
    assert not conn.greenlet.dead
    t.close()
    wait_for(lambda: conn.greenlet.dead, 2, 0.01)
    peer.close()
