"""TCP accepting in gdispatch.net.tcp (gevent's StreamServer with the listener's own
admission), in process on 127.0.0.1: a banned source and a source over its cap are
reset at accept, and accepting goes on for the others; closing a listener while an
accept backoff waits leaves no timer behind."""

from __future__ import annotations

import errno
import os
import resource
import socket

import pytest
from gevent import socket as gsocket

from gdispatch.config import Listen
from gdispatch.net import Transports
from gdispatch.tcplimits import TcpLimits
from tests.support.wait import wait_for


@pytest.fixture
def transports():
    made = []

    def make(limits: TcpLimits) -> Transports:
        t = Transports((Listen("tcp", "127.0.0.1", 0),), tcp_limits=limits)
        t.start(lambda data, source: None)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def connect(t: Transports) -> socket.socket:
    return gsocket.create_connection(("127.0.0.1", t.listeners[0].sock.getsockname()[1]), timeout=5)


def reset_by_peer(s: socket.socket) -> bool:
    try:
        s.recv(1)
    except OSError as e:
        return e.errno == errno.ECONNRESET
    return False


def test_a_banned_source_is_reset_at_accept_and_counted(transports):
    t = transports(TcpLimits(max_connections=10, max_per_source=10, idle_timeout=60, message_timeout=10))
    t.set_banned(["127.0.0.1"])
    s = connect(t)
    try:
        wait_for(lambda: t.stats["tcp_refused_banned"] == 1, 5, 0.01)
        assert reset_by_peer(s)
        assert t.table.open == 0
    finally:
        s.close()
    t.set_banned([])
    s = connect(t)
    try:
        wait_for(lambda: t.table.open == 1, 5, 0.01)  # still accepting
    finally:
        s.close()


def test_a_source_over_its_cap_is_reset_and_the_others_kept(transports):
    t = transports(TcpLimits(max_connections=10, max_per_source=2, idle_timeout=60, message_timeout=10))
    kept = [connect(t), connect(t)]
    wait_for(lambda: t.table.open == 2, 5, 0.01)
    over = connect(t)
    try:
        wait_for(lambda: t.stats["tcp_refused_per_source"] == 1, 5, 0.01)
        assert reset_by_peer(over)
        assert t.table.open == 2
    finally:
        over.close()
        for s in kept:
            s.close()


def test_closing_during_an_accept_backoff_cancels_its_timer(transports):
    t = transports(TcpLimits(max_connections=10, max_per_source=10, idle_timeout=60, message_timeout=10))
    server = t.listeners[0].server
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    pending = socket.socket()
    try:
        pending.setblocking(False)
        free = os.dup(0)  # the lowest free descriptor made the first one over the limit
        os.close(free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (free, hard))
        pending.connect_ex(t.listeners[0].sock.getsockname())
        wait_for(lambda: t.stats["tcp_accept_failures"] >= 1, 5, 0.01)
        assert server._pause is not None  # waiting to accept again
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    t.close()
    pending.close()
    assert server._pause is None and not server.started
