"""The DNS wire format (RFC 1035 §4), as far as a SIP proxy needs it: no I/O here.

`encode_query` builds one question with RD set; `decode_message` turns a datagram (or a
TCP message without its length prefix) into a `Message` with its questions and its
answer, authority and additional records. A, AAAA, CNAME and SRV data are decoded
(`str` addresses and names, `SrvData`); any other type keeps its raw rdata bytes.

Malformed input raises `DnsFormatError` and never loops: every read is bounds-checked,
and a compression pointer must point strictly before the place the name being read
started (RFC 1035 §4.1.4 only allows pointers to a *prior* occurrence), so the offsets a
name walks through decrease and a pointer cycle is impossible.

Names are returned in lowercase without the final dot (DNS compares names without
case, RFC 4343); the root is ".". A byte that is not a plain hostname character, and a
dot inside a label, are written as ``\\DDD`` (RFC 4343 §2.1) so two different names
never decode to the same text.

The socket side (timeouts, retries, TCP fallback) lives in `gdispatch.dns`.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Union

# Record types and class (RFC 1035 §3.2.2, RFC 3596, RFC 2782).
TYPE_A = 1
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_AAAA = 28
TYPE_SRV = 33
CLASS_IN = 1

# Response codes (RFC 1035 §4.1.1).
RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}

TYPE_NAMES = {TYPE_A: "A", TYPE_CNAME: "CNAME", TYPE_SOA: "SOA", TYPE_AAAA: "AAAA", TYPE_SRV: "SRV"}

# Header flag bits (RFC 1035 §4.1.1).
FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080

HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_SRV_FIXED = struct.Struct("!HHH")  # priority, weight, port
_MAX_NAME = 255  # octets on the wire, the final zero included (RFC 1035 §2.3.4)
_MAX_LABEL = 63
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*")


class DnsFormatError(ValueError):
    """The bytes are not a well-formed DNS message (or a name cannot be encoded)."""


@dataclass(frozen=True)
class Question:
    name: str
    qtype: int
    qclass: int = CLASS_IN


@dataclass(frozen=True)
class SrvData:
    """The rdata of an SRV record (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


RecordData = Union[str, SrvData, bytes]


@dataclass(frozen=True)
class Record:
    """One resource record. `data`: the address text for A/AAAA, the name for CNAME,
    `SrvData` for SRV, the raw rdata for anything else."""

    name: str
    rtype: int
    rclass: int
    ttl: int
    data: RecordData


@dataclass(frozen=True)
class Message:
    id: int
    flags: int
    questions: tuple[Question, ...]
    answers: tuple[Record, ...]
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_QR)

    @property
    def truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)

    @property
    def rcode(self) -> int:
        return self.flags & 0x000F

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0x0F

    def rcode_name(self) -> str:
        return RCODE_NAMES.get(self.rcode, f"RCODE{self.rcode}")


# -- encoding ---------------------------------------------------------------------------


def encode_name(name: str) -> bytes:
    """``gw.example.com`` (a final dot allowed) → length-prefixed labels; "" or "." → root.
    Names are sent as written (ASCII); raises DnsFormatError for an empty or too long
    label, a too long name, or a non-ASCII character."""
    if name in ("", "."):
        return b"\x00"
    text = name[:-1] if name.endswith(".") else name
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise DnsFormatError(f"name {name!r} is not ASCII") from None
    out = bytearray()
    for label in raw.split(b"."):
        if not label:
            raise DnsFormatError(f"name {name!r} has an empty label")
        if len(label) > _MAX_LABEL:
            raise DnsFormatError(f"name {name!r} has a label longer than 63 octets")
        out.append(len(label))
        out += label
    out.append(0)
    if len(out) > _MAX_NAME:
        raise DnsFormatError(f"name {name!r} is longer than 255 octets")
    return bytes(out)


def encode_query(qid: int, name: str, qtype: int, qclass: int = CLASS_IN, *,
                 recursion_desired: bool = True) -> bytes:
    """A standard query (opcode 0) for one question."""
    if not 0 <= qid <= 0xFFFF:
        raise ValueError(f"query id {qid} is not a 16-bit number")
    flags = FLAG_RD if recursion_desired else 0
    return HEADER.pack(qid, flags, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, qclass)


# -- decoding ---------------------------------------------------------------------------


def decode_header(data: bytes) -> tuple[int, int, int, int, int, int]:
    """(id, flags, qdcount, ancount, nscount, arcount); enough to match a reply and see
    its TC bit even when the rest of a truncated datagram does not parse."""
    if len(data) < HEADER.size:
        raise DnsFormatError(f"message of {len(data)} octets is shorter than a DNS header")
    return HEADER.unpack_from(data, 0)


