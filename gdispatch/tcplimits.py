"""How many TCP connections the proxy keeps, from whom, and for how long: the decisions
behind the TCP side of gdispatch.net (tcp.py), without I/O (`[tcp]` in gdispatch.toml,
Kamailio's tcp_max_connections and tcp_connection_lifetime).

- `share`: the caps one process enforces. With N workers (gdispatch.cluster) each
  accepts on a SO_REUSEPORT listener of its own and keeps its own connections, so each
  enforces 1/N of every cap, rounded up. The kernel spreads connections over the
  workers by their addresses and ports, so one source reaches its cap in one worker a
  little before it holds the whole of `max_connections_per_source`.
- `fit_to_fds`: the total cap shrunk to what the open-files limit (RLIMIT_NOFILE)
  leaves once the process's other descriptors are counted (`RESERVED_FDS` and the
  control socket's connections): running out of descriptors would stop UDP, the control
  socket and DNS as well as TCP.
- `source_key`: one source is an IPv4 address, or an IPv6 /64 (a host commonly has a
  whole /64 to pick addresses from).
- `ConnectionTable`: the open connections, in total and per source; whether a new one
  may be accepted; which accepted connection makes room when the proxy must open one
  towards a destination and the table is full (the one idle longest), so that callers
  filling the table cannot cut the proxy off from its destinations. Connections the
  proxy opens count against the total, not against any source.
- `StreamReader`: cuts a connection's byte stream into messages (RFC 3261 §18.3,
  gdispatch.sip.frame_stream) and says when the connection must be closed:
  `idle_timeout` after its last complete message (a double-CRLF keep-alive counts,
  RFC 5626 §3.5.1; bytes trickled in do not), `message_timeout` after the first byte of
  a message still incomplete, whichever comes first.
- `AcceptBackoff`: how long to wait after a failed accept (out of descriptors or
  buffers): growing, bounded, with one log line per period rather than one per failure.
- `too_large_answer`: the 413 (RFC 3261 §21.4.11) for a message over MAX_MESSAGE_SIZE,
  built from its head.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from gdispatch.config import Tcp
from gdispatch.sip import MAX_MESSAGE_SIZE, ParseError, build_response, frame_stream, parse_message
from gdispatch.sip.grammar import BLANK_LINE

# Descriptors a process needs besides its TCP connections and the control socket's:
# its UDP sockets (the primary also holds every worker's: one per worker and UDP listen
# address), the relay and channel sockets of the workers, the TCP and control listeners,
# DNS queries, the list file and its watcher, the log. 64 leaves room for 16 workers.
RESERVED_FDS = 64

# Why a connection was not accepted: the key of its counter in `stats`.
REFUSED_TOTAL = "tcp_refused_max_connections"
REFUSED_PER_SOURCE = "tcp_refused_per_source"

IDLE = "idle"
SLOW = "slow"


@dataclass(frozen=True)
class TcpLimits:
    """The caps and timeouts one process enforces (`share`, `fit_to_fds`)."""

    max_connections: int = Tcp.max_connections
    max_per_source: int = Tcp.max_connections_per_source
    idle_timeout: float = Tcp.idle_timeout
    message_timeout: float = Tcp.message_timeout


def share(tcp: Tcp, workers: int) -> TcpLimits:
    """Worker's share of the `[tcp]` caps: 1/`workers` of each, rounded up."""
    n = max(1, workers)
    return TcpLimits(max_connections=-(-tcp.max_connections // n),
                     max_per_source=-(-tcp.max_connections_per_source // n),
                     idle_timeout=tcp.idle_timeout, message_timeout=tcp.message_timeout)


def fit_to_fds(limits: TcpLimits, fd_limit: int, reserved: int) -> tuple[TcpLimits, str]:
    """`limits` with the total cap no higher than `fd_limit` - `reserved` (and the
    per-source cap no higher than the total), and a line for the log when it had to be
    lowered ("" when not)."""
    room = max(1, fd_limit - reserved)
    if limits.max_connections <= room:
        return limits, ""
    lowered = TcpLimits(room, min(limits.max_per_source, room), limits.idle_timeout, limits.message_timeout)
    return lowered, (f"[tcp].max_connections: the open-files limit ({fd_limit}) leaves room for {room} TCP "
                     f"connections once {reserved} descriptors are kept for UDP, the control socket, DNS and "
                     f"files, not {limits.max_connections}; capped at {room} (raise LimitNOFILE or ulimit -n)")


def source_key(ip: str) -> str:
    """What counts as one source: the IPv4 address (an IPv4-mapped IPv6 one too), or
    the /64 of an IPv6 address."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class ConnectionTable:
    """The open TCP connections of one process, by identity: those accepted, with their
    source and in the order of their last activity, and those the proxy opened."""

    def __init__(self, limits: TcpLimits):
        self.limits = limits
        self.open = 0
        self.by_source: dict[str, int] = {}
        self._accepted: OrderedDict[Hashable, str] = OrderedDict()  # idle longest first
        self._opened: set[Hashable] = set()

    def refusal(self, source: str) -> str | None:
        """Why a connection from `source` may not be accepted now (the key of its
        counter: REFUSED_TOTAL or REFUSED_PER_SOURCE), None when it may."""
        if self.open >= self.limits.max_connections:
            return REFUSED_TOTAL
        if self.by_source.get(source, 0) >= self.limits.max_per_source:
            return REFUSED_PER_SOURCE
        return None

    def full(self) -> bool:
        return self.open >= self.limits.max_connections

    def accepted(self, conn: Hashable, source: str) -> None:
        self._accepted[conn] = source
        self.by_source[source] = self.by_source.get(source, 0) + 1
        self.open += 1

    def opened(self, conn: Hashable) -> None:
        self._opened.add(conn)
        self.open += 1

    def active(self, conn: Hashable) -> None:
        """`conn` carried a complete message: it is the last to make room."""
        if conn in self._accepted:
            self._accepted.move_to_end(conn)

    def closed(self, conn: Hashable) -> None:
        """`conn` is closed (any number of times)."""
        source = self._accepted.pop(conn, None)
        if source is not None:
            left = self.by_source[source] - 1
            if left:
                self.by_source[source] = left
            else:
                del self.by_source[source]
        elif conn in self._opened:
            self._opened.discard(conn)
        else:
            return
        self.open -= 1

    def idlest(self, spare: Hashable | None = None) -> Hashable | None:
        """The accepted connection idle longest (but `spare`), to close when the proxy
        must open one and the table is full; None when there is none."""
        for conn in self._accepted:
            if conn is not spare:
                return conn
        return None


class StreamReader:
    """One connection's receive buffer and read deadline. `feed` returns the complete
    messages; after it, `error` holds the ParseError that broke the stream (it cannot be
    resynchronised, RFC 3261 §18.3: the connection closes; `buffer` keeps what was not
    used, for `too_large_answer`)."""

    def __init__(self, now: float, idle_timeout: float, message_timeout: float):
        self.idle_timeout = idle_timeout
        self.message_timeout = message_timeout
        self.buffer = bytearray()
        self.error: ParseError | None = None
        self.last_complete = now
        self.message_started: float | None = None
        self._blank = 0  # CR and LF bytes in a row outside a message
        self._no_head_before = 0  # the buffer holds no blank line before this offset

    def feed(self, data: bytes, now: float) -> list[bytes]:
        buf = self.buffer
        buf += data
        out: list[bytes] = []
        while buf:
            if buf[0] in (13, 10):
                rest = buf.lstrip(b"\r\n")
                self._blank += len(buf) - len(rest)
                del buf[:len(buf) - len(rest)]
                if self._blank >= 4:  # a keep-alive "ping" (RFC 5626 §3.5.1)
                    self._blank = 0
                    self.last_complete = now
                continue
            # While the head is incomplete only the new bytes are searched for its end:
            # a peer sending one byte at a time must not make each read scan it all.
            if len(buf) <= MAX_MESSAGE_SIZE and BLANK_LINE.search(buf, max(0, self._no_head_before - 2)) is None:
                self._no_head_before = len(buf)
                break
            try:
                msg, used = frame_stream(buf)
            except ParseError as e:
                self.error = e
                break
            if msg is None:
                break
            del buf[:used]
            out.append(msg)
            self._blank = 0
            self._no_head_before = 0
            self.last_complete = now
        if not buf:
            self.message_started = None
        elif out or self.message_started is None:
            self.message_started = now  # the first byte of the message now incomplete
        return out

    def touch(self, now: float) -> None:
        """A complete message went out on the connection: it is not idle."""
        self.last_complete = max(self.last_complete, now)

    def deadline(self) -> tuple[float, str]:
        """When the connection must be closed, and why: IDLE or SLOW."""
        idle = self.last_complete + self.idle_timeout
        if self.message_started is not None:
            slow = self.message_started + self.message_timeout
            if slow <= idle:
                return slow, SLOW
        return idle, IDLE


class AcceptBackoff:
    """The wait after a failed accept: FIRST, doubled at each failure in a row up to
    MOST; the first failure is worth a log line, then one line per REPORT_EVERY seconds
    with the count, and one when accept works again."""

    FIRST = 0.05
    MOST = 1.0
    REPORT_EVERY = 10.0

    def __init__(self) -> None:
        self.delay = 0.0
        self.unreported = 0
        self._reported_at: float | None = None

    def failed(self, now: float, error: OSError) -> tuple[float, str]:
        """How long to wait before the next accept, and a line to log ("" for none)."""
        self.delay = min(self.delay * 2, self.MOST) if self.delay else self.FIRST
        if self._reported_at is None:
            self._reported_at = now
            return self.delay, f"tcp accept failed: {error}; trying again after waits growing to {self.MOST:g} s"
        self.unreported += 1
        if now - self._reported_at < self.REPORT_EVERY:
            return self.delay, ""
        line = f"tcp accept failed {self.unreported} more times in the last {now - self._reported_at:.0f} s: {error}"
        self._reported_at = now
        self.unreported = 0
        return self.delay, line

    def succeeded(self) -> str:
        """A connection was accepted: a line to log when accept had been failing."""
        if self._reported_at is None:
            return ""
        line = "tcp accept works again" + (f" ({self.unreported} more failures)" if self.unreported else "")
        self.delay = 0.0
        self.unreported = 0
        self._reported_at = None
        return line


def too_large_answer(buffer: bytes | bytearray, ip: str) -> bytes | None:
    """The 413 Message Too Large (RFC 3261 §21.4.11) for a message over
    MAX_MESSAGE_SIZE that came from `ip`, built from its head (the start of `buffer`),
    or None: no answer when the head itself is over the size (its end was not seen),
    when it is a response or an ACK (never answered, RFC 3261 §17.1.1.3), or when it has
    no usable Via to answer by. The answer goes back on the connection the request
    came on (RFC 3261 §18.2.2)."""
    blank = BLANK_LINE.search(buffer)
    if blank is None or blank.end() > MAX_MESSAGE_SIZE:
        return None
    try:
        msg = parse_message(bytes(buffer[:blank.end()]), head_only=True)
        if not msg.is_request or msg.method == "ACK":
            return None
        via = msg.top_via
        # RFC 3261 §18.2.1: received names the address the request came from.
        top = via.raw + b";received=" + ip.encode() if via.host != ip and via.received is None else None
        return build_response(msg, 413, "Message Too Large", to_tag=secrets.token_hex(4), top_via=top)
    except ParseError:
        return None
