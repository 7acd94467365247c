"""The network shell: UDP and TCP sockets on gevent.

One receiver greenlet per UDP socket drains it and hands every datagram to the proxy
inline (no greenlet per datagram: see DESIGN.md for why). TCP has one greenlet per
connection reading a byte stream framed by Content-Length (RFC 3261 §18.3); connections
are kept in a table by peer address and reused for responses and later requests to the
same peer. Writes never block the caller: a TCP write that does not fit in the kernel
buffer is queued and finished by the connection's own writer, in order.

What TCP may hold is bounded (gdispatch.tcplimits decides, this module applies it): a
connection over a cap is accepted and closed at once, a connection closes when idle or
when a message takes too long to arrive, a message over the size limit gets its 413
before the connection closes, and a failing accept backs off instead of spinning.

The proxy sees `Source` objects (where a message came from, how to answer it) and calls
`Transports.send()` / `Transports.reply()`.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import cast

import gevent
from gevent import get_hub

from gdispatch import sockfilter, steering, tcplimits
from gdispatch.config import Listen
from gdispatch.sip import MAX_MESSAGE_SIZE, ParseError
from gdispatch.tcplimits import AcceptBackoff, ConnectionTable, StreamReader, TcpLimits

log = logging.getLogger("gdispatch.transport")

TCP_CONNECT_TIMEOUT = 3.0
TCP_LINGER = 1.0  # seconds a connection closed after an error answer waits for its peer to read it
# Accept errors that concern one connection only (it went away before it was accepted):
# the next accept is tried at once.
_ACCEPT_TRANSIENT = (errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN, errno.EPERM)
# The counters of the TCP side, in `stats` from the start.
TCP_COUNTERS = ("tcp_connections_open", tcplimits.REFUSED_TOTAL, tcplimits.REFUSED_PER_SOURCE, "tcp_refused_banned",
                "tcp_closed_idle", "tcp_closed_slow", "tcp_oversized", "tcp_evicted", "tcp_accept_failures")
YIELD_EVERY = 32  # datagrams a receiver handles in a row before it lets other greenlets run


_UNREACHABLE = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN)
# A UDP socket's pending ICMP error is returned by its next sendto; read the error queue
# and send again this many times before the error is taken as this datagram's own.
_SEND_TRIES = 3
_ERRQUEUE_READS = 1024  # per drain: bounded, the rest is read at the next one


class TransportError(OSError):
    """A message could not be sent (no listener for it, connection refused...)."""


class Source:
    """Where a message came from: its transport, address and the socket to answer on."""

    __slots__ = ("addr", "conn", "listener", "transport")
    relayed = False  # handed over by another worker (`Relayed`)

    def __init__(self, transport: str, addr: tuple[str, int], listener: UdpListener | TcpListener,
                 conn: TcpConnection | None = None):
        self.transport = transport
        self.addr = addr
        self.listener = listener
        self.conn = conn

    def __repr__(self) -> str:
        return f"{self.transport}:{self.addr[0]}:{self.addr[1]}"


class Relayed(Source):
    """A datagram another worker received and handed to this one (gdispatch.workers):
    it is not handed on again."""

    __slots__ = ()
    relayed = True


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux
_TIMESPEC = struct.Struct("@qq")


def enable_timestamps(sock: socket.socket) -> None:
    """Have the kernel stamp each datagram with its arrival time (read by
    `receive_sampled`)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        pass


def receive_sampled(sock: socket.socket, size: int) -> tuple[bytes, tuple, float]:
    """One datagram, its sender, and how long it waited in the socket's buffer (0.0
    when the kernel gave no arrival time). Costs a little more than recvfrom, so
    receivers use it for a sample of their datagrams."""
    data, anc, _flags, addr = sock.recvmsg(size, 64)
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(cdata)
            return data, addr, max(0.0, time.time() - (sec + nsec * 1e-9))
    return data, addr, 0.0


