"""The relay: what hands a datagram to the worker that owns its call when the kernel gave
it to another one (a compact Call-ID header, one past the bytes the steering program
searches, a kernel that refused the program, the socket of a dead worker the primary
reads meanwhile).

A call belongs to the worker `call_id_owner` names, the same function the kernel's
program computes (gdispatch.cluster.steering): an INVITE, its retransmissions, its
CANCEL, its responses and the BYE later must all meet the transactions of one worker
(RFC 3261 §17.1.3, §17.2.3 match them there only). The datagram crosses a loopback UDP
socket unparsed, with the listener it came in on and its sender, so that the owner
handles it as if it had arrived there: its Via `received`/`rport` (§18.2.1) and the
response's way back (§18.2.2) are the caller's.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Callable

import gevent

from gdispatch.cluster.steering import call_owner
from gdispatch.net import UdpListener, enable_timestamps, run_receiver
from gdispatch.sip import MAX_MESSAGE_SIZE

_CALL_ID = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_RELAY_HEADER = struct.Struct("!BHB")  # listener index, source port, length of the source IP


def call_id_owner(data: bytes, n: int) -> int | None:
    """The worker (0..n-1) that owns the call this datagram belongs to, from its
    Call-ID; None when there is no Call-ID to read (whoever received it answers)."""
    i = data.find(b"\nCall-ID:")  # the spelling nearly everyone sends
    if i >= 0:
        end = data.find(b"\r", i + 9)
        value = data[i + 9:end if end >= 0 else len(data)]
    else:
        m = _CALL_ID.search(data)
        if m is None:
            return None
        value = m.group(1)
    return call_owner(value.strip(), n)


def relay_sockets(n: int) -> list[socket.socket]:
    """One loopback UDP socket per worker, made by the primary before it starts the
    others (each inherits its own). Unix datagram sockets would be the obvious choice,
    but Linux queues at most net.unix.max_dgram_qlen (often 10) datagrams on one, which a
    busy worker overruns at once; a UDP socket queues up to its receive buffer."""
    socks = []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
            except OSError:
                pass
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
    return socks


class Relay:
    """Hands datagrams to the worker that owns their call, over the loopback sockets of
    `relay_sockets()`; `ports[i]` is worker i's. A datagram is taken only from another
    worker's relay port, and handled where it is delivered (`start`'s `deliver`,
    Transports.deliver): it is never handed on again. The transports' `Handoff`."""

    def __init__(self, sock: socket.socket, index: int, ports: list[int]):
        self.index = index
        self.n = len(ports)
        self.names = [("127.0.0.1", p) for p in ports]
        self.peers = frozenset(self.names)
        self.sent = 0
        self.dropped = 0
        sock.setblocking(False)
        self.sock = sock
        self.greenlet: gevent.Greenlet | None = None
        self.queue_delay = 0.0  # as UdpListener.queue_delay: how far behind the relay is
        enable_timestamps(sock)

    def steer(self, data: bytes, addr: tuple[str, int], listener: UdpListener) -> bool:
        """For `UdpListener.steer`: True when the datagram went to the owner of its call."""
        owner = call_id_owner(data, self.n)
        if owner is None or owner == self.index:
            return False
        return self._send(owner, data, addr, listener.index)

    def _send(self, worker: int, data: bytes, addr: tuple[str, int], listener_index: int) -> bool:
        ip = addr[0].encode()
        try:
            self.sock.sendto(_RELAY_HEADER.pack(listener_index, addr[1], len(ip)) + ip + data, self.names[worker])
        except BlockingIOError:
            self.dropped += 1  # our send buffer is full: lost like a datagram, and retransmitted
            return True
        except OSError:
            return False  # the owner is not there (starting again): handle it here
        self.sent += 1
        return True

    def start(self, deliver: Callable[[int, bytes, tuple[str, int]], None]) -> None:
        """Receive what the other workers hand over: `deliver(listener index, data,
        sender)` each datagram (Transports.deliver: the transports exist only once the
        relay, their `Handoff`, was given to them)."""
        self.greenlet = gevent.spawn(self._receive_loop, deliver)

    def _receive_loop(self, deliver: Callable[[int, bytes, tuple[str, int]], None]) -> None:
        peers = self.peers
        size = _RELAY_HEADER.size

        def handle(packet: bytes, sender) -> None:
            # Only other workers' relay sockets may hand us datagrams; an ICMP error left
            # by a send to a worker that was gone is ignored.
            if sender in peers:
                index, port, iplen = _RELAY_HEADER.unpack_from(packet)
                deliver(index, packet[size + iplen:], (packet[size:size + iplen].decode(), port))

        run_receiver(self, self.sock, MAX_MESSAGE_SIZE + 300, handle)

    def close(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
        self.sock.close()
