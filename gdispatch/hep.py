"""HEP v3, the Homer Encapsulation Protocol (the "HEP3 Network Protocol Specification",
rev. 37, sipcapture.org): a copy of each SIP message the proxy receives and sends, to a
Homer collector over UDP, as Kamailio's siptrace module sends it (``hep_mode_on``,
``hep_version = 3``). `[capture] hep = "udp:IP:PORT"` turns it on, `capture_id` is the
capture agent id (Kamailio's ``hep_capture_id``).

`encode` makes the packet, without I/O. The HEP3 header is the ID "HEP3" and the total
length of the packet (two octets, network byte order, so at most 65535 octets); the
chunks follow, each a vendor ID, a type ID, its total length (the six octets of these
three fields included) and its payload, every number in network byte order. All the
chunks are generic ones (vendor 0x0000), in the order Kamailio writes them:

====== =================================== ==========================================
type   what                                here
====== =================================== ==========================================
0x0001 IP protocol family (uint8)          2 IPv4, 10 IPv6
0x0002 IP protocol ID (uint8)              17 UDP, 6 TCP, 22 TLS (the id Kamailio's
                                           siptrace gives TLS)
0x0003 IPv4 source address, 0x0004 dest.   or 0x0005 and 0x0006 with IPv6 (16 octets)
0x0007 source port, 0x0008 dest. (uint16)
0x0009 timestamp, seconds (uint32)         since the epoch
0x000a microseconds (uint32)               added to the seconds
0x000b protocol type (uint8)               1: SIP
0x000c capture agent ID (uint32)           `capture_id`
0x0011 internal correlation id             the Call-ID (left out when there is none)
0x000f captured packet payload             the SIP message; over TLS, its plaintext
====== =================================== ==========================================

`call_id` finds the correlation id in a message as it is on the wire.

`Sender` sends the copies: one UDP socket of its own, non-blocking, to an IP address
(the configuration takes no name: no DNS on the SIP path). A copy that cannot be sent (the
socket's buffer is full, the collector is unreachable, the packet is over what HEP or UDP
can carry) is counted in `hep_send_failures`, never raised to the caller, and the first
failure is logged; `hep_sent` counts the copies sent. Homer is a monitor: a SIP message
is never held up or lost for its copy.

The transport shell (gdispatch.net.transports, `Transports.tap`) calls `Sender.capture`
for each message, in each process that handles messages (every worker sends its own).
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import re
import socket
import struct
import time
from collections.abc import Callable

log = logging.getLogger("gdispatch.hep")

HEP3_ID = b"HEP3"
MAX_PACKET = 0xFFFF  # the total length is two octets

VENDOR_GENERIC = 0x0000

# Generic chunk types (vendor 0x0000), from the specification's table.
IP_FAMILY = 0x0001
IP_PROTOCOL = 0x0002
IPV4_SOURCE = 0x0003
IPV4_DESTINATION = 0x0004
IPV6_SOURCE = 0x0005
IPV6_DESTINATION = 0x0006
SOURCE_PORT = 0x0007
DESTINATION_PORT = 0x0008
TIMESTAMP = 0x0009
TIMESTAMP_MICROSECONDS = 0x000A
PROTOCOL_TYPE = 0x000B
CAPTURE_AGENT_ID = 0x000C
PAYLOAD = 0x000F
CORRELATION_ID = 0x0011

FAMILY_IPV4 = 2
FAMILY_IPV6 = 10
PROTOCOL_SIP = 0x01  # capture protocol type 0x01
# The IP protocol ID of each transport. TLS has no IP protocol of its own: Kamailio
# sends 22 (IPPROTO_IDP, "a fake proto type" in its siptrace module) for it.
IP_PROTOCOLS = {"udp": 17, "tcp": 6, "tls": 22}

_CHUNK_HEAD = struct.Struct("!HHH")  # vendor ID, type ID, chunk length
_HEADER = struct.Struct("!4sH")  # the HEP3 ID, the total length


def _chunk(kind: int, fmt: str, *values: object) -> bytes:
    """One generic chunk whose payload is `values` packed as `fmt` (network byte order)."""
    body = struct.pack("!" + fmt, *values)
    return _CHUNK_HEAD.pack(VENDOR_GENERIC, kind, _CHUNK_HEAD.size + len(body)) + body


# The two timestamp chunks: their heads and payloads, packed in one go.
_TIME = struct.Struct("!HHHIHHHI")
_TIME_SIZE = _CHUNK_HEAD.size + 4


@functools.lru_cache(maxsize=4096)
def _addressing(transport: str, source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The chunks 0x0001 to 0x0008 of a message from `source` to `destination`: the
    same for every message between two sockets, and a proxy's peers are few and come
    back, so they are made once."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError(f"{source[0]} and {destination[0]} are not of one address family")
    v4 = src.version == 4
    return b"".join((
        _chunk(IP_FAMILY, "B", FAMILY_IPV4 if v4 else FAMILY_IPV6),
        _chunk(IP_PROTOCOL, "B", IP_PROTOCOLS[transport]),
        _chunk(IPV4_SOURCE if v4 else IPV6_SOURCE, f"{len(src.packed)}s", src.packed),
        _chunk(IPV4_DESTINATION if v4 else IPV6_DESTINATION, f"{len(dst.packed)}s", dst.packed),
        _chunk(SOURCE_PORT, "H", source[1]),
        _chunk(DESTINATION_PORT, "H", destination[1]),
    ))


@functools.lru_cache(maxsize=64)
def _agent(capture_id: int) -> bytes:
    """The chunks 0x000b (SIP) and 0x000c (the capture agent id)."""
    return _chunk(PROTOCOL_TYPE, "B", PROTOCOL_SIP) + _chunk(CAPTURE_AGENT_ID, "I", capture_id)


def encode(transport: str, source: tuple[str, int], destination: tuple[str, int], payload: bytes, *,
           capture_id: int, time_us: int, correlation: bytes = b"") -> bytes:
    """The HEP3 packet of one SIP message: `payload`, sent over `transport` ("udp",
    "tcp", "tls") from `source` to `destination` ((IP, port), both of one family) at
    `time_us` (microseconds since the epoch), by capture agent `capture_id`, with the
    correlation id `correlation` (b"": no such chunk). ValueError when the packet would
    be over 65535 octets or the addresses are not of one family."""
    addressing = _addressing(transport, source, destination)
    agent = _agent(capture_id)
    total = (_HEADER.size + len(addressing) + _TIME.size + len(agent) + _CHUNK_HEAD.size + len(payload)
             + (_CHUNK_HEAD.size + len(correlation) if correlation else 0))
    if total > MAX_PACKET:
        raise ValueError(f"a HEP3 packet of {total} octets is over {MAX_PACKET}")
    seconds, micro = divmod(time_us, 1_000_000)
    times = _TIME.pack(VENDOR_GENERIC, TIMESTAMP, _TIME_SIZE, seconds,
                       VENDOR_GENERIC, TIMESTAMP_MICROSECONDS, _TIME_SIZE, micro)
    tail = _CHUNK_HEAD.pack(VENDOR_GENERIC, PAYLOAD, _CHUNK_HEAD.size + len(payload))
    if correlation:
        head = _CHUNK_HEAD.pack(VENDOR_GENERIC, CORRELATION_ID, _CHUNK_HEAD.size + len(correlation))
        return b"".join((_HEADER.pack(HEP3_ID, total), addressing, times, agent, head, correlation, tail, payload))
    return b"".join((_HEADER.pack(HEP3_ID, total), addressing, times, agent, tail, payload))


# The Call-ID header line, long or compact form (RFC 3261 §7.3.3, §20.8), in a message's
# header: a header name is case-insensitive and may be followed by white space (§7.3.1).
# Most user agents write it "Call-ID:", which a plain search finds at a fraction of the
# cost of the expression.
_CALL_ID = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_USUAL = b"\nCall-ID:"


def call_id(message: bytes) -> bytes:
    """The Call-ID of a SIP message as it is on the wire, b"" when it has none; the body
    is not searched."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        end = len(message)
    at = message.find(_USUAL, 0, end)
    if at >= 0:
        at += len(_USUAL)
        stop = message.find(b"\n", at, end + 1)
        return message[at:stop if stop >= 0 else end].strip(b" \t\r")
    m = _CALL_ID.search(message, 0, end)
    return m.group(1).rstrip(b" \t") if m is not None else b""


