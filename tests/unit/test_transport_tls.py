"""A TLS connection of gdispatch.net.tcp (TcpConnection with a TlsSession) on one end of
a socketpair, in process on the real gevent hub, its owner a stand-in for Transports:
the handshake has a deadline a silent or trickling peer cannot stretch; a message sent
before the handshake is over waits as plaintext and leaves encrypted once it is; the
records that come with the handshake's last ones, and a message read together with
the close_notify after it, are not left unread."""

from __future__ import annotations

import shutil
import socket
import ssl
import types

import gevent
import pytest
from gevent import socket as gsocket

from gdispatch.config import Listen
from gdispatch.net.tcp import TCP_COUNTERS, TcpConnection
from gdispatch.net.tls import TLS_COUNTERS, TlsContexts, TlsSession
from gdispatch.net.tlsconn import TlsConnection
from gdispatch.settings import Tls, TlsProfile
from gdispatch.tcplimits import TcpLimits
from tests.support.tlspeers import Pki
from tests.support.wait import wait_for

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make certificates")

NAME = "gw.test"
PEER = ("127.0.0.1", 40000)
LISTEN = Listen("tls", "127.0.0.1", 5061)


def message(n: int) -> bytes:
    return (f"OPTIONS sip:{NAME} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bK{n}\r\n"
            f"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:{NAME}>\r\nCall-ID: c{n}\r\nCSeq: {n} OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n").encode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    pki = Pki(tmp_path_factory.mktemp("pki"))
    pki.gw = pki.cert("gw", NAME)
    return pki


class Owner:
    """What a TcpConnection asks of its Transports: the limits, the counters, the TLS
    contexts, where messages go, and being told when it closes."""

    def __init__(self, contexts: TlsContexts):
        self.tcp_limits = TcpLimits(max_connections=10, max_per_source=10, idle_timeout=60, message_timeout=10)
        self.stats = dict.fromkeys(TCP_COUNTERS + TLS_COUNTERS, 0)
        self.tls = contexts
        self.table = types.SimpleNamespace(active=lambda conn: None)
        self.received: list[bytes] = []
        self.forgotten: list[TcpConnection] = []

    def on_message(self, data: bytes, source) -> None:
        assert source.transport == "tls"
        self.received.append(data)

    def forget(self, conn: TcpConnection) -> None:
        self.forgotten.append(conn)


def contexts(pki, handshake_timeout: float = 5.0) -> TlsContexts:
    return TlsContexts(Tls(server=TlsProfile(certificate=str(pki.gw.cert), private_key=str(pki.gw.key)),
                           client=TlsProfile(verify_certificate=True, ca_list=str(pki.ca)),
                           handshake_timeout=handshake_timeout), server=True)


def connection(owner: Owner, sock: socket.socket, *, server_side: bool) -> TcpConnection:
    sock.setblocking(False)
    listener = types.SimpleNamespace(transport="tls", listen=LISTEN)
    tls = (TlsSession(owner.tls.server, server_side=True) if server_side
           else TlsSession(owner.tls.client, server_side=False, server_name=NAME))
    return TlsConnection(owner, listener, PEER, sock, "127.0.0.1" if server_side else None,  # type: ignore[arg-type]
                         session=tls)


@pytest.fixture
def pair():
    """A socketpair: (the end a TcpConnection gets, the test's end as a gevent socket)."""
    a, b = socket.socketpair()
    peer = gsocket.socket(fileno=b.detach())
    peer.settimeout(5)
    yield a, peer
    peer.close()
    a.close()


def client_handshake(sock, session: TlsSession) -> None:
    """The test's end as a TLS client over `sock`, until its side is done (its last
    flight not sent yet: the caller sends it with `session.outgoing()`)."""
    done = session.handshake()
    while not done:
        sock.sendall(session.outgoing())
        done = session.handshake(sock.recv(65536))


def test_a_silent_peer_is_dropped_at_the_handshake_deadline(pki, pair):
    owner = Owner(contexts(pki, handshake_timeout=0.2))
    mine, peer = pair
    conn = connection(owner, mine, server_side=True)
    wait_for(lambda: conn.closed, 5, 0.02)
    assert owner.stats["tls_handshake_timeouts"] == 1 and owner.stats["tls_handshake_failures"] == 1
    assert owner.stats["tls_handshakes"] == 0 and owner.forgotten == [conn]
    assert peer.recv(100) == b""


