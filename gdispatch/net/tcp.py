"""The TCP transport (RFC 3261 §18): connections and the listeners that accept them.

TCP is reliable and stream-oriented: a connection's byte stream is framed into messages
by Content-Length (§18.3, gdispatch.sip.frame_stream through
gdispatch.tcplimits.StreamReader), and a stream that cannot be framed cannot be
resynchronised, so its connection closes. One greenlet per connection reads it and hands
each message to the server side (`Transports.on_message`, §18.2.1). Connections are kept
by transport and peer address (`Transports.connections`) and reused for the responses (§18.2.2) and
for later requests to the same peer (§18.1.1). Writes never block the caller: what does
not fit in the kernel buffer is queued and written by the connection's own writer, in
order.

What TCP may hold is bounded (gdispatch.tcplimits decides, this module applies it): a
connection over [tcp] max_connections or max_connections_per_source, or from a source
gdispatch.flood banned, is accepted and reset at once; a connection closes when idle or
when a message takes too long to arrive; a message over the size limit gets its 413
before the connection closes; a failing accept backs off instead of spinning.

Accepting is gevent's StreamServer (as for gdispatch.control): it watches the listen
socket, accepts in batches and pauses; `_Acceptor` gives it this module's policy for a
failing accept, and runs the admission of each connection in its accept callback.

`open_files_limit` raises the process's limit on descriptors, which the [tcp] caps are
fitted under (gdispatch.tcplimits.fit_to_fds).
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent import get_hub
from gevent.server import StreamServer

from gdispatch import tcplimits
from gdispatch.config import Listen
from gdispatch.logsafe import SUMMARISE
from gdispatch.net.source import Source, TransportError, address_family
from gdispatch.net.tls import TlsPeer, TlsSession
from gdispatch.sip import MAX_MESSAGE_SIZE, ParseError
from gdispatch.tcplimits import AcceptBackoff, StreamReader

if TYPE_CHECKING:
    from gdispatch.net.transports import Transports

# The name the transport's log lines have always carried, whichever module logs them.
log = logging.getLogger("gdispatch.transport")

TCP_CONNECT_TIMEOUT = 3.0
TCP_LINGER = 1.0  # seconds a connection closed after an error answer waits for its peer to read it
# Accept errors that concern one connection only (it went away before it was accepted):
# the next accept is tried at once.
_ACCEPT_TRANSIENT = (errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN, errno.EPERM)
# The counters of the TCP side, in `stats` from the start.
TCP_COUNTERS = ("tcp_connections_open", tcplimits.REFUSED_TOTAL, tcplimits.REFUSED_PER_SOURCE, "tcp_refused_banned",
                "tcp_closed_idle", "tcp_closed_slow", "tcp_oversized", "tcp_evicted", "tcp_accept_failures")


class ConnectionFailed(TransportError):
    """A connection that could not be set up, already counted and logged (a TLS
    handshake that failed: gdispatch.net.tlsconn)."""


class TcpConnection:
    """One TCP connection, accepted or opened by us, reading and writing SIP messages.
    `source`: the source it counts against (gdispatch.tcplimits.source_key) when it
    was accepted, None when we opened it.

    What a secure transport adds (gdispatch.net.tlsconn.TlsConnection) goes in the
    hooks: `_secure` (after the connect), `_encode` and `_decode` (the bytes written
    and read), `_accepted`, `_lost` and `_done` (whether the peer took the connection,
    what an error before then means, and whether it ended the stream)."""

    # The TLS session of a TLS connection (gdispatch.net.tls.TlsSession); None over TCP.
    tls: TlsSession | None = None

    def __init__(self, owner: Transports, listener: TcpListener, addr: tuple[str, int],
                 sock: socket.socket | None, source: str | None = None, *, bind_ip: str | None = None):
        """`bind_ip`: a connection we open leaves from this address of ours (bound
        before the connect); None: the kernel chooses."""
        self.owner = owner
        self.listener = listener
        self.transport = listener.transport
        self.addr = addr
        self.bind_ip = bind_ip
        # Our end's address when it is known: the listener's for an accepted connection.
        self.local_ip = listener.listen.host if sock is not None else bind_ip
        self.sock = sock
        self.source = source
        self.created = time.time()
        # Messages may be written once the connection is set up (`_secure` too); until
        # then they wait in `pending`, not yet encoded.
        self.connected = sock is not None
        self.closed = False
        self.pending: deque[bytes] = deque()
        self.error_callbacks: list[Callable[[], None]] = []
        self.writer_waiting = False
        self.writer: gevent.Greenlet | None = None
        limits = owner.tcp_limits
        self.reader = StreamReader(time.monotonic(), limits.idle_timeout, limits.message_timeout)
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        try:
            if self.sock is None:
                self._connect()
            self._secure()
            self._established()
            self._flush()
            if self.closed:
                return  # the first write failed (`_flush` failed what waited)
            if self._accepted():
                self.error_callbacks.clear()  # what waited is written
            self._read_loop()
        except ConnectionFailed:
            self._fail()
        except OSError as e:
            if not self._lost(e) and not self.closed:
                # A peer that went away is anybody on the network; a destination we
                # cannot reach is the operator's to see.
                accepted = self.source is not None
                log.log(logging.INFO if accepted else logging.WARNING, "%s connection %s %s:%s failed: %s",
                        self.transport, "from" if accepted else "to", self.addr[0], self.addr[1], e, extra=SUMMARISE)
            self._fail()
        finally:
            self.close()

    def _established(self) -> None:
        """Connected and set up: what waited may be written (its error callbacks stay
        until it is, and until the peer took it: `_accepted`)."""
        if self.connected:
            return
        self.connected = True
        if self.pending:
            self.pending = deque(self._encode(data) for data in self.pending)

    # -- what a secure transport adds (gdispatch.net.tlsconn) ---------------------------

    def _secure(self) -> None:
        """Set up what the transport needs on the connected socket; raises OSError (or
        ConnectionFailed, already counted and logged) when it cannot."""

    def _encode(self, data: bytes) -> bytes:
        """A message as it goes on the wire."""
        return data

    def _decode(self, chunk: bytes) -> bytes | None:
        """What the messages carry in `chunk`, read from the socket (b"": the end of
        the stream); None: the connection ends."""
        return chunk or None

    def _held(self) -> bytes | None:
        """What the set-up read beyond its own bytes (a TLS 1.3 client may send its
        first message right behind its Finished: RFC 8446 §2); None: nothing."""
        return None

    def _accepted(self) -> bool:
        """The peer took the connection: an error from now on is no longer its refusal."""
        return True

    def _lost(self, e: OSError) -> bool:
        """`e` ended the connection before the peer took it (`_accepted`): True when
        that was counted and logged as a refusal."""
        return False

    def _done(self) -> bool:
        """The peer ended the stream after the messages just read."""
        return False

    def _connect(self) -> None:
        host, port = self.addr
        s = socket.socket(address_family(host), socket.SOCK_STREAM)
        s.setblocking(False)
        hub = get_hub()
        if self.bind_ip is not None:
            try:
                s.bind((self.bind_ip, 0))
            except OSError:
                s.close()
                raise
        err = s.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise OSError(err, errno.errorcode.get(err, str(err)))
        if err:
            w = hub.loop.io(s.fileno(), 2)
            try:
                with gevent.Timeout(TCP_CONNECT_TIMEOUT, OSError(errno.ETIMEDOUT, "connect timed out")):
                    hub.wait(w)
            except OSError:
                s.close()
                raise
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                s.close()
                raise OSError(err, errno.errorcode.get(err, str(err)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        if self.local_ip is None and not self.closed:
            # The kernel chose our address: now it is known, a request that must leave
            # from it may use this connection too.
            self.local_ip = s.getsockname()[0]
            self.owner.located(self)

    def _fail(self) -> None:
        callbacks, self.error_callbacks = self.error_callbacks, []
        self.pending.clear()
        for cb in callbacks:
            try:
                cb()
            except Exception:
                log.exception("error in a transport error callback")

    def send(self, data: bytes, on_error: Callable[[], None] | None = None) -> None:
        if self.closed:
            raise TransportError(errno.EPIPE, "connection closed")
        self.reader.touch(time.monotonic())
        if not self.connected:
            if on_error is not None:
                self.error_callbacks.append(on_error)
            self.pending.append(data)
            return
        self._write(self._encode(data))

    def _write(self, data: bytes) -> None:
        """Write bytes as they go on the wire, after what waits, without blocking."""
        if self.pending:
            self.pending.append(data)
            return
        sock = self.sock
        assert sock is not None  # connected
        try:
            n = sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self.close()
            raise TransportError(e.errno, f"{self.transport} send to {self.addr[0]}:{self.addr[1]}: "
                                          f"{e.strerror}") from None
        if n < len(data):
            self.pending.append(data[n:])
            if not self.writer_waiting:
                self.writer = gevent.spawn(self._flush)

    def _flush(self) -> None:
        hub = get_hub()
        sock = self.sock
        assert sock is not None  # connected
        w = None
        self.writer_waiting = True
        try:
            while self.pending and not self.closed:
                data = self.pending[0]
                try:
                    n = sock.send(data)
                except BlockingIOError:
                    n = 0
                if n == len(data):
                    self.pending.popleft()
                elif n:
                    self.pending[0] = data[n:]
                else:
                    if w is None:
                        w = hub.loop.io(sock.fileno(), 2)
                    hub.wait(w)
        except OSError as e:
            if not self._lost(e):
                log.warning("%s write to %s:%s failed: %s", self.transport, self.addr[0], self.addr[1], e)
            self.close()
            self._fail()  # the messages that opened the connection, if it was their first write
        finally:
            self.writer_waiting = False

    def _read_loop(self) -> None:
        sock = self.sock
        assert sock is not None  # connected
        hub = get_hub()
        w = hub.loop.io(sock.fileno(), 1)
        reader = self.reader
        handle = self.owner.on_message
        clock = time.monotonic
        transport = self.transport
        # What came in the same read as the set-up's last bytes waits in the decoder: it
        # is taken first, the socket may have nothing more to say.
        chunk = self._held()
        while not self.closed:
            if chunk is None:
                try:
                    raw = sock.recv(65536)
                except BlockingIOError:
                    deadline, why = reader.deadline()
                    wait = deadline - clock()
                    if wait <= 0:
                        self._expired(why)
                        return
                    with gevent.Timeout(wait, False):
                        hub.wait(w)
                    continue
                chunk = self._decode(raw)
                if chunk is None:
                    return
            now = clock()
            messages = reader.feed(chunk, now) if chunk else []
            chunk = None
            if messages:
                self.owner.table.active(self)
            for msg in messages:
                try:
                    handle(msg, Source(transport, self.addr, self.listener, self))
                except Exception:
                    log.exception("error handling a message from %s:%s", self.addr[0], self.addr[1])
            if reader.error is not None:
                self._broken(reader.error)
                return
            if self._done():
                return
            deadline, why = reader.deadline()
            if now >= deadline:  # a peer that never pauses is held to the same deadlines
                self._expired(why)
                return

    def _expired(self, why: str) -> None:
        stats = self.owner.stats
        if why == tcplimits.SLOW:
            stats["tcp_closed_slow"] += 1
            log.warning("closing tcp connection from %s:%s: no complete message within %g s", self.addr[0],
                        self.addr[1], self.reader.message_timeout)
        else:
            stats["tcp_closed_idle"] += 1
            log.debug("closing tcp connection with %s:%s: idle for %g s", self.addr[0], self.addr[1],
                      self.reader.idle_timeout)

    def _broken(self, e: ParseError) -> None:
        """The stream cannot be framed: it cannot be resynchronised either (RFC 3261
        §18.3), so the connection closes; a message too large gets its 413 first when its
        head allows one (gdispatch.tcplimits.too_large_answer)."""
        stats = self.owner.stats
        if e.status != 413:
            log.warning("closing tcp connection from %s:%s: %s", self.addr[0], self.addr[1], e.reason)
            stats["bad_stream"] = stats.get("bad_stream", 0) + 1
            return
        stats["tcp_oversized"] += 1
        answer = tcplimits.too_large_answer(self.reader.buffer, self.addr[0])
        log.warning("closing tcp connection from %s:%s: a message over %d bytes%s", self.addr[0], self.addr[1],
                    MAX_MESSAGE_SIZE, " (answered 413)" if answer else "")
        if answer is not None:
            self._answer_and_linger(answer)

    def _answer_and_linger(self, answer: bytes) -> None:
        """Send `answer`, then half-close and read what the peer still sends for up to
        TCP_LINGER seconds: a close with unread input would reset the connection and could
        destroy the answer before the peer reads it."""
        sock = self.sock
        if sock is None:
            return
        hub = get_hub()
        try:
            self.send(answer)
            with gevent.Timeout(TCP_LINGER, False):
                if self.writer is not None and self.pending:
                    self.writer.join()
                sock.shutdown(socket.SHUT_WR)
                w = hub.loop.io(sock.fileno(), 1)
                drained = 0
                while drained < 16 * MAX_MESSAGE_SIZE:
                    try:
                        chunk = sock.recv(65536)
                    except BlockingIOError:
                        hub.wait(w)
                        continue
                    if not chunk:
                        break
                    drained += len(chunk)
        except OSError:  # TransportError too: the peer is gone, nothing is left to do
            pass

    def abort(self) -> None:
        """Close now, from another greenlet: the connection's own ends at once."""
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.owner.forget(self)
        # The connection's greenlets end with it, from whichever greenlet closes it: one
        # left waiting on the socket would keep a watcher on a descriptor that the next
        # socket opened may be given.
        current = gevent.getcurrent()
        for g in (self.greenlet, self.writer):
            if g is not None and g is not current and not g.dead:
                g.kill(block=False)
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass


