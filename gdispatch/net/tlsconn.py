"""SIP over TLS connections (RFC 3261 §26.2): `TlsConnection`, a connection of
gdispatch.net.tcp whose bytes go through a `TlsSession` (gdispatch.net.tls), and
`TlsListener`, a `tls:` listen address.

What TLS adds to a TCP connection, in the hooks `TcpConnection` leaves for it:

- `_secure`: the handshake, once connected, within [tls].handshake_timeout: a peer
  that never ends it holds its connection no longer (it counts against the [tcp] caps
  meanwhile). A failure is counted (`tls_handshake_failures`, `_timeouts`) and logged
  with the check that failed; towards a destination it is a transport error, which the
  call fails over on at once and the prober counts, as a refused connection.
- `_encode`, `_decode`, `_held`: the messages encrypted on the way out, decrypted on
  the way in, with what TLS itself sends (session tickets, alerts) written in between;
  a close_notify ends the connection after the messages it followed.
- `_accepted`, `_lost`: a TLS 1.3 server judges our certificate (or its absence) after
  our side of the handshake is over (RFC 8446 §4.4.2.4): until its first record, a
  connection that ends is its refusal, a handshake failure too, and what was written
  on it fails over at once.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

import gevent
from gevent import get_hub

from gdispatch.logsafe import SUMMARISE
from gdispatch.net.source import TransportError
from gdispatch.net.tcp import ConnectionFailed, TcpConnection, TcpListener
from gdispatch.net.tls import TlsPeer, TlsSession, describe

if TYPE_CHECKING:
    from gdispatch.net.transports import Transports

log = logging.getLogger("gdispatch.transport")


class TlsConnection(TcpConnection):
    """A TCP connection carrying TLS (`session`, its handshake not begun)."""

    tls: TlsSession

    def __init__(self, owner: Transports, listener: TcpListener, addr: tuple[str, int],
                 sock: socket.socket | None, source: str | None = None, *, bind_ip: str | None = None,
                 session: TlsSession):
        self.tls = session
        super().__init__(owner, listener, addr, sock, source, bind_ip=bind_ip)
        self.connected = False  # the handshake first: what is sent meanwhile waits

    def _secure(self) -> None:
        """The TLS handshake, within [tls].handshake_timeout of now: a peer that never
        ends it holds its connection no longer (and counts against the [tcp] caps until
        then). A failure is counted and logged with the check that failed."""
        tls = self.tls
        sock = self.sock
        assert sock is not None
        owner = self.owner
        stats = owner.stats
        assert owner.tls is not None  # a TLS connection exists only with the contexts
        hub = get_hub()
        r = hub.loop.io(sock.fileno(), 1)
        who = (f"from {self.addr[0]}:{self.addr[1]}" if tls.server_side
               else f"to {self.addr[0]}:{self.addr[1]} ({tls.obj.server_hostname or 'no name'})")
        timer = gevent.Timeout(owner.tls.handshake_timeout)
        timer.start()
        try:
            data = b""
            while True:
                try:
                    done = tls.handshake(data)
                finally:
                    out = tls.outgoing()  # our handshake records, or the alert that ends it
                    if out:
                        self._write_all(out)
                if done:
                    break
                data = self._recv(r)
                if not data:
                    raise TransportError(errno.ECONNRESET, "the peer closed the connection")
        except ssl.SSLError as e:
            why = describe(e)
        except gevent.Timeout as e:
            if e is not timer:
                raise
            stats["tls_handshake_timeouts"] += 1
            why = f"not over within {owner.tls.handshake_timeout:g} s"
        except OSError as e:
            why = describe(e)
        else:
            if not tls.verdict_pending:  # else once the server accepted us (`_plaintext`)
                stats["tls_handshakes"] += 1
            return
        finally:
            timer.close()
        stats["tls_handshake_failures"] += 1
        # A client that fails is anybody on the network; a destination that fails is
        # the operator's to see (and fails over like a refused connection).
        log.log(logging.INFO if tls.server_side else logging.WARNING, "tls handshake %s failed: %s", who, why,
                extra=SUMMARISE)
        raise ConnectionFailed(errno.ECONNABORTED, f"tls handshake failed: {why}")

    def _refused(self, e: BaseException) -> ConnectionFailed:
        """A TLS 1.3 server ended the connection before its first record after the
        handshake: it refused us (our certificate, or the want of one). A handshake
        failure, counted and logged as one, with the server's alert when one came
        before the connection ended (read now: a reset may follow the alert, and a
        write fail on it first). Returns the error to end the connection with; what
        waited is failed by the caller (`_fail`)."""
        tls, sock = self.tls, self.sock
        assert sock is not None
        tls.verdict_pending = False
        why = describe(e)
        if not isinstance(e, ssl.SSLError):
            try:
                data = sock.recv(65536)
                if data:
                    tls.feed(data)
            except ssl.SSLError as alert:
                why = describe(alert)
            except OSError:
                pass
        self.owner.stats["tls_handshake_failures"] += 1
        log.warning("tls handshake to %s:%s (%s) failed: %s", self.addr[0], self.addr[1],
                    tls.obj.server_hostname or "no name", why)
        return ConnectionFailed(errno.ECONNABORTED, f"tls handshake failed: {why}")

    def _recv(self, watcher: Any) -> bytes:
        sock = self.sock
        assert sock is not None
        while True:
            try:
                return sock.recv(65536)
            except BlockingIOError:
                get_hub().wait(watcher)

    def _write_all(self, data: bytes) -> None:
        """Write `data` now, waiting for the socket as needed (the handshake's records,
        before anything else is written on the connection)."""
        sock = self.sock
        assert sock is not None
        w = None
        while data:
            try:
                n = sock.send(data)
            except BlockingIOError:
                n = 0
            if n:
                data = data[n:]
            else:
                if w is None:
                    w = get_hub().loop.io(sock.fileno(), 2)
                get_hub().wait(w)

    def _encode(self, data: bytes) -> bytes:
        try:
            return self.tls.encrypt(data)
        except ssl.SSLError as e:
            self.close()
            raise TransportError(errno.EPIPE, f"tls send to {self.addr[0]}:{self.addr[1]}: {describe(e)}") from None

    def _decode(self, chunk: bytes) -> bytes | None:
        if not chunk:  # the end of the stream
            if self.tls.verdict_pending:
                raise self._refused(TransportError(errno.ECONNRESET, "the peer closed the connection"))
            return None
        return self._plaintext(chunk)

    def _held(self) -> bytes | None:
        plain = self._plaintext(b"")
        return plain or None

    def _plaintext(self, chunk: bytes) -> bytes | None:
        tls = self.tls
        try:
            plain = tls.feed(chunk)
        except ssl.SSLError as e:
            if tls.verdict_pending:
                raise self._refused(e) from None
            log.info("closing tls connection with %s:%s: %s", self.addr[0], self.addr[1], describe(e),
                     extra=SUMMARISE)
            return None
        if tls.accepted(plain or b""):
            self.owner.stats["tls_handshakes"] += 1
            self.error_callbacks.clear()
        out = tls.outgoing()  # a session ticket, a key update's answer
        if out:
            self._write(out)
        if plain is None:  # close_notify
            if tls.verdict_pending:
                raise self._refused(TransportError(errno.ECONNRESET, "the peer closed the connection"))
            return None
        return plain

    def _accepted(self) -> bool:
        return not self.tls.verdict_pending

    def close(self) -> None:
        """Our close_notify first, when the session is established (RFC 8446 §6.1, RFC
        5246 §7.2.1: the peer can tell the end of the stream from a truncation), written
        if the socket takes it at once; then TCP's close."""
        sock = self.sock
        if not self.closed and sock is not None and self.tls.established:
            try:
                self.tls.obj.unwrap()
            except (ssl.SSLError, ValueError):
                pass  # the peer's close_notify not read yet: ours is written all the same
            try:
                out = self.tls.outgoing()
                if out and not self.pending:
                    sock.send(out)
            except OSError:
                pass
        super().close()

    def _lost(self, e: OSError) -> bool:
        if not self.tls.verdict_pending:
            return False
        self._refused(e)
        return True

    def _done(self) -> bool:
        return self.tls.peer_closed


class TlsListener(TcpListener):
    """A TLS listen address (RFC 3261 §26.2): TCP's, with a TLS session on each
    connection, accepted or opened (gdispatch.net.tls.TlsContexts gives the context)."""

    transport = "tls"

    def connection(self, addr: tuple[str, int], sock: socket.socket | None, source: str | None = None, *,
                   bind_ip: str | None = None, peer: TlsPeer | None = None) -> TcpConnection:
        contexts = self.owner.tls
        assert contexts is not None  # a tls: listen address needs [tls] (gdispatch.config)
        if sock is not None:
            assert contexts.server is not None
            session = TlsSession(contexts.server, server_side=True)
        else:
            ctx, name = contexts.client_for(peer or TlsPeer(addr[0]))
            session = TlsSession(ctx, server_side=False, server_name=name)
        return TlsConnection(self.owner, self, addr, sock, source, bind_ip=bind_ip, session=session)