def decode_message(data: bytes) -> Message:
    """Parse a whole message; raises DnsFormatError for anything malformed. Octets after
    the last record are ignored (some servers pad)."""
    qid, flags, qdcount, ancount, nscount, arcount = decode_header(data)
    pos = HEADER.size
    questions = []
    for _ in range(qdcount):
        name, pos = read_name(data, pos)
        if pos + 4 > len(data):
            raise DnsFormatError("question runs past the end of the message")
        qtype, qclass = struct.unpack_from("!HH", data, pos)
        pos += 4
        questions.append(Question(name, qtype, qclass))
    sections = []
    for count in (ancount, nscount, arcount):
        records = []
        for _ in range(count):
            record, pos = _read_record(data, pos)
            records.append(record)
        sections.append(tuple(records))
    return Message(qid, flags, tuple(questions), *sections)


def read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The name at `offset` and the offset just after it (after its first pointer, if
    the name is compressed)."""
    labels: list[str] = []
    pos = offset
    limit = offset  # a pointer must point strictly below this; it decreases at each hop
    after: int | None = None
    wire_length = 1  # the final zero octet
    size = len(data)
    while True:
        if pos >= size:
            raise DnsFormatError("name runs past the end of the message")
        length = data[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= size:
                raise DnsFormatError("compression pointer runs past the end of the message")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= limit:
                raise DnsFormatError(f"compression pointer at offset {pos} does not point backwards")
            if after is None:
                after = pos + 2
            limit = pos = target
            continue
        if kind:
            raise DnsFormatError(f"unsupported label type 0x{kind:02x} at offset {pos}")
        if length == 0:
            pos += 1
            break
        end = pos + 1 + length
        if end > size:
            raise DnsFormatError("label runs past the end of the message")
        wire_length += 1 + length
        if wire_length > _MAX_NAME:
            raise DnsFormatError("name is longer than 255 octets")
        labels.append(_label_text(data[pos + 1 : end]))
        pos = end
    return (".".join(labels) if labels else "."), (pos if after is None else after)


def _label_text(label: bytes) -> str:
    if all(b in _PLAIN for b in label):
        return label.decode("ascii").lower()
    return "".join(chr(b).lower() if b in _PLAIN else f"\\{b:03d}" for b in label)


def _read_record(data: bytes, pos: int) -> tuple[Record, int]:
    name, pos = read_name(data, pos)
    if pos + _RR_FIXED.size > len(data):
        raise DnsFormatError("record header runs past the end of the message")
    rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
    pos += _RR_FIXED.size
    end = pos + rdlength
    if end > len(data):
        raise DnsFormatError(f"{TYPE_NAMES.get(rtype, rtype)} record data runs past the end of the message")
    if ttl & 0x80000000:
        ttl = 0  # RFC 2181 §8: a TTL with the top bit set is treated as zero
    rdata: RecordData
    if rclass != CLASS_IN:
        rdata = data[pos:end]
    elif rtype == TYPE_A:
        if rdlength != 4:
            raise DnsFormatError(f"A record with {rdlength} octets of data")
        rdata = socket.inet_ntop(socket.AF_INET, data[pos:end])
    elif rtype == TYPE_AAAA:
        if rdlength != 16:
            raise DnsFormatError(f"AAAA record with {rdlength} octets of data")
        rdata = socket.inet_ntop(socket.AF_INET6, data[pos:end])
    elif rtype == TYPE_CNAME:
        rdata, name_end = read_name(data, pos)
        _check_rdata_end(name_end, end, "CNAME")
    elif rtype == TYPE_SRV:
        if rdlength < _SRV_FIXED.size + 1:
            raise DnsFormatError(f"SRV record with {rdlength} octets of data")
        priority, weight, port = _SRV_FIXED.unpack_from(data, pos)
        # RFC 2782 forbids compressing the target, but RFC 3597 §4 asks decoders to
        # accept it: read_name follows pointers either way.
        target, name_end = read_name(data, pos + _SRV_FIXED.size)
        _check_rdata_end(name_end, end, "SRV")
        rdata = SrvData(priority, weight, port, target)
    else:
        rdata = data[pos:end]
    return Record(name, rtype, rclass, ttl, rdata), end


def _check_rdata_end(name_end: int, end: int, what: str) -> None:
    if name_end != end:
        raise DnsFormatError(f"{what} record data length does not match its name")


# -- reading answers --------------------------------------------------------------------


def answers_for(message: Message, name: str, rtype: int) -> tuple[list[Record], str]:
    """The answer records of type `rtype` for `name`, following the CNAME chain the
    server put in the answer section (RFC 1034 §3.6.2). Returns the records and the name
    the chain ended at (to ask again when a server did not chase the chain itself).
    A chain longer than the answer section, or a loop, stops where it is."""
    current = name.lower().rstrip(".") or "."
    seen = {current}
    for _ in range(len(message.answers) + 1):
        found = [r for r in message.answers if r.name == current and r.rtype == rtype and r.rclass == CLASS_IN]
        if found or rtype == TYPE_CNAME:
            return found, current
        alias = next((r.data for r in message.answers
                      if r.name == current and r.rtype == TYPE_CNAME and isinstance(r.data, str)), None)
        if alias is None or alias in seen:
            break
        seen.add(alias)
        current = alias
    return [], current