class TcpListener:
    """A TCP listen address (RFC 3261 §18.2.1): the connections it accepts, within the
    limits, become `TcpConnection`s; it is also the listener the connections we open
    count as leaving from."""

    transport = "tcp"

    def connection(self, addr: tuple[str, int], sock: socket.socket | None, source: str | None = None, *,
                   bind_ip: str | None = None, peer: TlsPeer | None = None) -> TcpConnection:
        """A connection on this listener's transport: accepted (`sock`, from `source`),
        or one to open to `addr` (over TLS, to `peer`: gdispatch.net.tlsconn)."""
        return TcpConnection(self.owner, self, addr, sock, source, bind_ip=bind_ip)

    def __init__(self, listen: Listen, owner: Transports, *, reuseport: bool = False, index: int = 0):
        """`index`: its position in Transports.listeners, the same in every worker."""
        self.listen = listen
        self.owner = owner
        self.public = self
        self.private = None
        self.index = index
        sock = socket.socket(address_family(listen.host), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            # Several workers accept on the port; a connection stays with its worker.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((listen.host, listen.port))
        sock.listen(1024)
        sock.setblocking(False)
        self.sock = sock
        self.started = False
        self.backoff = AcceptBackoff()
        self.server = _Acceptor(self)

    def start(self) -> None:
        self.started = True
        self.server.start()

    def admit(self, s: socket.socket, addr: tuple) -> None:
        """A connection just accepted: refused (reset) when its source is banned or over
        a cap, else served by a new TcpConnection, which owns the socket from then on."""
        owner = self.owner
        stats = owner.stats
        if addr[0] in owner.banned:
            stats["tcp_refused_banned"] += 1  # a flood's source (gdispatch.flood)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            s.close()
            return
        source = tcplimits.source_key(addr[0])
        refusal = owner.table.refusal(source)
        if refusal is not None:
            # Accepted and closed at once, so that the kernel's queue does not fill; a
            # reset (no FIN handshake, no TIME_WAIT kept here).
            stats[refusal] += 1
            log.warning("refused a tcp connection from %s:%s: %s reached", addr[0], addr[1],
                        "[tcp].max_connections" if refusal == tcplimits.REFUSED_TOTAL
                        else "[tcp].max_connections_per_source")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            s.close()
            return
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = self.connection((addr[0], addr[1]), s, source)
        owner.remember(conn)

    def close(self) -> None:
        self.server.close()
        self.sock.close()


def open_files_limit() -> int:
    """Raise the soft limit on open files (RLIMIT_NOFILE) to the hard one and return
    it: the TCP caps are fitted below it (gdispatch.tcplimits.fit_to_fds). Worker
    processes inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:  # not on Linux, where nr_open bounds the hard limit
        return soft if soft != resource.RLIM_INFINITY else 1 << 20
    if soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as e:
        log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, e)
        return soft
    log.info("open-files limit raised from %d to %d", soft, hard)
    return hard


class _Acceptor(StreamServer):
    """The accepting of one TcpListener. StreamServer's own answer to a failing accept
    does not fit a proxy: it prints a traceback for every failure, waits the same way
    for a connection that went away before it was accepted as for a process out of
    descriptors, and counts nothing. So `do_read` (the accept) is this class's: what
    concerns one connection only is passed over, a lack of resources (EMFILE, ENFILE,
    ENOBUFS, ENOMEM) is counted and logged through the listener's AcceptBackoff and
    pauses accepting for its delay."""

    def __init__(self, listener: TcpListener):
        # spawn=None: `admit` runs in the accept callback itself. It does not block; an
        # admitted connection gets its greenlet from TcpConnection, a refused one none.
        super().__init__(listener.sock, listener.admit, spawn=None)
        self.listener = listener
        self._pause: Any = None  # the hub timer that ends an accept backoff

    def do_read(self) -> tuple[socket.socket, tuple] | None:
        """One accepted connection, or None to end this round of accepts."""
        listener = self.listener
        while True:
            try:
                s, addr = listener.sock.accept()
            except BlockingIOError:
                return None
            except OSError as e:
                if e.errno in (errno.EBADF, errno.EINVAL):
                    self.stop_accepting()  # the socket is closed, or no longer listens
                    return None
                if e.errno in _ACCEPT_TRANSIENT:
                    continue
                # Out of descriptors or buffers: the connection waits in the kernel's
                # queue, which keeps the socket readable; accepting again at once would spin.
                listener.owner.stats["tcp_accept_failures"] += 1
                delay, line = listener.backoff.failed(time.monotonic(), e)
                if line:
                    log.warning("%s", line)
                self.stop_accepting()
                self._cancel_pause()
                self._pause = self.loop.timer(delay)
                self._pause.start(self._resume)
                return None
            line = listener.backoff.succeeded()
            if line:
                log.warning("%s", line)
            return s, addr

    def _resume(self) -> None:
        if self.started:
            self.start_accepting()

    def _cancel_pause(self) -> None:
        if self._pause is not None:
            self._pause.stop()
            self._pause.close()
            self._pause = None

    def do_close(self, *args: Any) -> None:
        """Called by StreamServer once `admit` returns: the socket is left alone, it is
        the connection's now (or already closed)."""

    def close(self) -> None:
        self._cancel_pause()
        super().close()


_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection
