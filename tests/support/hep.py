"""A HEP v3 decoder for the tests, written from the "HEP3 Network Protocol Specification"
(rev. 37) and not from gdispatch.hep: a packet is the ID "HEP3", a two-octet total length
that counts the whole packet, then chunks of a two-octet vendor ID, a two-octet type ID, a
two-octet length that counts the chunk's own six octets of head, and a payload. Every
number is in network byte order; an address is its octets, most significant first.

`decode` checks what the specification fixes (the ID, the total length, each chunk's
length within the packet and, for the generic chunks of fixed size, that size) and
returns a `Packet` with the generic chunks by name; `Collector` is a UDP socket that
decodes what it receives, for the end-to-end tests.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from dataclasses import dataclass, field

# The specification's payload types of the generic chunks (vendor 0x0000) the proxy sends,
# with their size in octets (None: any size) and the name `Packet` gives each.
GENERIC = {
    0x0001: ("ip_family", "uint8"),
    0x0002: ("ip_protocol", "uint8"),
    0x0003: ("src_ip", "inet4-addr"),
    0x0004: ("dst_ip", "inet4-addr"),
    0x0005: ("src_ip", "inet6-addr"),
    0x0006: ("dst_ip", "inet6-addr"),
    0x0007: ("src_port", "uint16"),
    0x0008: ("dst_port", "uint16"),
    0x0009: ("time_sec", "uint32"),
    0x000A: ("time_usec", "uint32"),
    0x000B: ("protocol_type", "uint8"),
    0x000C: ("capture_id", "uint32"),
    0x000D: ("keep_alive", "uint16"),
    0x000E: ("auth_key", "octet-string"),
    0x000F: ("payload", "octet-string"),
    0x0010: ("compressed_payload", "octet-string"),
    0x0011: ("correlation_id", "octet-string"),
}
SIZES = {"uint8": 1, "uint16": 2, "uint32": 4, "inet4-addr": 4, "inet6-addr": 16, "octet-string": None}


class HepError(ValueError):
    """Not a valid HEP3 packet."""


@dataclass
class Packet:
    ip_family: int | None = None
    ip_protocol: int | None = None
    src_ip: str | None = None
    dst_ip: str | None = None
    src_port: int | None = None
    dst_port: int | None = None
    time_sec: int | None = None
    time_usec: int | None = None
    protocol_type: int | None = None
    capture_id: int | None = None
    keep_alive: int | None = None
    auth_key: bytes | None = None
    payload: bytes | None = None
    compressed_payload: bytes | None = None
    correlation_id: bytes | None = None
    # Every chunk as it came: (vendor ID, type ID, payload octets).
    chunks: list[tuple[int, int, bytes]] = field(default_factory=list)

    @property
    def source(self) -> tuple[str | None, int | None]:
        return self.src_ip, self.src_port

    @property
    def destination(self) -> tuple[str | None, int | None]:
        return self.dst_ip, self.dst_port


def _number(octets: bytes) -> int:
    value = 0
    for b in octets:
        value = value * 256 + b
    return value


def decode(packet: bytes) -> Packet:
    if len(packet) < 6 or packet[:4] != b"HEP3":
        raise HepError("no HEP3 ID")
    total = _number(packet[4:6])
    if total != len(packet):
        raise HepError(f"total length {total}, packet of {len(packet)} octets")
    out = Packet()
    at = 6
    while at < total:
        if total - at < 6:
            raise HepError(f"{total - at} octets left at {at}: not a chunk head")
        vendor, kind = _number(packet[at:at + 2]), _number(packet[at + 2:at + 4])
        length = _number(packet[at + 4:at + 6])
        if length < 6 or at + length > total:
            raise HepError(f"chunk {vendor:#06x}/{kind:#06x} at {at}: length {length} out of the packet")
        body = packet[at + 6:at + length]
        out.chunks.append((vendor, kind, body))
        at += length
        if vendor != 0 or kind not in GENERIC:
            continue  # a chunk one does not know is skipped, as the specification allows
        name, ptype = GENERIC[kind]
        size = SIZES[ptype]
        if size is not None and len(body) != size:
            raise HepError(f"chunk {kind:#06x} ({ptype}) of {len(body)} octets")
        if getattr(out, name) is not None:
            raise HepError(f"{name} twice")
        if ptype.startswith("inet"):
            value: object = str(ipaddress.ip_address(body))
        elif ptype.startswith("uint"):
            value = _number(body)
        else:
            value = body
        setattr(out, name, value)
    return out


class Collector:
    """A Homer collector for a test: a UDP socket on 127.0.0.1 that decodes each packet
    it receives, in a thread of its own (what is not HEP3 is kept in `errors`)."""

    def __init__(self, host: str = "127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.address = f"udp:{host}:{self.port}"
        self.packets: list[Packet] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except OSError:
                continue
            try:
                self.packets.append(decode(data))
            except HepError as e:
                self.errors.append(str(e))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
