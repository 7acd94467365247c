"""The channel between the primary and one worker, and what goes over it.

Each message is a dataclass below, pickled and framed by a 4-byte length on a stream
socketpair that only these two processes hold (the primary made it and the worker
inherited its end), so a message is read whole or not at all, and in the order sent.
The receiver dispatches on the message's type.

A destination is named the same way in every process by `dest_key`: (set id, position
in its set, URI). Every worker parses the same list text, so the positions agree.
"""

from __future__ import annotations

import logging
import pickle
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Union

import gevent
import gevent.socket

from gdispatch.config import Config
from gdispatch.dispatcher.destination import Destination, DispatcherList

# The name the workers' log lines have always carried, whichever module logs them.
log = logging.getLogger("gdispatch.workers")

_FRAME = struct.Struct("!I")

DestKey = tuple[int, int, str]  # (set id, position in its set, URI): `dest_key`


def dest_key(dest: Destination) -> DestKey:
    """How every worker names a destination: (set id, position in its set, URI)."""
    return (dest.setid, dest.index, dest.uri)


def keyed(dlist: DispatcherList) -> dict[DestKey, Destination]:
    """key -> destination for every destination of `dlist`."""
    return {dest_key(d): d for d in dlist.destinations()}


def states_of(dlist: DispatcherList) -> dict[DestKey, int]:
    """Every destination's state (its flags), by key."""
    return {dest_key(d): d.flags for d in dlist.destinations()}


def apply_states(dlist: DispatcherList, states: dict[DestKey, int]) -> None:
    """Give the destinations of `dlist` the primary's `states` (those it names)."""
    for key, dest in keyed(dlist).items():
        flags = states.get(key)
        if flags is not None:
            dest.flags = flags


# ----------------------------------------------------------------- from the primary


@dataclass(frozen=True)
class Hello:
    """What a new worker starts from, once. The file descriptors are inherited: its relay
    socket and its sockets on the UDP listen addresses (listen index -> fd). `keys`: the
    dialog keys of gdispatch.recordroute, so that every worker signs and verifies alike."""

    config: Config
    index: int
    relay_fd: int
    relay_ports: list[int]
    listen_fds: dict[int, int]
    list_text: str
    states: dict[DestKey, int]
    keys: list[tuple[str, bytes]]


@dataclass(frozen=True)
class ListSwapped:
    """The list the primary swapped in (start, reload, RPC add or remove), with every
    destination's state."""

    text: str
    reason: str
    states: dict[DestKey, int]


@dataclass(frozen=True)
class StateChanged:
    """A destination's new state (a ping, a traffic failure, ``dispatcher.set_state``)."""

    key: DestKey
    flags: int


@dataclass(frozen=True)
class KeysChanged:
    """The dialog keys, read again on a reload."""

    keys: list[tuple[str, bytes]]


@dataclass(frozen=True)
class TlsReload:
    """Read the `[tls]` certificates and keys again (a reload)."""


@dataclass(frozen=True)
class Latencies:
    """The primary's latency estimates in ms, every second, for algorithm 11."""

    ms: dict[DestKey, float]


@dataclass(frozen=True)
class Stop:
    """Drain and exit."""


# ----------------------------------------------------------------- from a worker


@dataclass(frozen=True)
class Ready:
    """The worker listens (once)."""


@dataclass(frozen=True)
class TrafficFailure:
    """A request to a destination failed in that worker: no answer, a transport error,
    or one of the mark codes (the primary's prober counts it, as it does its own)."""

    key: DestKey
    reason: str


@dataclass(frozen=True)
class Report:
    """Every second, for ``dispatcher.list``, ``stats`` and the metrics: the worker's
    calls per destination (algorithm 10), its per-destination INVITE counters
    (gdispatch.proxy.counters.CallCounters.table), its counters, and its labelled
    counters and histograms (gdispatch.measures.samples: kept apart from `stats`, which
    ``stats`` shows as is)."""

    loads: dict[DestKey, int]
    counters: dict[tuple, list[int]]
    stats: dict[str, int]
    tls: list[dict] = field(default_factory=list)  # its TLS connections, for ``tls.list``
    metrics: dict[tuple, float] = field(default_factory=dict)


FromPrimary = Union[Hello, ListSwapped, StateChanged, KeysChanged, TlsReload, Latencies, Stop]
FromWorker = Union[Ready, TrafficFailure, Report]
Message = Union[FromPrimary, FromWorker]


class Channel:
    """Messages over a stream socket between the primary and one worker. `send` works
    from construction; `start` reads what the other end sends."""

    def __init__(self, sock: socket.socket):
        self.sock = gevent.socket.socket(fileno=sock.detach())
        self.closed = False
        self.on_close: Callable[[], None] | None = None
        self.greenlet: gevent.Greenlet | None = None

    def send(self, msg: Message) -> None:
        if self.closed:
            return
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.sock.sendall(_FRAME.pack(len(data)) + data)
        except OSError:
            self._close()

    def start(self, on_message: Callable[[Message], None], on_close: Callable[[], None]) -> None:
        """Hand each message received to `on_message`; `on_close` once the other end is
        gone (or a send failed)."""
        self.on_close = on_close
        if self.closed:  # a send before found the other end gone
            on_close()
            return
        self.greenlet = gevent.spawn(self._read_loop, on_message)

    def _read_loop(self, on_message: Callable[[Message], None]) -> None:
        try:
            while True:
                msg = read_message(self.sock)
                if msg is None:
                    break
                try:
                    on_message(msg)
                except Exception:
                    log.exception("error handling %s from another worker", type(msg).__name__)
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
        if self.on_close is not None:
            self.on_close()

    def close(self) -> None:
        if self.greenlet is not None and self.greenlet is not gevent.getcurrent():
            self.greenlet.kill(block=False)
        self.closed = True
        self.sock.close()


def read_message(sock) -> Message | None:
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
