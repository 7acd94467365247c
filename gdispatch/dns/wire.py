"""The DNS wire format (RFC 1035 §4) through dnspython: the queries the stub resolver
sends and the parts of the replies it reads. No I/O here (`gdispatch.dns.client`).

dnspython encodes and decodes. This module narrows what comes back to what a SIP proxy
uses (A, AAAA, CNAME and SRV records of class IN, as `Record`s with text names and
addresses), and turns every way a reply can be malformed into `DnsFormatError`, so the
client has one error to catch for bytes a server, or anyone spoofing one, sent.

Names given out are lowercase without the final dot (DNS compares names without case,
RFC 4343); the root is ".". dnspython writes an octet that is not a plain hostname
character as ``\\DDD`` and a dot inside a label as ``\\.`` (RFC 4343 §2.1), so two
different names never give the same text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

# Record types and class (RFC 1035 §3.2.2, RFC 3596, RFC 2782).
TYPE_A = int(dns.rdatatype.A)
TYPE_CNAME = int(dns.rdatatype.CNAME)
TYPE_AAAA = int(dns.rdatatype.AAAA)
TYPE_SRV = int(dns.rdatatype.SRV)
CLASS_IN = int(dns.rdataclass.IN)

# Response codes (RFC 1035 §4.1.1).
RCODE_NOERROR = int(dns.rcode.NOERROR)
RCODE_NXDOMAIN = int(dns.rcode.NXDOMAIN)

_MAX_TTL = 0x7FFFFFFF  # RFC 2181 §8: a TTL with the top bit set is treated as zero

Message = dns.message.Message


class DnsFormatError(ValueError):
    """The bytes are not a well-formed DNS message (or a name cannot be encoded)."""


@dataclass(frozen=True)
class SrvData:
    """The rdata of an SRV record (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


RecordData = Union[str, SrvData]


@dataclass(frozen=True)
class Record:
    """One answer record: `data` is the address text for A/AAAA, the name for CNAME,
    `SrvData` for SRV."""

    name: str
    rtype: int
    ttl: int
    data: RecordData


def type_name(qtype: int) -> str:
    """"SRV" for 33; the number for a type dnspython does not know."""
    try:
        return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype))
    except ValueError:
        return str(qtype)


def rcode_name(rcode: int) -> str:
    """"SERVFAIL" for 2 (RFC 1035 §4.1.1, RFC 6895 §2.3); "RCODE11" for an unassigned code."""
    try:
        text = dns.rcode.to_text(dns.rcode.Rcode(rcode))
    except ValueError:
        return f"RCODE{rcode}"
    return text if not text.isdigit() else f"RCODE{rcode}"


# -- names ------------------------------------------------------------------------------


def to_name(name: str) -> dns.name.Name:
    """``gw.example.com`` (a final dot allowed) as an absolute name; "" or "." is the
    root. Names are sent as written: a SIP host name is ASCII (RFC 3261 §25.1), so no
    IDNA conversion is made and a non-ASCII character is refused. Raises DnsFormatError
    for an empty or too long label, a too long name, or a non-ASCII character."""
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        raise DnsFormatError(f"name {name!r} is not ASCII") from None
    try:
        # Bytes, not str: dnspython runs a str through its IDNA codec.
        return dns.name.from_text(raw or b".")
    except dns.name.EmptyLabel:
        raise DnsFormatError(f"name {name!r} has an empty label") from None
    except dns.name.LabelTooLong:
        raise DnsFormatError(f"name {name!r} has a label longer than 63 octets") from None
    except dns.name.NameTooLong:
        raise DnsFormatError(f"name {name!r} is longer than 255 octets") from None
    except dns.exception.DNSException as e:
        raise DnsFormatError(f"name {name!r}: {e}") from None


def name_text(name: dns.name.Name) -> str:
    """The lowercase text of a name, without the final dot; "." for the root."""
    return name.canonicalize().to_text(omit_final_dot=True)


def _plain(name: str) -> str:
    return name.lower().rstrip(".") or "."


# -- queries ----------------------------------------------------------------------------


