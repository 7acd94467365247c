"""The messages a proxy sees most, read the short way: the requests of its dialogs and
the responses to what it sent.

Past the INVITE, what a dispatching proxy forwards are the requests of dialogs it
record-routed: the ACK of each 2xx, the BYE, now and then an INFO or an UPDATE. They come
with one Route, the entry this proxy put in Record-Route, and go to the Request-URI once
it is popped (RFC 3261 §16.4, §16.12). `read_in_dialog` reads such a request in a few
scans of its bytes and makes the checks `SipMessage.validate_request` makes (RFC 3261
§16.3); `forward_in_dialog` writes the copy the proxy sends on (§16.6). `read_response`
reads a response as `parse_message` would, for the proxy to match it by the Via it wrote.

Anything off the usual shape gives None, and the proxy takes its general way
(`parse_message`, `validate_request`, `forward_request`), which gives the exact verdict:
folded or bare-LF lines, a Route set other than our single entry, a From, To or Contact
of an unusual shape, a Request-URI with a `maddr` parameter, a transport other than UDP
or a host name, a Max-Forwards of 0. For what it accepts it forwards the very bytes the
general way would (tests/unit/test_shortway.py compares the two).

Why a short way: at low load each message meets CPU caches that the other processes have
emptied since the last one, and a message then costs what the code and data it touches
cost to fetch: fewer functions, fewer objects (bench/PROFILE.md, fifth pass).
"""

from __future__ import annotations

import re

from .errors import ParseError
from .message import _NAME_ADDR_FAST, MAX_MESSAGE_SIZE, SipMessage, _last_tag, split_head
from .uri import parse_uri
from .via import parse_via

# The methods taken the short way, and the Request-Line they must have: single SPs, the
# version exactly SIP/2.0. INVITE (a 100 to send, a walk), CANCEL (it matches another
# transaction) and the dialog-creating requests without a To tag take the general way.
_START = re.compile(rb"(ACK|BYE|INFO|UPDATE|PRACK|NOTIFY|MESSAGE|REFER|OPTIONS) ([^ \r\n]+) SIP/2\.0\r\n")
# A Status-Line of SIP/2.0 with a code of 100-699 (RFC 3261 §7.2, RFC 4475 §3.1.2.19).
_STATUS = re.compile(rb"SIP/2\.0 ([1-6][0-9][0-9])(?: ([^\r\n]*))?\r\n")
_CSEQ = re.compile(rb"([0-9]{1,10}) ([A-Z]+)\Z")
_SINGLE = ("from", "to", "call-id", "cseq")
_TOKEN = re.compile(rb"[A-Za-z0-9._-]+")  # the value that ends our Route entry


def read_in_dialog(data: bytes, own_routes: frozenset[bytes]) -> tuple[SipMessage, int, bytes] | None:
    """`data` (a datagram) as a validated SipMessage whose cached fields are filled in
    (top_via, call_id, cseq, max_forwards, uri, the tags), with the
    index of its Route line and the last parameter's value of that Route, when it is a
    request inside a dialog of the usual shape whose only Route is one of the values this
    proxy puts in Record-Route: one of `own_routes`, which end with ``NAME=``, then a
    value and ``>``; else None."""
    if b"\nRoute:" not in data:
        # No Route as the usual shape writes it (the ACK of a failed call has none): the
        # general way, before any work is spent here.
        return None
    found = _read(data, _START)
    if found is None:
        return None
    m, msg, names, lines = found
    ruri = m.group(2)
    try:
        uri = parse_uri(ruri)  # a dict lookup for a Request-URI seen before
    except ParseError:
        return None
    params = uri.params
    if (uri.scheme != "sip" or uri.headers is not None or "maddr" in params
            or ("transport" in params and (params["transport"] or "").lower() != "udp")):
        return None  # also a Request-URI that names another transport than UDP
    # One each of From, To, Call-ID, CSeq (RFC 3261 §8.1.1, RFC 4475 §3.3.8); at most one
    # Max-Forwards and Contact; a single Route line.
    for name in _SINGLE:
        if names.count(name) != 1:
            return None
    if names.count("route") != 1 or names.count("max-forwards") > 1 or names.count("contact") > 1:
        return None
    route = names.index("route")
    value = _value(lines, route)
    equals = value.rfind(b"=") + 1
    token = value[equals:-1]
    if value[-1:] != b">" or value[:equals] not in own_routes or _TOKEN.fullmatch(token) is None:
        return None
    method = m.group(1).decode()
    cseq = _cseq(lines, names)
    call_id = _value(lines, names.index("call-id"))
    if cseq is None or cseq[1] != m.group(1) or not call_id or len(call_id.split()) != 1:
        return None
    from_addr = _NAME_ADDR_FAST.match(_value(lines, names.index("from")))
    to_addr = _NAME_ADDR_FAST.match(_value(lines, names.index("to")))
    if from_addr is None or to_addr is None:
        return None
    to_tag = _last_tag(to_addr.group(1))
    if to_tag is None and method != "ACK":
        return None  # not inside a dialog
    # The tags the Route's signature and the branch's loop hash read.
    msg.__dict__["to_tag"] = to_tag
    msg.__dict__["from_tag"] = _last_tag(from_addr.group(1))
    max_forwards = None
    if "max-forwards" in names:
        mf = _value(lines, names.index("max-forwards"))
        if not mf.isdigit() or len(mf) > 3:
            return None
        max_forwards = int(mf)
        if not 0 < max_forwards <= 255:
            return None  # 0 is answered 483 (RFC 3261 §16.3 step 3), 256 and up 400
    if "contact" in names:
        contact = _value(lines, names.index("contact"))
        if contact != b"*" and _NAME_ADDR_FAST.match(contact) is None:
            return None
    via_value = _value(lines, names.index("via"))
    if b"," in via_value:
        return None
    try:
        via = parse_via(via_value)
    except ParseError:
        return None
    msg.method = method
    msg.ruri = ruri
    cache = msg.__dict__
    cache["top_via"] = via
    cache["uri"] = uri
    cache["call_id"] = call_id
    cache["cseq"] = (cseq[0], method)
    cache["max_forwards"] = max_forwards
    return msg, route, token