def run_receiver(receiver, sock: socket.socket, size: int, handle: Callable[[bytes, tuple], None], *,
                 on_unreachable: Callable[[], None] | None = None, sample: bool = True,
                 take_twin: Callable[[], bool] | None = None) -> None:
    """The loop of a datagram socket's receiver greenlet: read every datagram and hand it
    to `handle(data, addr)` inline (no greenlet per datagram), wait on the hub when the
    socket is empty. `receiver.queue_delay` follows how long datagrams waited (sampled on
    the first after each wait, but the first of all, and every YIELD_EVERY), and every YIELD_EVERY datagrams
    the loop lets the other greenlets run: a socket that never runs dry must not starve
    the timers, the dispatch greenlets and the other sockets. `take_twin()`, called
    when the socket is found empty, handles a datagram waiting in another socket of this
    process and says whether there was one; the loop sleeps only when there was none.
    Ends when the socket closes."""
    hub = get_hub()
    watcher = hub.loop.io(sock.fileno(), 1)
    recvfrom = sock.recvfrom
    # Not sampled: the first datagram, which may have waited while the socket was not read
    # yet (a worker starting up), which says nothing of how far behind the proxy is.
    streak = 1
    woken = False
    while True:
        try:
            if streak == 0 and sample:
                data, addr, receiver.queue_delay = receive_sampled(sock, size)
            else:
                data, addr = recvfrom(size)
        except BlockingIOError:
            receiver.queue_delay = 0.0
            if woken and on_unreachable is not None:
                # Woken with nothing to read: the twin took the datagram, or an ICMP
                # error waits in the error queue, which keeps the socket readable
                # (EPOLLERR) until it is read: without this the loop would spin.
                on_unreachable()
            woken = False
            if take_twin is None or not take_twin():
                hub.wait(watcher)
                woken = True
                streak = 0
                continue
        except OSError as e:
            if e.errno in (errno.EBADF, errno.ENOTSOCK):
                return
            if e.errno in _UNREACHABLE and on_unreachable is not None:
                on_unreachable()
            continue
        else:
            woken = False
            try:
                handle(data, addr)
            except Exception:
                log.exception("error handling a datagram from %s", addr)
        streak += 1
        if streak == YIELD_EVERY:
            streak = 0
            gevent.sleep(0)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class UdpListener:
    """A UDP socket: a listen address, or (with several workers) a worker's own outbound
    socket, `private`, whose port goes into the Via of the requests it sends so that
    their responses come back to this worker (`public` is then the shared listener)."""

    transport = "udp"

    def __init__(self, listen: Listen, owner: Transports, *, reuseport: bool = False,
                 public: UdpListener | None = None, sock: socket.socket | None = None):
        """`sock`: the socket, already bound (one of `shared_udp_sockets`), else one is
        made and bound here."""
        self.owner = owner
        self.public = public or self  # the address Record-Route names
        self.private: UdpListener | None = None  # where this worker's requests leave from
        self.index = 0  # position in Transports.listeners: the same in every worker
        # How long the last sampled datagram waited in the kernel before it was read
        # (0.0 once the socket is found empty): how far behind this receiver is
        # (gdispatch.overload).
        self.queue_delay = 0.0
        # With several workers: (data, addr, listener) -> True when the datagram was
        # handed to the worker that owns it (gdispatch.workers), False to handle it here.
        self.steer: Callable[[bytes, tuple[str, int], UdpListener], bool] | None = None
        if sock is None:
            sock = udp_socket(listen, reuseport)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        except OSError:
            pass
        if public is None:
            enable_timestamps(sock)
        if listen.port == 0:
            listen = Listen(listen.transport, listen.host, sock.getsockname()[1])
        self.listen = listen
        sock.setblocking(False)
        # Ask for ICMP errors (RFC 3261 §18.4: a transport error is reported to the
        # transaction at once, instead of waiting for its timer).
        try:
            if listen.family_v6:
                sock.setsockopt(socket.IPPROTO_IPV6, getattr(socket, "IPV6_RECVERR", 25), 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_RECVERR", 11), 1)
        except OSError:
            pass
        self.sock = sock
        self.greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self.greenlet = gevent.spawn(self._receive_loop)

    def _receive_loop(self) -> None:
        # Request sockets sample their queueing delay; a worker's own socket gets responses.
        # A worker's two sockets read each other's waiting datagrams before they sleep:
        # the ACK the caller sends on a 200 that came in on the worker's own socket is
        # read at once, not after a round through the hub (a switch to it, a poll, a
        # switch back: some 70 µs with cold caches, bench/PROFILE.md, sixth pass).
        twin = self.private if self.private is not None else (self.public if self.public is not self else None)
        run_receiver(self, self.sock, MAX_MESSAGE_SIZE + 1, self._handle, on_unreachable=self._drain_errors,
                     sample=self.public is self, take_twin=twin.take_one if twin is not None else None)

    def _handle(self, data: bytes, addr) -> None:
        owner = self.owner
        admit = owner.admit
        if admit is not None and not admit(addr[0]):
            return  # a source past its rate (gdispatch.flood)
        steer = self.steer
        if steer is None or not steer(data, addr, self):
            owner.on_message(data, Source("udp", (addr[0], addr[1]), self))

    def take_one(self) -> bool:
        """Handle one datagram if one waits in the socket (for the twin's receiver, about
        to sleep); False when the socket is empty, or not read yet (`start_listening`)."""
        if self.greenlet is None:
            return False
        try:
            data, addr = self.sock.recvfrom(MAX_MESSAGE_SIZE + 1)
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in _UNREACHABLE:
                self._drain_errors()  # as this socket's own receiver would have
            return False
        try:
            self._handle(data, addr)
        except Exception:
            log.exception("error handling a datagram from %s", addr)
        return True

    def _drain_errors(self, defer: bool = False) -> None:
        """ICMP errors (port or host unreachable) queued by IP_RECVERR: each names the
        address a datagram of ours could not reach, which the owner is told of: at once,
        or (`defer`, from inside a send) from the event loop's next turn, so that what
        the news sets off does not run in the middle of the send that met it.
        Reading the queue to its end also clears the socket's pending error, which the
        kernel would otherwise return to the next sendto, whatever its address."""
        found = []
        for _ in range(_ERRQUEUE_READS):
            try:
                _data, _anc, _flags, addr = self.sock.recvmsg(512, 512, socket.MSG_ERRQUEUE)
            except OSError:
                break  # empty (EAGAIN), or the socket is closing
            if addr:
                found.append((addr[0], addr[1]))
        if not found:
            return
        if defer:
            get_hub().loop.run_callback(self._report_unreachable, found)
        else:
            self._report_unreachable(found)

    def _report_unreachable(self, found: list[tuple[str, int]]) -> None:
        for addr in found:
            try:
                self.owner.unreachable(addr)
            except Exception:
                log.exception("error handling an ICMP error for %s", addr)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send one datagram. An ICMP error that came back for an earlier datagram is
        returned by the kernel to this call, whatever `addr` is, and this datagram is
        not sent: the error is charged to the address it names (`_drain_errors`) and
        the datagram sent again."""
        for attempt in range(_SEND_TRIES):
            try:
                self.sock.sendto(data, addr)
                return
            except BlockingIOError:
                # The kernel buffer is full: drop, as the network would; SIP over UDP
                # retransmits (RFC 3261 §17).
                self.owner.stats["udp_send_dropped"] = self.owner.stats.get("udp_send_dropped", 0) + 1
                return
            except OSError as e:
                if e.errno not in _UNREACHABLE:
                    raise
                self._drain_errors(defer=True)
                if attempt == _SEND_TRIES - 1:
                    raise

    def close(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
        self.sock.close()


class TcpConnection:
    """One TCP connection, accepted or opened by us, reading and writing SIP messages.
    `source`: the source it counts against (gdispatch.tcplimits.source_key) when it
    was accepted, None when we opened it."""

    def __init__(self, owner: Transports, listener: TcpListener, addr: tuple[str, int],
                 sock: socket.socket | None, source: str | None = None):
        self.owner = owner
        self.listener = listener
        self.addr = addr
        self.sock = sock
        self.source = source
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
            if not self.connected:
                self._connect()
            self._flush()
            self._read_loop()
        except OSError as e:
            if not self.closed:
                log.warning("tcp connection to %s:%s failed: %s", self.addr[0], self.addr[1], e)
            self._fail()
        finally:
            self.close()

    def _connect(self) -> None:
        host, port = self.addr
        s = socket.socket(_family(host), socket.SOCK_STREAM)
        s.setblocking(False)
        hub = get_hub()
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
        self.connected = True
        self.error_callbacks.clear()

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
            raise TransportError(e.errno, f"tcp send to {self.addr[0]}:{self.addr[1]}: {e.strerror}") from None
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
            log.warning("tcp write to %s:%s failed: %s", self.addr[0], self.addr[1], e)
            self.close()
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
        while not self.closed:
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                deadline, why = reader.deadline()
                wait = deadline - clock()
                if wait <= 0:
                    self._expired(why)
                    return
                with gevent.Timeout(wait, False):
                    hub.wait(w)
                continue
            if not chunk:
                return
            now = clock()
            messages = reader.feed(chunk, now)
            if messages:
                self.owner.table.active(self)
            for msg in messages:
                try:
                    handle(msg, Source("tcp", self.addr, self.listener, self))
                except Exception:
                    log.exception("error handling a message from %s:%s", self.addr[0], self.addr[1])
            if reader.error is not None:
                self._broken(reader.error)
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
        if self.greenlet is not gevent.getcurrent():
            self.greenlet.kill(block=False)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.owner.forget(self)
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass


class TcpListener:
    transport = "tcp"

    def __init__(self, listen: Listen, owner: Transports, *, reuseport: bool = False):
        self.listen = listen
        self.owner = owner
        self.public = self
        self.private = None
        self.index = 0
        sock = socket.socket(_family(listen.host), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            # Several workers accept on the port; a connection stays with its worker.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((listen.host, listen.port))
        sock.listen(1024)
        sock.setblocking(False)
        self.sock = sock
        self.greenlet: gevent.Greenlet | None = None
        self.backoff = AcceptBackoff()

    def start(self) -> None:
        self.greenlet = gevent.spawn(self._accept_loop)

    def _accept_loop(self) -> None:
        hub = get_hub()
        w = hub.loop.io(self.sock.fileno(), 1)
        owner = self.owner
        stats = owner.stats
        backoff = self.backoff
        while True:
            try:
                s, addr = self.sock.accept()
            except BlockingIOError:
                hub.wait(w)
                continue
            except OSError as e:
                if e.errno in (errno.EBADF, errno.EINVAL):
                    return
                if e.errno in _ACCEPT_TRANSIENT:
                    continue
                # Out of descriptors or buffers (EMFILE, ENFILE, ENOBUFS, ENOMEM): the
                # connection waits in the kernel's queue; trying again at once would spin.
                stats["tcp_accept_failures"] += 1
                delay, line = backoff.failed(time.monotonic(), e)
                if line:
                    log.warning("%s", line)
                gevent.sleep(delay)
                continue
            line = backoff.succeeded()
            if line:
                log.warning("%s", line)
            if addr[0] in owner.banned:
                stats["tcp_refused_banned"] += 1  # a flood's source (gdispatch.flood)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                s.close()
                continue
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
                continue
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = TcpConnection(owner, self, (addr[0], addr[1]), s, source)
            owner.remember(conn)

    def close(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
        self.sock.close()


_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection


def udp_socket(listen: Listen, reuseport: bool = False) -> socket.socket:
    """A UDP socket bound to `listen`, in an SO_REUSEPORT group when `reuseport`."""
    sock = socket.socket(_family(listen.host), socket.SOCK_DGRAM)
    try:
        # No SO_REUSEADDR: on Linux it would let a second process bind the same UDP port
        # and take its datagrams unnoticed.
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((listen.host, listen.port))
    except OSError:
        sock.close()
        raise
    return sock


def shared_udp_sockets(listens: tuple[Listen, ...], n: int
                       ) -> tuple[dict[int, list[socket.socket]], int, OSError | None]:
    """For n workers: for each UDP listen address (by its position in `listens`), n
    sockets in one SO_REUSEPORT group, bound in worker order so that the kernel's index
    of socket i in the group is i, and the group steered by Call-ID (gdispatch.steering).
    Returns the sockets, the bytes the kernel searches for the Call-ID (the least over
    the groups; 0 when a group is not steered) and the kernel's refusal if there was one.
    Raises TransportError when an address cannot be bound."""
    out: dict[int, list[socket.socket]] = {}
    scan = steering.SCANS[0]
    refused: OSError | None = None
    try:
        for i, listen in enumerate(listens):
            if listen.transport != "udp":
                continue
            socks = out[i] = []
            for _ in range(n):
                socks.append(udp_socket(listen, reuseport=True))
                if listen.port == 0:
                    listen = Listen(listen.transport, listen.host, socks[0].getsockname()[1])
            searched, error = steering.attach(socks[0], n)
            scan = min(scan, searched)
            refused = refused or error
    except OSError as e:
        for socks in out.values():
            for sock in socks:
                sock.close()
        raise TransportError(e.errno, f"cannot listen on {listen}: {e.strerror}") from None
    return out, scan, refused


def ensure_free(listens: tuple[Listen, ...]) -> None:
    """Raise TransportError when a listen address is already taken. Workers bind with
    SO_REUSEPORT, which another process of the same user could share unnoticed; a
    plain bind first makes sure nobody else holds the port."""
    for listen in listens:
        kind = socket.SOCK_DGRAM if listen.transport == "udp" else socket.SOCK_STREAM
        with socket.socket(_family(listen.host), kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
            try:
                sock.bind((listen.host, listen.port))
            except OSError as e:
                raise TransportError(e.errno, f"cannot listen on {listen}: {e.strerror}") from None


class Transports:
    """All listeners, the TCP connection table, and sending."""

    def __init__(self, listens: tuple[Listen, ...], on_message: Callable[[bytes, Source], None], *,
                 shared: bool = False, udp_socks: dict[int, socket.socket] | None = None,
                 tcp_limits: TcpLimits | None = None, kernel_filter: bool = False):
        """`shared`: one of several workers on the same listen addresses (SO_REUSEPORT);
        each UDP listener then gets a private twin on an ephemeral port of the same IP,
        which sends this worker's requests and receives their responses. `udp_socks`:
        this worker's sockets of `shared_udp_sockets`, by position in `listens`.
        `tcp_limits`: this process's TCP caps and timeouts (gdispatch.tcplimits; the
        `[tcp]` defaults when None). `kernel_filter`: the kernel drops what cannot be SIP
        (gdispatch.sockfilter)."""
        self.on_message = on_message
        # Whether a datagram from an IP address may be read (gdispatch.flood), or None.
        self.admit: Callable[[str], bool] | None = None
        self.kernel_filter = kernel_filter
        self.filter_error: OSError | None = None  # the kernel's refusal of the filter
        self.banned: frozenset[str] = frozenset()  # sources banned as floods (`set_banned`)
        # Called with (ip, port) when an ICMP error says a datagram could not reach it.
        self.on_unreachable: Callable[[tuple[str, int]], None] | None = None
        self.stats: dict[str, int] = dict.fromkeys(TCP_COUNTERS, 0)
        self.listeners: list[UdpListener | TcpListener] = []
        self.connections: dict[tuple[str, int], TcpConnection] = {}
        self.tcp_limits = tcp_limits or TcpLimits()
        self.table = ConnectionTable(self.tcp_limits)
        for listen in listens:
            try:
                lst: UdpListener | TcpListener
                if listen.transport == "udp":
                    given = (udp_socks or {}).get(len(self.listeners))
                    lst = UdpListener(listen, self, reuseport=shared, sock=given)
                    if shared:
                        lst.private = UdpListener(Listen("udp", listen.host, 0), self, public=lst)
                else:
                    lst = TcpListener(listen, self, reuseport=shared)
            except OSError as e:
                self.close()
                raise TransportError(e.errno, f"cannot listen on {listen}: {e.strerror}") from None
            lst.index = len(self.listeners)
            self.listeners.append(lst)
        # Where new requests queue up: the UDP listen sockets (gdispatch.workers adds its
        # relay). Each has `queue_delay`.
        self.request_receivers: list = [lst for lst in self.listeners if lst.transport == "udp"]
        if kernel_filter:
            self.set_banned([])

    def set_banned(self, sources: list[str]) -> None:
        """The sources gdispatch.flood banned: their TCP connections are refused, and every
        UDP socket's kernel filter (gdispatch.sockfilter, with `kernel_filter`) drops junk
        and what they send."""
        self.banned = frozenset(sources)
        if not self.kernel_filter:
            return
        for lst in self._sockets():
            if lst.transport == "udp":
                error = sockfilter.attach(lst.sock, lst.listen.family_v6, sources)
                if error is not None and self.filter_error is None:
                    self.filter_error = error
                    log.warning("the kernel does not take the socket filter (%s): junk and banned sources "
                                "are dropped after they are read", error.strerror or error)

    def _sockets(self) -> list[UdpListener | TcpListener]:
        return [x for lst in self.listeners for x in (lst, lst.private) if x is not None]

    def start(self, listen: bool = True) -> None:
        """Start receiving; `listen=False` starts only the workers' private sockets (the
        listen sockets queue what arrives until `start_listening()`)."""
        for lst in self._sockets():
            if listen or lst.public is not lst:
                lst.start()

    def start_listening(self) -> None:
        for lst in self.listeners:
            if lst.greenlet is None:
                lst.start()

    def close(self) -> None:
        for lst in self._sockets():
            lst.close()
        for conn in list(self.connections.values()):
            conn.close()

    def backlog(self) -> float:
        """How long requests wait in the kernel before they are read, in seconds: the
        largest `queue_delay` of the request receivers (listen sockets, and the relay
        from other workers)."""
        return max(r.queue_delay for r in self.request_receivers) if self.request_receivers else 0.0

    def deliver(self, listener_index: int, data: bytes, addr: tuple[str, int]) -> None:
        """A datagram another worker received on listener `listener_index` and handed
        to this one (gdispatch.workers): handle it as if it had arrived here."""
        self.on_message(data, Relayed("udp", addr, self.listeners[listener_index]))

    def unreachable(self, addr: tuple[str, int]) -> None:
        if self.on_unreachable is not None:
            self.on_unreachable(addr)

    def remember(self, conn: TcpConnection) -> None:
        self.connections[conn.addr] = conn
        if conn.source is not None:
            self.table.accepted(conn, conn.source)
        else:
            self.table.opened(conn)
        self.stats["tcp_connections_open"] = self.table.open

    def forget(self, conn: TcpConnection) -> None:
        if self.connections.get(conn.addr) is conn:
            del self.connections[conn.addr]
        self.table.closed(conn)
        self.stats["tcp_connections_open"] = self.table.open

    def _open(self, listener: TcpListener, addr: tuple[str, int]) -> TcpConnection:
        """A new connection towards `addr`. When the table is full the accepted
        connection idle longest makes room: callers filling the table must not cut the
        proxy off from its destinations."""
        if self.table.full():
            victim = self.table.idlest()
            if isinstance(victim, TcpConnection) and victim.greenlet is gevent.getcurrent():
                victim = self.table.idlest(spare=victim)  # not the connection whose message this is
            if victim is None:
                raise TransportError(errno.EMFILE, f"tcp connect to {addr[0]}:{addr[1]}: [tcp].max_connections "
                                                   f"({self.tcp_limits.max_connections}) reached")
            assert isinstance(victim, TcpConnection)
            self.stats["tcp_evicted"] += 1
            log.warning("closing tcp connection from %s:%s to open one to %s:%s: [tcp].max_connections reached",
                        victim.addr[0], victim.addr[1], addr[0], addr[1])
            victim.abort()
        conn = TcpConnection(self, listener, addr, None)
        self.remember(conn)
        return conn

    def listener_for(self, transport: str, host: str) -> UdpListener | TcpListener | None:
        """The listener that sends to `host` over `transport` (same address family)."""
        v6 = ":" in host
        for lst in self.listeners:
            if lst.transport == transport and lst.listen.family_v6 == v6:
                return lst.private or lst
        return None

    def can_reach(self, transport: str, host: str) -> str:
        """'' when a message can be sent there, else why not, for the operator."""
        if transport not in ("udp", "tcp"):
            return f"transport {transport!r} is not supported (udp and tcp are)"
        if self.listener_for(transport, host) is None:
            fam = "IPv6" if ":" in host else "IPv4"
            return f"no {transport.upper()} {fam} listen address to send from (add one to [server].listen)"
        return ""

    def send(self, transport: str, addr: tuple[str, int], data: bytes,
             on_error: Callable[[], None] | None = None,
             listener: UdpListener | TcpListener | None = None) -> UdpListener | TcpListener:
        """Send a message; returns the listener it leaves from (for Via). Errors known at
        once raise TransportError; a TCP connect that fails later calls `on_error`."""
        if listener is None:
            listener = self.listener_for(transport, addr[0])
            if listener is None:
                raise TransportError(errno.ENETUNREACH, self.can_reach(transport, addr[0]))
        if transport == "udp":
            try:
                cast(UdpListener, listener).sendto(data, addr)
            except OSError as e:
                raise TransportError(e.errno, f"udp send to {addr[0]}:{addr[1]}: {e.strerror}") from None
            return listener
        conn = self.connections.get(addr)
        if conn is None or conn.closed:
            conn = self._open(cast(TcpListener, listener), addr)
        conn.send(data, on_error)
        return listener

    def reply(self, source: Source, addr: tuple[str, int], data: bytes) -> None:
        """Send a response back towards where a request came from (RFC 3261 §18.2.2)."""
        if source.transport == "udp":
            try:
                cast(UdpListener, source.listener).sendto(data, addr)
            except OSError as e:
                log.debug("udp reply to %s failed: %s", addr, e)
            return
        conn = source.conn
        if conn is None or conn.closed:
            # The connection is gone: open a new one to the sent-by address.
            conn = self.connections.get(addr)
        try:
            if conn is None or conn.closed:
                conn = self._open(cast(TcpListener, source.listener), addr)
            conn.send(data)
        except TransportError as e:
            log.debug("tcp reply to %s failed: %s", addr, e)