def encode_query(qid: int, name: str, qtype: int, *, recursion_desired: bool = True) -> bytes:
    """A standard query (opcode 0, class IN, no EDNS) for one question, with id `qid`."""
    if not 0 <= qid <= 0xFFFF:
        raise ValueError(f"query id {qid} is not a 16-bit number")
    query = dns.message.make_query(to_name(name), dns.rdatatype.RdataType.make(qtype), use_edns=False)
    query.id = qid
    if not recursion_desired:
        query.flags &= ~dns.flags.RD
    return query.to_wire()


# -- replies ----------------------------------------------------------------------------


def _decode(data: bytes, question_only: bool) -> Message:
    try:
        # one_rr_per_rrset: every record keeps its own TTL (SRV targets may differ).
        return dns.message.from_wire(data, question_only=question_only, ignore_trailing=True,
                                     one_rr_per_rrset=True)
    except dns.exception.DNSException as e:
        raise DnsFormatError(f"malformed DNS message: {e}") from None
    except Exception as e:
        # The rdata readers may let a plain error out for some mangled records; any
        # error while reading bytes from the network means they are not a usable message.
        raise DnsFormatError(f"malformed DNS message: {type(e).__name__}: {e}") from None


def decode_question(data: bytes) -> Message:
    """The header and the question section only: enough to match a reply to its query
    and see its TC bit while the rest of a truncated datagram may not parse."""
    return _decode(data, True)


def decode_message(data: bytes) -> Message:
    """A whole message; raises DnsFormatError for anything malformed. Octets after the
    last record are ignored (some servers pad)."""
    return _decode(data, False)


def is_reply_to(message: Message, qid: int, name: str, qtype: int) -> bool:
    """Whether `message` is the reply to our query: a response with our id that carries
    the one question we asked (RFC 5452 §9.1), name compared without case."""
    if not message.flags & dns.flags.QR or message.id != qid or len(message.question) != 1:
        return False
    q = message.question[0]
    return q.rdtype == qtype and q.rdclass == CLASS_IN and name_text(q.name) == _plain(name)


def is_truncated(message: Message) -> bool:
    return bool(message.flags & dns.flags.TC)


def rcode_of(message: Message) -> int:
    return int(message.rcode())


def records(message: Message) -> list[Record]:
    """The A, AAAA, CNAME and SRV records of class IN in the answer section, in order;
    records of other types and classes are left out."""
    out = []
    for rrset in message.answer:
        if rrset.rdclass != CLASS_IN:
            continue
        owner = name_text(rrset.name)
        ttl = 0 if rrset.ttl > _MAX_TTL else int(rrset.ttl)
        for rd in rrset:
            data: RecordData
            if rrset.rdtype in (TYPE_A, TYPE_AAAA):
                data = str(rd.address)
            elif rrset.rdtype == TYPE_CNAME:
                data = name_text(rd.target)
            elif rrset.rdtype == TYPE_SRV:
                # RFC 2782 forbids compressing the target, RFC 3597 §4 asks decoders to
                # accept it: dnspython follows pointers either way.
                data = SrvData(int(rd.priority), int(rd.weight), int(rd.port), name_text(rd.target))
            else:
                continue
            out.append(Record(owner, int(rrset.rdtype), ttl, data))
    return out


def answers_for(message: Message, name: str, rtype: int) -> tuple[list[Record], str]:
    """The answer records of type `rtype` for `name`, following the CNAME chain the
    server put in the answer section (RFC 1034 §3.6.2). Returns the records and the name
    the chain ended at (to ask again when a server did not chase the chain itself).
    A chain longer than the answer section, or a loop, stops where it is."""
    answer = records(message)
    current = _plain(name)
    seen = {current}
    for _ in range(len(answer) + 1):
        found = [r for r in answer if r.name == current and r.rtype == rtype]
        if found or rtype == TYPE_CNAME:
            return found, current
        alias = next((r.data for r in answer
                      if r.name == current and r.rtype == TYPE_CNAME and isinstance(r.data, str)), None)
        if alias is None or alias in seen:
            break
        seen.add(alias)
        current = alias
    return [], current