def read_response(data: bytes) -> SipMessage | None:
    """`data` (a datagram) as a SipMessage when it is a SIP/2.0 response of the usual
    shape with a Via and a valid CSeq (its method is the message's `method`): what
    `parse_message` gives for it, with `cseq` read. The caller matches its top Via, which
    it wrote itself, to one of its client transactions (RFC 3261 §17.1.3); else None."""
    found = _read(data, _STATUS)
    if found is None:
        return None
    m, msg, names, lines = found
    cseq = _cseq(lines, names)
    if cseq is None:
        return None
    msg.is_request = False
    msg.status = int(m.group(1))
    msg.reason = m.group(2) or b""
    method = cseq[1].decode()
    msg.method = method
    msg.__dict__["cseq"] = (cseq[0], method)
    return msg


def _read(data: bytes, first_line: re.Pattern) -> tuple[re.Match, SipMessage, list[str], list[bytes]] | None:
    """What both readers share: the first line's match, the header block cut into lines
    (`split_head`), a Via, at most one Content-Length, the body framed by it as
    `parse_message` frames a datagram's (RFC 3261 §18.3)."""
    m = first_line.match(data)
    if m is None:
        return None
    end = data.find(b"\r\n\r\n")
    split = split_head(data, end) if 0 < end and len(data) <= MAX_MESSAGE_SIZE else None
    if split is None:
        return None
    start_line, lines, names = split
    if "via" not in names or names.count("content-length") > 1:
        return None
    msg = SipMessage(data, start_line, lines, names, False)
    body_start = end + 4
    available = len(data) - body_start
    if "content-length" in names:
        length = _value(lines, names.index("content-length"))
        if not length.isdigit() or len(length) > 9:
            return None
        length = int(length)
        if length > available:
            return None
        if length < available:
            msg.raw = data[:body_start + length]
        msg.content_length = length
        msg.body = data[body_start:body_start + length]
    else:
        msg.body = data[body_start:]
    return m, msg, names, lines


def _value(lines: list[bytes], index: int) -> bytes:
    line = lines[index]
    return line[line.find(b":") + 1:].strip()


def _cseq(lines: list[bytes], names: list[str]) -> tuple[int, bytes] | None:
    """CSeq's number and method, when there is a CSeq and it is valid (RFC 3261 §8.1.1.5:
    a number below 2**32)."""
    if "cseq" not in names:
        return None
    m = _CSEQ.match(_value(lines, names.index("cseq")))
    if m is None:
        return None
    number = int(m.group(1))
    return (number, m.group(2)) if number <= 0xFFFFFFFF else None


def forward_in_dialog(msg: SipMessage, route: int, via: bytes, top_via: bytes | None) -> bytes:
    """The copy of `msg` (from `read_in_dialog`) a proxy sends on (RFC 3261 §16.6): `via`
    above the Via lines, the top Via replaced by `top_via` when given (received/rport,
    RFC 3581 §4), the Route line (our own entry, §16.4) gone, Max-Forwards one less or 69
    when absent (§16.6 step 3). The bytes `forward_request` gives for the same edits."""
    lines = msg._lines
    names = msg._names
    first_via = names.index("via")
    mf = msg.max_forwards
    mf_line = names.index("max-forwards") if mf is not None else -1
    out = [msg.start_line]
    for i, line in enumerate(lines):
        if i == first_via:
            out.append(b"Via: " + via)
            if top_via is not None:
                line = line[:line.find(b":") + 1] + b" " + top_via
        elif i == route:
            continue
        elif i == mf_line:
            line = line[:line.find(b":") + 1] + b" %d" % (mf - 1)
        out.append(line)
    if mf is None:
        out.append(b"Max-Forwards: 69")
    out.append(b"")
    out.append(msg.body)
    return b"\r\n".join(out)
