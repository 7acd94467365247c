"""A worker's two UDP sockets (gdispatch.transport): the shared listen socket and the
worker's own, whose receivers read each other's waiting datagrams before they sleep.

Real sockets on 127.0.0.1 and the real gevent hub, in process.
"""

from __future__ import annotations

import select
import socket
import time

import gevent
import pytest

from gdispatch.config import Listen
from gdispatch.transport import Transports


@pytest.fixture
def worker():
    seen = []
    handler = [lambda data, source: seen.append((data, source))]
    transports = Transports((Listen("udp", "127.0.0.1", 0),), lambda data, source: handler[0](data, source),
                            shared=True)
    transports.handler = handler
    transports.start()
    gevent.sleep(0)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    yield transports, seen, peer
    peer.close()
    transports.close()


def test_a_datagram_on_the_listen_socket_is_read_before_the_hub_runs_anything_else(worker):
    """The caller's ACK arrives on the listen socket while the worker handles the 200 that
    came in on its own socket: the worker's receiver reads the ACK as soon as the 200 is
    done, before the greenlets the 200 woke (a greenlet spawned here stands for them)."""
    transports, _seen, peer = worker
    public = transports.listeners[0]
    private = public.private
    order = []

    def on_message(data, source):
        order.append((data, source.listener))
        if data == b"200":
            gevent.spawn(order.append, "another greenlet")
            peer.sendto(b"ACK", (public.listen.host, public.listen.port))
            # Blocks the hub until the ACK is queued in the listen socket.
            assert select.select([public.sock], [], [], 5)[0]

    transports.handler[0] = on_message
    peer.sendto(b"200", (private.listen.host, private.listen.port))
    deadline = time.monotonic() + 5
    while len(order) < 3 and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert order == [(b"200", private), (b"ACK", public), "another greenlet"]


def test_each_socket_still_reads_its_own(worker):
    transports, seen, peer = worker
    public = transports.listeners[0]
    for lst in (public, public.private):
        peer.sendto(b"x", (lst.listen.host, lst.listen.port))
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert sorted(id(source.listener) for _d, source in seen) == sorted((id(public), id(public.private)))


def test_a_listen_socket_not_started_yet_is_left_alone():
    """A worker starts its own socket first and reads the listen socket only once every
    worker is up (`start_listening`): its own socket's receiver leaves it alone until then."""
    seen = []
    transports = Transports((Listen("udp", "127.0.0.1", 0),), lambda data, source: seen.append(data), shared=True)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        transports.start(listen=False)
        public = transports.listeners[0]
        peer.sendto(b"early", (public.listen.host, public.listen.port))
        assert select.select([public.sock], [], [], 5)[0]  # queued before the response comes
        peer.sendto(b"response", (public.private.listen.host, public.private.listen.port))
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            gevent.sleep(0.01)
        gevent.sleep(0.05)
        assert seen == [b"response"]
        transports.start_listening()
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert seen == [b"response", b"early"]
    finally:
        peer.close()
        transports.close()
