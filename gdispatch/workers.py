"""Several worker processes on one SIP address (``gdispatch run --workers N``).

How the work is split
=====================

The process ``gdispatch run`` starts is worker 0, the *primary*. It starts workers 1..N-1
as child processes (``python -m gdispatch.workers``), each a complete proxy with its own
transactions. On each UDP listen address the primary binds one socket per worker, in
worker order, in one SO_REUSEPORT group, and hands worker i its socket i
(gdispatch.net.udp: `shared_udp_sockets`); TCP listen addresses each worker binds
itself with SO_REUSEPORT.

A call belongs to one worker: the one `call_id_owner()` picks from its Call-ID. The
kernel delivers each datagram to the socket of that worker, chosen by a BPF program of
the group (gdispatch.steering), so the calls of a single peer, a trunk or a load
generator, are spread over the workers with no hop between them. What the program cannot
read (a compact Call-ID header, one past its first bytes) or where the kernel does not
run it, the kernel hashes the sender's address instead, and a worker that receives a
datagram of a call it does not own hands it, unparsed, to the owner over a loopback
socket (`Relay`). Either way an INVITE, its retransmissions, its CANCEL, its responses
and the BYE later all meet the transactions of one worker.

The primary keeps every worker's sockets open for its whole life: a worker that dies
leaves its socket in the group, where the new one finds its place (the kernel's index of
a socket changes when one leaves). Until then the primary reads that socket itself
(`Supervisor.on_lost`, App._cover): what belongs to a live worker goes to it at once,
what was the dead worker's waits in its relay socket.

Each worker sends its requests from a UDP socket of its own, an ephemeral port on the
listen IP that goes into its Via, so their responses come straight back to it;
Record-Route names the shared address (gdispatch.net.udp: `UdpListener.private`). A
TCP connection stays with the worker that accepted or opened it.

What only the primary does
==========================

Probing, the list watcher, SIGHUP, the control socket and sd_notify: one state per
destination, as the operator sees it. It tells the others, over a socketpair per child
(`Channel`, pickled tuples):

- ``("hello", config, index, relay_fd, relay_ports, listen_fds, list_text, states, keys)``
  once, at start (the file descriptors are inherited; `keys`, the dialog keys of
  gdispatch.recordroute, so that every worker signs and verifies alike);
- ``("list", text, reason, states)``: the list it swapped in (start, reload, RPC add or
  remove), with every destination's state;
- ``("state", key, flags)``: a destination's new state (ping, traffic failure, set_state);
- ``("keys", keys)``: the dialog keys, read again on a reload;
- ``("latency", {key: ms})`` every second, for the latency algorithm (11);
- ``("stop",)``: drain and exit.

Each child sends:

- ``("ready",)`` once it listens;
- ``("failure", key, reason)``: a request to a destination failed in that worker (the
  primary's prober counts it, as it does its own);
- ``("report", loads, counters, stats)`` every second, for ``dispatcher.list`` and
  ``stats``.

A destination is named by `dest_key`: (set id, position in its set, URI). Every worker
parses the same text, so the positions agree.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import struct
import sys
import time
from collections.abc import Callable

import gevent
import gevent.event
import gevent.socket
import gevent.subprocess

from gdispatch.net import enable_timestamps, run_receiver
from gdispatch.sip import MAX_MESSAGE_SIZE
from gdispatch.steering import call_owner

log = logging.getLogger("gdispatch.workers")

_CALL_ID = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_FRAME = struct.Struct("!I")
_RELAY_HEADER = struct.Struct("!BHB")  # listener index, source port, length of the source IP
RESTART_DELAY = 1.0  # seconds before a worker that died is started again


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


def dest_key(dest) -> tuple[int, int, str]:
    """How every worker names a destination: (set id, position in its set, URI)."""
    return (dest.setid, dest.index, dest.uri)


def keyed(dlist) -> dict:
    """key -> destination for every destination of `dlist`."""
    return {dest_key(d): d for d in dlist.destinations()}


# --------------------------------------------------------------------------- relay


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
    worker's relay port, and handled where it is delivered (`Transports.deliver`): it is
    never handed on again."""

    def __init__(self, sock: socket.socket, index: int, ports: list[int],
                 deliver: Callable[[int, bytes, tuple[str, int]], None]):
        self.index = index
        self.n = len(ports)
        self.deliver = deliver
        self.names = [("127.0.0.1", p) for p in ports]
        self.peers = frozenset(self.names)
        self.sent = 0
        self.dropped = 0
        sock.setblocking(False)
        self.sock = sock
        self.greenlet: gevent.Greenlet | None = None
        self.queue_delay = 0.0  # as UdpListener.queue_delay: how far behind the relay is
        enable_timestamps(sock)

    def steer(self, data: bytes, addr: tuple[str, int], listener) -> bool:
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

    def start(self) -> None:
        self.greenlet = gevent.spawn(self._receive_loop)

    def _receive_loop(self) -> None:
        # Only other workers' relay sockets may hand us datagrams; an ICMP error left by
        # a send to a worker that was gone is ignored.
        run_receiver(self, self.sock, MAX_MESSAGE_SIZE + 300, self._handle)

    def _handle(self, packet: bytes, sender) -> None:
        if sender not in self.peers:
            return
        index, port, iplen = _RELAY_HEADER.unpack_from(packet)
        size = _RELAY_HEADER.size
        self.deliver(index, packet[size + iplen:], (packet[size:size + iplen].decode(), port))

    def close(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
        self.sock.close()


# --------------------------------------------------------------------------- channel


class Channel:
    """Pickled tuples over a stream socket between the primary and one child, framed
    by a 4-byte length. Only these two processes hold its ends."""

    def __init__(self, sock: socket.socket, on_message: Callable[[tuple], None], on_close: Callable[[], None]):
        self.sock = gevent.socket.socket(fileno=sock.detach())
        self.on_message = on_message
        self.on_close = on_close
        self.closed = False
        self.greenlet: gevent.Greenlet | None = None

    def send(self, msg: tuple) -> None:
        if self.closed:
            return
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.sock.sendall(_FRAME.pack(len(data)) + data)
        except OSError:
            self._close()

    def start(self) -> None:
        self.greenlet = gevent.spawn(self._read_loop)

    def _read_loop(self) -> None:
        try:
            while True:
                msg = read_frame(self.sock)
                if msg is None:
                    break
                try:
                    self.on_message(msg)
                except Exception:
                    log.exception("error handling %r from another worker", msg[0])
        except OSError:
            pass
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        self.on_close()

    def close(self) -> None:
        if self.greenlet is not None and self.greenlet is not gevent.getcurrent():
            self.greenlet.kill(block=False)
        self.closed = True
        self.sock.close()


def read_frame(sock) -> tuple | None:
    """One message from a channel socket (blocking or gevent), None at the end."""
    head = _read_exactly(sock, _FRAME.size)
    if head is None:
        return None
    body = _read_exactly(sock, _FRAME.unpack(head)[0])
    return None if body is None else pickle.loads(body)


def _read_exactly(sock, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


# --------------------------------------------------------------------------- primary side


class Supervisor:
    """The primary's view of workers 1..N-1: starts them, talks to them, starts again
    one that died, and stops them."""

    def __init__(self, n: int, hello: Callable[[int], tuple], on_message: Callable[[int, tuple], None],
                 fds: list[list[int]], on_lost: Callable[[int], None] | None = None):
        self.n = n
        self.fds = fds  # worker i inherits fds[i]: its relay socket and its listen sockets
        self.on_lost = on_lost  # called with the index of a worker that died (not on stop)
        self.hello = hello
        self.on_message = on_message
        self.procs: dict[int, gevent.subprocess.Popen] = {}
        self.channels: dict[int, Channel] = {}
        self.ready: set[int] = set()
        self.all_ready = gevent.event.Event()  # set while every worker listens
        self.stopping = False

    def start(self) -> None:
        for i in range(1, self.n):
            self._spawn(i)

    def _spawn(self, index: int) -> None:
        if self.stopping:
            return
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # only the primary talks to systemd
        proc = gevent.subprocess.Popen([sys.executable, "-m", "gdispatch.workers", str(child.fileno())],
                                       pass_fds=(child.fileno(), *self.fds[index]), env=env)
        child.close()

        def received(msg: tuple) -> None:
            if msg[0] == "ready":
                self.ready.add(index)
                if len(self.ready) == self.n - 1:
                    self.all_ready.set()
            self.on_message(index, msg)

        channel = Channel(parent, received, lambda: self._lost(index, proc))
        self.procs[index] = proc
        self.channels[index] = channel
        channel.send(self.hello(index))
        channel.start()

    def _lost(self, index: int, proc) -> None:
        self.ready.discard(index)
        self.all_ready.clear()
        if self.stopping:
            return
        if self.on_lost is not None:
            self.on_lost(index)
        status = proc.wait()
        log.error("worker %d (pid %d) exited with status %s; starting it again in %.0f s",
                  index, proc.pid, status, RESTART_DELAY)
        gevent.spawn_later(RESTART_DELAY, self._spawn, index)

    def wait_ready(self, timeout: float, abort=None) -> bool:
        """Until every worker said it listens (or `timeout` seconds, or the event
        `abort` is set)."""
        events = [self.all_ready] + ([abort] if abort is not None else [])
        gevent.wait(events, timeout=timeout, count=1)
        return self.all_ready.is_set()

    def broadcast(self, msg: tuple) -> None:
        for ch in list(self.channels.values()):
            ch.send(msg)

    def drain(self) -> None:
        """Tell every worker to drain and exit (the primary drains meanwhile): from now
        on a worker that exits is not started again."""
        self.stopping = True
        self.broadcast(("stop",))

    def stop(self, timeout: float) -> None:
        """Tell every worker to drain and exit; SIGKILL (by PID) one still there after
        `timeout` seconds."""
        if not self.stopping:
            self.drain()
        deadline = time.monotonic() + timeout
        for index, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except gevent.subprocess.TimeoutExpired:
                log.warning("worker %d (pid %d) did not stop in time; killing it", index, proc.pid)
                proc.kill()
                proc.wait()
        for ch in self.channels.values():
            ch.close()


# --------------------------------------------------------------------------- child side


def child_main(argv: list[str]) -> int:
    """``python -m gdispatch.workers FD``: a worker started by the primary, which wrote
    the hello message on FD (one end of a socketpair)."""
    fd = int(argv[1])
    sock = socket.socket(fileno=fd)
    hello = read_frame(sock)
    if not hello or hello[0] != "hello":
        print("gdispatch worker: no hello from the primary", file=sys.stderr)
        return 2
    _, config, index, relay_fd, relay_ports, listen_fds, list_text, states, keys = hello
    from gdispatch.app import run_worker

    udp_socks = {i: socket.socket(fileno=fd) for i, fd in listen_fds.items()}
    return run_worker(config, index, socket.socket(fileno=relay_fd), relay_ports, list_text, states, sock,
                      udp_socks, keys)


if __name__ == "__main__":
    sys.exit(child_main(sys.argv))
