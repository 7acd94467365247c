"""The transport layer as the proxy sees it (RFC 3261 §18): `Transports`, every
listener of the process, the table of TCP connections, and sending.

The client side of the layer (§18.1) is `send`: a request or a forwarded response
leaves from the listener of its transport and address family (which the proxy writes in
its Via), or the one it is given (`listener_at`: a destination's socket), over UDP at
once, over TCP on the connection to that peer (from that listener's address when it was
given), opened when there is none (a full table makes room by closing the accepted
connection idle longest). The
server side (§18.2) is `on_message`, called with each message received and its `Source`,
and `reply`, which sends a response back where its request came from (§18.2.2: on the
request's connection while it is open, else on one to the sent-by address).

What the received messages go to is given to `start`, not to the constructor: the proxy
is built on the transports (it sends through them and names their listeners in its Via
and Record-Route), so it exists only once they do, and nothing is read before `start`.

A copy of every message received and sent goes to a tap when one is set (`tap`: Homer's
HEP, gdispatch.hep): the functions that receive and send are wrapped then, and only then,
so that without a tap the SIP path runs as if the tap did not exist.

`ensure_free` checks, before workers bind with SO_REUSEPORT, that no other process holds
a listen address. `reach_problem` says, from the listen addresses alone, why a
destination cannot be sent to (``gdispatch list check`` asks it without sockets).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Protocol, cast

import gevent

from gdispatch import sockfilter
from gdispatch.config import Listen
from gdispatch.net.source import Source, TransportError, address_family
from gdispatch.net.tcp import TCP_COUNTERS, TcpConnection, TcpListener
from gdispatch.net.tls import TLS_COUNTERS, TlsContexts, TlsPeer
from gdispatch.net.tlsconn import TlsListener
from gdispatch.net.udp import UdpListener
from gdispatch.tcplimits import ConnectionTable, TcpLimits

# The name the transport's log lines have always carried, whichever module logs them.
log = logging.getLogger("gdispatch.transport")


class Handoff(Protocol):
    """What hands a datagram of a call another worker owns to that worker, and receives
    those the other workers hand to this one (gdispatch.cluster.relay.Relay)."""

    #: How long the datagrams handed over waited before they were read (as
    #: UdpListener.queue_delay): they are requests waiting too.
    queue_delay: float

    def steer(self, data: bytes, addr: tuple[str, int], listener: UdpListener) -> bool:
        """True when the datagram went to the worker that owns its call; False to
        handle it here."""
        ...


def _not_started(data: bytes, source: Source) -> None:
    raise RuntimeError("a message was read before Transports.start")


#: What a tap is given, for each message: (transport, source, destination, data), the
#: addresses as (IP, port), the message as it is on the wire (over TLS, its plaintext).
Tap = Callable[[str, tuple[str, int], tuple[str, int], bytes], None]


def _tapped_receive(on_message: Callable[[bytes, Source], None], tap: Tap) -> Callable[[bytes, Source], None]:
    """`on_message` after a copy of the message went to `tap`, from its source to the
    address of the socket it came in on (over TCP and TLS, its listener's: as Kamailio's
    siptrace names the socket)."""
    def received(data: bytes, source: Source) -> None:
        listen = source.listener.listen
        tap(source.transport, source.addr, (listen.host, listen.port), data)
        on_message(data, source)
    return received


def _tapped_sendto(listener: UdpListener, tap: Tap) -> Callable[[bytes, tuple[str, int]], None]:
    """`listener.sendto`, then a copy of the datagram sent to `tap`. The listener is
    held weakly: the function is one of its attributes, and must not keep it alive."""
    ref = weakref.ref(listener)
    sendto = type(listener).sendto
    local = (listener.listen.host, listener.listen.port)

    def tapped(data: bytes, addr: tuple[str, int]) -> None:
        lst = ref()
        assert lst is not None  # its own attribute is being called
        sendto(lst, data, addr)
        tap("udp", local, addr, data)
    return tapped


def _tapped_send(conn: TcpConnection, tap: Tap) -> Callable[..., None]:
    """`conn.send`, then a copy of the message to `tap` (the plaintext over TLS), from
    the address of the connection's listener, as for the messages it receives. The
    connection is held weakly: a cycle through it would keep it until the cyclic
    collector runs (gdispatch.collector), which may be long after it closes."""
    ref = weakref.ref(conn)
    send = type(conn).send
    transport, addr = conn.transport, conn.addr
    local = (conn.listener.listen.host, conn.listener.listen.port)

    def tapped(data: bytes, on_error: Callable[[], None] | None = None) -> None:
        c = ref()
        assert c is not None  # its own attribute is being called
        send(c, data, on_error)
        tap(transport, local, addr, data)
    return tapped


def ensure_free(listens: tuple[Listen, ...]) -> None:
    """Raise TransportError when a listen address is already taken. Workers bind with
    SO_REUSEPORT, which another process of the same user could share unnoticed; a
    plain bind first makes sure nobody else holds the port."""
    for listen in listens:
        kind = socket.SOCK_DGRAM if listen.transport == "udp" else socket.SOCK_STREAM
        with socket.socket(address_family(listen.host), kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
            try:
                sock.bind((listen.host, listen.port))
            except OSError as e:
                raise TransportError(e.errno, f"cannot listen on {listen}: {e.strerror}") from None


def reach_problem(listens: Iterable[Listen], transport: str, host: str) -> str:
    """'' when one of `listens` can send to IP `host` over `transport` (a listen address
    of that transport and address family: RFC 3261 §18.1.1, the request leaves from the
    address written in our Via), else why not, for the operator."""
    if transport not in ("udp", "tcp", "tls"):
        return f"transport {transport!r} is not supported (udp, tcp and tls are)"
    v6 = ":" in host
    if not any(x.transport == transport and x.family_v6 == v6 for x in listens):
        family = "IPv6" if v6 else "IPv4"
        return f"no {transport.upper()} {family} listen address to send from (add one to [server].listen)"
    return ""


def _local_port(conn: TcpConnection) -> int:
    """Our end's port: the listener's for an accepted connection, the one the kernel
    gave a connection we opened (0 before it is connected)."""
    if conn.source is not None:
        return conn.listener.listen.port
    try:
        return conn.sock.getsockname()[1] if conn.sock is not None else 0
    except OSError:
        return 0


class Transports:
    """All listeners, the TCP connection table, and sending."""

    def __init__(self, listens: tuple[Listen, ...], *, shared: bool = False,
                 udp_socks: dict[int, socket.socket] | None = None, handoff: Handoff | None = None,
                 tcp_limits: TcpLimits | None = None, kernel_filter: bool = False,
                 tls: TlsContexts | None = None):
        """`shared`: one of several workers on the same listen addresses (SO_REUSEPORT);
        each UDP listener then gets a private twin on an ephemeral port of the same IP,
        which sends this worker's requests and receives their responses. `udp_socks`:
        this worker's sockets of the group the primary bound, by position in `listens`.
        `handoff`: with several workers, the relay: the UDP listen sockets hand it the
        datagrams of calls another worker owns, and it hands this worker theirs
        (`deliver`).
        `tcp_limits`: this process's TCP caps and timeouts (gdispatch.tcplimits; the
        `[tcp]` defaults when None). `kernel_filter`: the kernel drops what cannot be SIP
        (gdispatch.sockfilter). `tls`: the SSL contexts of the `tls:` listen addresses
        and of the connections they open (gdispatch.net.tls)."""
        # What `start` gives: where received messages go, whether a datagram from an IP
        # address may be read (gdispatch.flood) and who hears of ICMP errors.
        self.on_message: Callable[[bytes, Source], None] = _not_started
        self.admit: Callable[[str], bool] | None = None
        self.on_unreachable: Callable[[tuple[str, int]], None] | None = None
        self.kernel_filter = kernel_filter
        self.tapped: Tap | None = None  # where copies of the messages go (`tap`)
        self.filter_error: OSError | None = None  # the kernel's refusal of the filter
        self.banned: frozenset[str] = frozenset()  # sources banned as floods (`set_banned`)
        self.tls = tls
        self.stats: dict[str, int] = dict.fromkeys(TCP_COUNTERS + (TLS_COUNTERS if tls is not None else ()), 0)
        self.listeners: list[UdpListener | TcpListener] = []
        # By transport and peer address: a TCP and a TLS connection to one address are
        # two connections.
        self.connections: dict[tuple[str, tuple[str, int]], TcpConnection] = {}
        # The connections whose local address is known, by (peer, local IP): those
        # accepted on a listener and those opened bound to one (`send(bind=True)`), for
        # a request that must leave from a given socket (Kamailio's tcpconn_get with a
        # local address).
        self.bound: dict[tuple[str, tuple[str, int], str], TcpConnection] = {}
        self.tcp_limits = tcp_limits or TcpLimits()
        self.table = ConnectionTable(self.tcp_limits)
        for listen in listens:
            try:
                lst: UdpListener | TcpListener
                index = len(self.listeners)
                if listen.transport == "udp":
                    given = (udp_socks or {}).get(index)
                    lst = UdpListener(listen, self, reuseport=shared, sock=given, index=index,
                                      steer=handoff.steer if handoff is not None else None)
                    if shared:
                        lst.private = UdpListener(Listen("udp", listen.host, 0), self, public=lst)
                elif listen.transport == "tls":
                    lst = TlsListener(listen, self, reuseport=shared, index=index)
                else:
                    lst = TcpListener(listen, self, reuseport=shared, index=index)
            except OSError as e:
                self.close()
                raise TransportError(e.errno, f"cannot listen on {listen}: {e.strerror}") from None
            self.listeners.append(lst)
        # Where new requests queue up: the UDP listen sockets and the handoff from other
        # workers. Each has `queue_delay`.
        self.request_receivers: list = [lst for lst in self.listeners if lst.transport == "udp"]
        if handoff is not None:
            self.request_receivers.append(handoff)
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

    def start(self, on_message: Callable[[bytes, Source], None], *,
              on_unreachable: Callable[[tuple[str, int]], None] | None = None,
              admit: Callable[[str], bool] | None = None, listen: bool = True) -> None:
        """Start receiving: every message goes to `on_message(data, source)` (§18.2.1),
        each (ip, port) an ICMP error names to `on_unreachable` (§18.4), and a datagram
        is read only when `admit(ip)` says so (gdispatch.flood). `listen=False` starts
        only the workers' private sockets (the listen sockets queue what arrives until
        `start_listening()`)."""
        self.on_message = on_message if self.tapped is None else _tapped_receive(on_message, self.tapped)
        self.on_unreachable = on_unreachable
        self.admit = admit
        for lst in self._sockets():
            if listen or lst.public is not lst:
                lst.start()

    def tap(self, tap: Tap) -> None:
        """From now on, a copy of every message received and sent goes to `tap`
        (gdispatch.hep.Sender.capture): call it before `start`. What receives and sends
        is wrapped here: the messages `start`'s `on_message` is given, the datagrams of
        each UDP socket's `sendto` (requests, responses, replies), the messages of each
        TCP or TLS connection's `send`, from its creation (`remember`) on."""
        if self.tapped is not None:
            raise RuntimeError("the transports are tapped already")
        self.tapped = tap
        for lst in self._sockets():
            if isinstance(lst, UdpListener):
                lst.sendto = _tapped_sendto(lst, tap)  # type: ignore[method-assign,assignment]
        remember = self.remember

        def remember_tapped(conn: TcpConnection) -> None:
            conn.send = _tapped_send(conn, tap)  # type: ignore[method-assign]
            remember(conn)
        self.remember = remember_tapped  # type: ignore[method-assign]

    def start_listening(self) -> None:
        for lst in self.listeners:
            if not lst.started:
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
        to this one (the `handoff`): handle it as if it had arrived here."""
        self.on_message(data, Source("udp", addr, self.listeners[listener_index]))

    def unreachable(self, addr: tuple[str, int]) -> None:
        if self.on_unreachable is not None:
            self.on_unreachable(addr)

    def tls_connections(self) -> list[dict]:
        """The TLS connections, as Kamailio's ``tls.list`` shows them (`src_*` the
        peer's end, `dst_*` ours), with the session's version and cipher, and the
        subject of the peer's certificate when it sent one that was verified."""
        idle_since = time.monotonic()
        conns = {id(c): c for c in (*self.connections.values(), *self.bound.values())}
        out = []
        for conn in conns.values():
            tls = conn.tls
            if tls is None or conn.closed:
                continue
            info = tls.info() if tls.established else {}
            out.append({
                "id": id(conn) & 0xFFFFFFFF,
                "created": time.ctime(conn.created),
                "idle": int(idle_since - conn.reader.last_complete),
                "src_ip": conn.addr[0], "src_port": conn.addr[1],
                "dst_ip": conn.local_ip or "", "dst_port": _local_port(conn),
                "direction": "accepted" if conn.source is not None else "opened",
                "state": "established" if tls.established else "handshake",
                "cipher": " ".join(x for x in (info.get("version"), info.get("cipher"), info.get("bits")) if x),
                "peer_subject": info.get("peer_subject", ""),
                "server_name": info.get("server_name", ""),
            })
        return out

    def remember(self, conn: TcpConnection) -> None:
        self.connections[(conn.transport, conn.addr)] = conn
        if conn.local_ip is not None:
            self.bound[(conn.transport, conn.addr, conn.local_ip)] = conn
        if conn.source is not None:
            self.table.accepted(conn, conn.source)
        else:
            self.table.opened(conn)
        self.stats["tcp_connections_open"] = self.table.open

    def located(self, conn: TcpConnection) -> None:
        """`conn`, opened without binding, has its local address now (`local_ip`)."""
        key = (conn.transport, conn.addr, conn.local_ip or "")
        known = self.bound.get(key)
        if known is None or known.closed:
            self.bound[key] = conn

    def forget(self, conn: TcpConnection) -> None:
        if self.connections.get((conn.transport, conn.addr)) is conn:
            del self.connections[(conn.transport, conn.addr)]
        key = (conn.transport, conn.addr, conn.local_ip or "")
        if self.bound.get(key) is conn:
            del self.bound[key]
        self.table.closed(conn)
        self.stats["tcp_connections_open"] = self.table.open

    def _open(self, listener: TcpListener, addr: tuple[str, int], bind: bool = False,
              peer: TlsPeer | None = None) -> TcpConnection:
        """A new connection towards `addr`; from the listener's IP address when `bind`
        (an ephemeral port: the listen port is taken); over TLS, to `peer` (its IP
        address when None: the name its certificate must carry). When the table is full the
        accepted connection idle longest makes room: callers filling the table must not
        cut the proxy off from its destinations."""
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
        conn = listener.connection(addr, None, bind_ip=listener.listen.host if bind else None, peer=peer)
        self.remember(conn)
        return conn

    def listener_for(self, transport: str, host: str) -> UdpListener | TcpListener | None:
        """The listener that sends to `host` over `transport` (same address family)."""
        v6 = ":" in host
        for lst in self.listeners:
            if lst.transport == transport and lst.listen.family_v6 == v6:
                return lst.private or lst
        return None

    def listener_at(self, socket: Listen, transport: str, host: str) -> UdpListener | TcpListener | None:
        """The listener bound to `socket` (a destination's `socket` attr, the default
        socket, the address our Route entry names) when it sends `transport` to `host`;
        else the one at the same IP and port in `transport` (as Kamailio's
        get_send_socket takes a forced socket of another proto); None when neither
        listens there or the address family differs (the caller falls back to
        `listener_for`). With several workers, the worker's own twin of it."""
        if (":" in host) != socket.family_v6:
            return None
        for lst in self.listeners:
            listen = lst.listen
            if listen.transport == transport and listen.host == socket.host and listen.port == socket.port:
                return lst.private or lst
        return None

    def sender(self, transport: str, host: str, socket: Listen | None) -> tuple[UdpListener | TcpListener | None, bool]:
        """The listener a request to `host` over `transport` leaves from, and whether it
        was chosen (`send`'s `bind`): the one at `socket` (a destination's `socket` or
        `sockname`, the default socket, the address our Route entry names), else the
        first of the transport and address family (None when there is none)."""
        if socket is not None:
            listener = self.listener_at(socket, transport, host)
            if listener is not None:
                return listener, True
        return self.listener_for(transport, host), False

    def can_reach(self, transport: str, host: str) -> str:
        """'' when a message can be sent there, else why not, for the operator."""
        return reach_problem((lst.listen for lst in self.listeners), transport, host)

    def send(self, transport: str, addr: tuple[str, int], data: bytes,
             on_error: Callable[[], None] | None = None,
             listener: UdpListener | TcpListener | None = None, bind: bool = False,
             peer: TlsPeer | None = None) -> UdpListener | TcpListener:
        """Send a message; returns the listener it leaves from (for Via). Errors known at
        once raise TransportError; a TCP connect that fails later calls `on_error`.
        `bind`: the listener was chosen for this message (a destination's socket, the
        socket our Route entry names), so over TCP it goes on a connection from that
        listener's address, opened bound to it if there is none (as Kamailio binds a
        connection to a forced socket); else on any connection to `addr`. `peer`: over
        TLS, who a connection opened for it must reach (gdispatch.net.tls.TlsPeer: the
        name to check and the client profile); a connection open to `addr` is reused."""
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
        if bind:
            conn = self.bound.get((transport, addr, listener.listen.host))
        else:
            conn = self.connections.get((transport, addr))
        if conn is None or conn.closed:
            conn = self._open(cast(TcpListener, listener), addr, bind, peer)
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
            conn = self.connections.get((source.transport, addr))
        try:
            if conn is None or conn.closed:
                conn = self._open(cast(TcpListener, source.listener), addr)
            conn.send(data)
        except TransportError as e:
            log.debug("tcp reply to %s failed: %s", addr, e)