def collector_address(target: str) -> tuple[str, int]:
    """(IP, port) of `[capture] hep` ("udp:IP:PORT", "udp:[IPv6]:PORT"), which
    gdispatch.sections checked; ValueError for anything else."""
    proto, _, rest = target.partition(":")
    host, _, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if proto != "udp" or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected udp:IP:PORT, got {target!r}")
    ipaddress.ip_address(host)  # an IP address literal, or ValueError
    return host, int(port)


class Sender:
    """The copies of the SIP messages of one process, to the collector over UDP.
    `stats`: the process's counters (gdispatch.net.Transports.stats), where `hep_sent`
    and `hep_send_failures` are kept."""

    def __init__(self, target: str, capture_id: int, stats: dict[str, int]):
        self.address = collector_address(target)
        self.capture_id = capture_id
        self.stats = stats
        stats.setdefault("hep_sent", 0)
        stats.setdefault("hep_send_failures", 0)
        self._logged = False
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        # Never wait on the collector: a full buffer is a failed copy, not a SIP message
        # held up (the socket is the standard library's, not gevent's).
        self.sock.setblocking(False)
        # Connected: the route is looked up once, not for every copy, and a collector
        # that is not listening says so (the next copy fails with ECONNREFUSED).
        self._send: Callable[[bytes], object]
        try:
            self.sock.connect(self.address)
        except OSError as e:  # no route to it now: each copy tries again, and is counted
            self._failed(e)
            self._send = self._send_to
        else:
            self._send = self.sock.send

    def _send_to(self, packet: bytes) -> None:
        self.sock.sendto(packet, self.address)

    def capture(self, transport: str, source: tuple[str, int], destination: tuple[str, int], data: bytes) -> None:
        """Send the copy of one message (`transport`, from `source` to `destination`)."""
        try:
            self._send(encode(transport, source, destination, data, capture_id=self.capture_id,
                              time_us=time.time_ns() // 1000, correlation=call_id(data)))
        except (OSError, ValueError) as e:
            self._failed(e)
            return
        self.stats["hep_sent"] += 1

    def _failed(self, e: OSError | ValueError) -> None:
        self.stats["hep_send_failures"] += 1
        if not self._logged:
            self._logged = True  # once: a collector that is down would fill the log
            why = (e.strerror or errno.errorcode.get(e.errno or 0, "")) if isinstance(e, OSError) else str(e)
            log.warning("a HEP copy to %s:%s was not sent (%s); failures are counted in hep_send_failures",
                        self.address[0], self.address[1], why)

    def close(self) -> None:
        self.sock.close()