def test_a_peer_trickling_its_hello_does_not_stretch_the_deadline(pki, pair):
    """The deadline is for the whole handshake, not for each read (a slowloris sending
    a byte at a time would hold the connection for ever)."""
    owner = Owner(contexts(pki, handshake_timeout=0.3))
    mine, peer = pair
    conn = connection(owner, mine, server_side=True)
    hello = TlsSession(owner.tls.client, server_side=False, server_name=NAME)
    hello.handshake()
    data = hello.outgoing()
    for byte in data[:-1]:  # never the whole ClientHello
        if conn.closed:
            break
        peer.sendall(bytes([byte]))
        gevent.sleep(0.02)
    wait_for(lambda: conn.closed, 5, 0.02)
    assert owner.stats["tls_handshake_timeouts"] == 1


def test_a_failed_handshake_is_counted_and_fails_what_waited(pki, pair):
    owner = Owner(contexts(pki))
    mine, peer = pair
    conn = connection(owner, mine, server_side=True)
    peer.sendall(message(1))  # plaintext SIP on the TLS port
    wait_for(lambda: conn.closed, 5, 0.02)
    assert owner.stats["tls_handshake_failures"] == 1 and owner.stats["tls_handshake_timeouts"] == 0
    assert owner.received == []


def test_messages_sent_before_the_handshake_leave_encrypted_once_it_is_over(pki):
    """A connection we open takes the request at once; it waits as plaintext and is
    encrypted when the handshake is over, before what is sent after."""
    a, b = socket.socketpair()
    server_owner, client_owner = Owner(contexts(pki)), Owner(contexts(pki))
    failed = []
    client = connection(client_owner, a, server_side=False)
    client.send(message(1), on_error=lambda: failed.append(1))
    client.send(message(2))
    assert not client.connected and list(client.pending) == [message(1), message(2)]
    server = connection(server_owner, b, server_side=True)
    wait_for(lambda: client.connected, 5, 0.01)
    client.send(message(3))
    wait_for(lambda: len(server_owner.received) == 3, 5, 0.01)
    assert server_owner.received == [message(1), message(2), message(3)]
    assert client_owner.stats["tls_handshakes"] == 1 and server_owner.stats["tls_handshakes"] == 1
    assert client.error_callbacks == [] and failed == []  # once established, no longer its to fail
    server.send(message(4))
    wait_for(lambda: client_owner.received == [message(4)], 5, 0.01)
    client.close()
    server.close()


def test_a_message_that_comes_with_the_clients_finished_is_read(pki, pair):
    """TLS 1.3: the client may send its first message right behind its Finished (RFC
    8446 §2), and both can come in one read; what follows the handshake's last record
    must be read then, not when the peer sends more."""
    owner = Owner(contexts(pki))
    mine, peer = pair
    conn = connection(owner, mine, server_side=True)
    session = TlsSession(owner.tls.client, server_side=False, server_name=NAME)
    client_handshake(peer, session)
    finished = session.outgoing()
    peer.sendall(finished + session.encrypt(message(1)))
    wait_for(lambda: owner.received == [message(1)], 5, 0.01)
    assert not conn.closed


def test_a_message_read_with_the_close_notify_after_it_is_handled_then_the_connection_closes(pki, pair):
    owner = Owner(contexts(pki))
    mine, peer = pair
    conn = connection(owner, mine, server_side=True)
    session = TlsSession(owner.tls.client, server_side=False, server_name=NAME)
    client_handshake(peer, session)
    peer.sendall(session.outgoing())
    wait_for(lambda: conn.connected, 5, 0.01)
    data = session.encrypt(message(1))
    with pytest.raises(ssl.SSLWantReadError):
        session.obj.unwrap()
    peer.sendall(data + session.outgoing())  # the TCP connection stays open
    wait_for(lambda: conn.closed, 5, 0.01)
    assert owner.received == [message(1)]
    # Ours came back before the TCP close: the end of the stream, not a truncation.
    rest = b""
    while chunk := peer.recv(65536):
        rest += chunk
    assert session.feed(rest) is None and session.peer_closed
