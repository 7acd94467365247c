"""The UDP transport (RFC 3261 §18): a listener's socket and the receiver loop that
drains it.

UDP is unreliable and message-oriented: one datagram is one message (§18.3), what is
lost is retransmitted by the transactions (§17), and a datagram that does not fit the
kernel's send buffer is dropped as the network would drop it. One receiver greenlet per
socket reads every datagram and hands it to the server side (`Transports.on_message`,
§18.2.1) inline, with no greenlet per datagram, sampling how long datagrams waited in
the kernel (gdispatch.overload reads it as the proxy's backlog).

A transport error (§18.4) comes back as an ICMP error: the sockets ask for them
(IP_RECVERR) and read their error queue, each error naming the address one of our
datagrams could not reach, which the owner is told of.

With several workers (gdispatch.cluster) the listen sockets are one SO_REUSEPORT group
per address, bound by the primary and handed to each worker (`UdpListener(sock=)`); a
datagram of a call another worker owns is handed to it (`steer`), and each worker has a
private twin socket its requests leave from, so that their responses come back to it.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
from gevent import get_hub

from gdispatch.config import Listen
from gdispatch.net.source import Source, address_family
from gdispatch.sip import MAX_MESSAGE_SIZE

if TYPE_CHECKING:
    from gdispatch.net.transports import Transports

# The name the transport's log lines have always carried, whichever module logs them.
log = logging.getLogger("gdispatch.transport")

YIELD_EVERY = 32  # datagrams a receiver handles in a row before it lets other greenlets run

_UNREACHABLE = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN)
# A UDP socket's pending ICMP error is returned by its next sendto; read the error queue
# and send again this many times before the error is taken as this datagram's own.
_SEND_TRIES = 3
_ERRQUEUE_READS = 1024  # per drain: bounded, the rest is read at the next one

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


class UdpListener:
    """A UDP socket: a listen address, or (with several workers) a worker's own outbound
    socket, `private`, whose port goes into the Via of the requests it sends so that
    their responses come back to this worker (`public` is then the shared listener)."""

    transport = "udp"

    def __init__(self, listen: Listen, owner: Transports, *, reuseport: bool = False,
                 public: UdpListener | None = None, sock: socket.socket | None = None, index: int = 0,
                 steer: Callable[[bytes, tuple[str, int], UdpListener], bool] | None = None):
        """`sock`: the socket, already bound (a worker's socket of the group the primary
        bound, gdispatch.cluster.steering), else one is made and bound here. `index`:
        its position in Transports.listeners, the same in every worker. `steer`: with
        several workers, (data, addr, listener) -> True when the datagram was handed to
        the worker that owns its call (gdispatch.cluster.relay), False to handle it here."""
        self.owner = owner
        self.public = public or self  # the address Record-Route names
        self.private: UdpListener | None = None  # where this worker's requests leave from
        self.index = index
        # How long the last sampled datagram waited in the kernel before it was read
        # (0.0 once the socket is found empty): how far behind this receiver is
        # (gdispatch.overload).
        self.queue_delay = 0.0
        self.steer = steer
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

    @property
    def started(self) -> bool:
        """Whether the socket is read (`start` was called)."""
        return self.greenlet is not None

    def _receive_loop(self) -> None:
        # Request sockets sample their queueing delay; a worker's own socket gets responses.
        # A worker's two sockets read each other's waiting datagrams before they sleep:
        # the ACK the caller sends on a 200 that came in on the worker's own socket is
        # read at once, not after a round through the hub (a switch to it, a poll, a
        # switch back). What that saves is measured in bench/PROFILE.md.
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


def udp_socket(listen: Listen, reuseport: bool = False) -> socket.socket:
    """A UDP socket bound to `listen`, in an SO_REUSEPORT group when `reuseport`."""
    sock = socket.socket(address_family(listen.host), socket.SOCK_DGRAM)
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

