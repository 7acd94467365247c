"""A worker's two UDP sockets (gdispatch.net.udp): the shared listen socket and the
worker's own, whose receivers read each other's waiting datagrams before they sleep.

Real sockets on 127.0.0.1 and the real gevent hub, in process.
"""

from __future__ import annotations

import select
import socket

import gevent
import pytest

from gdispatch.config import Listen
from gdispatch.net import Transports
from tests.support.wait import wait_for


class Received:
    """What a Transports hands to on_message, with a wait for the n-th datagram."""

    def __init__(self):
        self.seen = []
        self.then = None  # a test's extra step on each datagram

    def __call__(self, data, source):
        self.seen.append((data, source.listener))
        if self.then is not None:
            self.then(data)

    def wait_for(self, n: int) -> list:
        return wait_for(lambda: len(self.seen) >= n and self.seen, 5, 0.01, message=lambda: self.seen)


@pytest.fixture
def worker():
    received = Received()
    transports = Transports((Listen("udp", "127.0.0.1", 0),), shared=True)
    transports.start(received)
    gevent.sleep(0)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    yield transports, received, peer
    peer.close()
    transports.close()


def test_a_datagram_on_the_listen_socket_is_read_before_the_hub_runs_anything_else(worker):
    """The caller's ACK arrives on the listen socket while the worker handles the 200 that
    came in on its own socket: the worker's receiver reads the ACK as soon as the 200 is
    done, before the greenlets the 200 woke (a greenlet spawned here stands for them)."""
    transports, received, peer = worker
    public = transports.listeners[0]
    private = public.private

    def then(data):
        if data == b"200":
            gevent.spawn(received.seen.append, "another greenlet")
            peer.sendto(b"ACK", (public.listen.host, public.listen.port))
            # Blocks the hub until the ACK is queued in the listen socket.
            assert select.select([public.sock], [], [], 5)[0]

    received.then = then
    peer.sendto(b"200", (private.listen.host, private.listen.port))
    received.wait_for(2)
    gevent.sleep(0)  # the spawned greenlet runs now, if it has not already
    assert received.seen == [(b"200", private), (b"ACK", public), "another greenlet"]


def test_each_socket_still_reads_its_own(worker):
    transports, received, peer = worker
    public = transports.listeners[0]
    for lst in (public, public.private):
        peer.sendto(b"x", (lst.listen.host, lst.listen.port))
    seen = received.wait_for(2)
    assert sorted(id(listener) for _d, listener in seen) == sorted((id(public), id(public.private)))


def test_a_listen_socket_not_started_yet_is_left_alone():
    """A worker starts its own socket first and reads the listen socket only once every
    worker is up (`start_listening`): its own socket's receiver leaves it alone until then."""
    received = Received()
    transports = Transports((Listen("udp", "127.0.0.1", 0),), shared=True)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        transports.start(received, listen=False)
        public = transports.listeners[0]
        peer.sendto(b"early", (public.listen.host, public.listen.port))
        assert select.select([public.sock], [], [], 5)[0]  # queued before the response comes
        peer.sendto(b"response", (public.private.listen.host, public.private.listen.port))
        # The receiver tries its twin right after the response, before it yields: by
        # the time this greenlet sees the response, the early datagram was left alone.
        assert [d for d, _l in received.wait_for(1)] == [b"response"]
        gevent.sleep(0)
        assert [d for d, _l in received.seen] == [b"response"]
        transports.start_listening()
        assert [d for d, _l in received.wait_for(2)] == [b"response", b"early"]
    finally:
        peer.close()
        transports.close()


def test_a_workers_request_for_a_chosen_socket_leaves_from_its_own_twin_at_that_address():
    """With several workers, a destination's socket is the worker's own twin of that
    listen address: same IP, so the gateway sees it, and the worker's port, so the
    responses come back to it."""
    received = Received()
    a, b = Listen("udp", "127.0.0.1", 0), Listen("udp", "127.0.0.2", 0)
    transports = Transports((a, b), shared=True)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    try:
        transports.start(received)
        first, second = transports.listeners
        chosen = transports.listener_at(second.listen, "udp", "127.0.0.1")
        assert chosen is second.private and chosen.listen.host == "127.0.0.2"
        assert transports.listener_at(second.listen, "tcp", "127.0.0.1") is None  # no TCP listener there
        assert transports.listener_at(second.listen, "udp", "::1") is None  # another address family
        transports.send("udp", peer.getsockname(), b"OPTIONS", listener=chosen)
        data, addr = peer.recvfrom(100)
        assert (data, addr) == (b"OPTIONS", ("127.0.0.2", chosen.listen.port))
        peer.sendto(b"200", addr)
        assert received.wait_for(1) == [(b"200", chosen)]
    finally:
        peer.close()
        transports.close()
