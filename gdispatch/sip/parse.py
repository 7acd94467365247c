"""Reading a message's bytes: `parse_message` and what it builds on (RFC 3261 §7).

The start line is read, the header block cut into lines and each line's name mapped to
its canonical name; the body is framed by Content-Length (§18.3 for datagrams, §18.3 and
§7.5 for streams). Nothing else is decoded here: `SipMessage` (message.py) reads the
rest when asked. The usual header block (CRLF line ends, no folded line) is cut in a few
C-level passes (`split_head`); anything else, the slow way (`_split_lines`).
"""

from __future__ import annotations

import re
from typing import cast

from .errors import ParseError
from .grammar import BLANK_LINE
from .headers import WIRE_NAMES, learn_wire_name
from .message import _METHOD_NAMES, MAX_MESSAGE_SIZE, SipMessage, _parse_cseq, extension_method

# The name part of each header line: what follows a line end up to the first colon.
_HEADER_KEY = re.compile(rb"\n([^:\r\n]*:)")
_VERSION = re.compile(rb"[Ss][Ii][Pp]/[0-9]+\.[0-9]+\Z")
_EOL = re.compile(rb"\r?\n")


def parse_message(data: bytes, *, stream: bool = False, head_only: bool = False) -> SipMessage:
    """Parse one SIP message.

    `stream=False` (a datagram): a body longer than Content-Length is cut to it and the
    rest dropped (RFC 3261 §18.3); a shorter one is ParseError("Content-Length mismatch");
    without Content-Length the body is the rest of the datagram. `stream=True` (one
    message framed by `frame_stream`): Content-Length is mandatory. `head_only`: `data`
    is the header block of a message whose body was not read (one too large to take,
    answered from its head): the body is empty and Content-Length is not checked.

    Tolerates leading CRLFs, bare LF line ends and folded header lines. Raises ParseError
    for an oversize message (413), a malformed start line or header line, a negative,
    non-numeric or conflicting Content-Length.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise ParseError("Message Too Large", 413)
    if data[:1] in (b"\r", b"\n"):
        # RFC 3261 §7.5: CRLFs before the start line are ignored (keep-alives).
        data = data.lstrip(b"\r\n")
        if not data:
            raise ParseError("Empty message")
    end = data.find(b"\r\n\r\n")
    split = split_head(data, end) if end > 0 else None
    if split is None:
        lines, body_start, folded = _split_lines(data, stream)
        names = [_wire_name(line) for line in lines[1:]]
        start_line = lines[0]
        del lines[0]
    else:
        start_line, lines, names = split
        body_start = end + 4
        folded = False

    msg = SipMessage(data, start_line, lines, names, folded)
    _parse_start_line(msg, start_line)
    if head_only:
        msg.body = b""
        return msg

    available = len(data) - body_start
    if "content-length" not in names:
        if stream:
            # RFC 3261 §18.3: Content-Length MUST be used with stream transports.
            raise ParseError("Missing Content-Length")
        msg.body = data[body_start:]
    else:
        value = msg._value(names.index("content-length"))
        if not value.isdigit() or len(value) > 9:
            raise ParseError("Bad Content-Length")
        length = int(value)
        if names.count("content-length") > 1:
            # RFC 4475 §3.3.9: conflicting values leave the framing unknowable.
            for i in msg._indexes("content-length"):
                if msg._value(i) != value:
                    raise ParseError("Conflicting Content-Length")
        if length > available:
            raise ParseError("Content-Length mismatch")
        msg.content_length = length
        if length < available:
            msg.raw = data[: body_start + length]
        msg.body = data[body_start : body_start + length]
    return msg


def split_head(data: bytes, end: int) -> tuple[bytes, list[bytes], list[str]] | None:
    """The usual case of a header block, `data[:end]`: CRLF line ends, no folded line.
    Returns (start line, header lines, their canonical names), or None when a line
    ends in a bare LF, is folded or has no colon, or a name is not a token: the caller
    then takes the slow way (`_split_lines`), which finds which."""
    head = data[:end]
    lines = head.split(b"\r\n")
    if head.count(b"\n") != len(lines) - 1:
        return None  # a bare LF
    keys = _HEADER_KEY.findall(head)
    if len(keys) != len(lines) - 1:
        return None  # a folded or colon-less line
    known = list(map(WIRE_NAMES.get, keys))
    if None in known:
        # A name not seen before (or too many seen): learn it, as the slow way would.
        try:
            names = [name or learn_wire_name(key) for name, key in zip(known, keys)]
        except ParseError:
            return None
    else:
        names = cast("list[str]", known)
    start_line = lines[0]
    del lines[0]
    return start_line, lines, names


def _parse_start_line(msg: SipMessage, line: bytes) -> None:
    if line[:4].upper() == b"SIP/":
        # RFC 3261 §7.2: Status-Line = SIP-Version SP Status-Code SP Reason-Phrase. The
        # reason may be empty (RFC 4475 §3.1.1.13); a missing SP after the code is
        # tolerated too.
        parts = line.split(b" ", 2)
        if len(parts) < 2:
            raise ParseError("Bad Status-Line")
        version, code = parts[0], parts[1]
        if len(code) != 3 or not code.isdigit() or code[0] == 0x30:
            # RFC 4475 §3.1.2.19: a code beyond 699 is dropped, as is one below 100.
            raise ParseError("Bad Status-Line")
        status = int(code)
        if status > 699:
            raise ParseError("Bad Status-Line")
        msg.is_request = False
        msg.status = status
        msg.reason = parts[2] if len(parts) == 3 else b""
        cseq = msg._first("cseq")
        if cseq is not None:
            # The CSeq method names the transaction a response belongs to (RFC 3261
            # §17.1.3): read, and kept for `cseq`, when the value is valid.
            try:
                parsed = msg.__dict__["cseq"] = _parse_cseq(cseq)
                msg.method = parsed[1]
            except ParseError:
                words = cseq.split()
                if len(words) == 2:
                    msg.method = words[1].decode("utf-8", "surrogateescape")
    else:
        # RFC 3261 §7.1: Request-Line = Method SP Request-URI SP SIP-Version, single SPs
        # only (RFC 4475 §3.1.2.8-10: LWS in the URI, doubled or trailing SP).
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[1]:
            raise ParseError("Bad Request-Line")
        method = _METHOD_NAMES.get(parts[0]) or extension_method(parts[0], "Bad Request-Line")
        version = parts[2]
        msg.method = method
        msg.ruri = parts[1]
    if version != b"SIP/2.0":
        if not _VERSION.match(version):
            raise ParseError("Bad SIP-Version")
        msg.version = version.decode("ascii").upper()


def _wire_name(line: bytes) -> str:
    key = line[: line.find(b":") + 1]
    return WIRE_NAMES.get(key) or learn_wire_name(key)


def _split_lines(data: bytes, stream: bool) -> tuple[list[bytes], int, bool]:
    """Cut the header block into logical lines the slow way: bare LF line ends, folded
    lines (RFC 3261 §7.3.1), a datagram whose header block runs to its end. Returns the
    lines (start line first; a folded header is one line holding its original line
    breaks), the offset where the body starts, and whether any line was folded."""
    blank = BLANK_LINE.search(data)
    if blank is not None:
        head = data[: blank.start()]
        if head.endswith(b"\r"):
            head = head[:-1]
        body_start = blank.end()
    elif stream:
        raise ParseError("Incomplete message")
    else:
        # A datagram without the empty line that ends the headers: take it all as headers
        # (RFC 4475's baddn.dat is published that way).
        head = data.rstrip(b"\r\n")
        body_start = len(data)
    spans: list[list[int]] = []
    pos = 0
    for eol in _EOL.finditer(head):
        _add_physical_line(head, spans, pos, eol.start())
        pos = eol.end()
    _add_physical_line(head, spans, pos, len(head))
    lines = [head[s:e] for s, e in spans]
    return lines, body_start, any(b"\n" in line for line in lines)


def _add_physical_line(
    head: bytes, spans: list[list[int]], start: int, end: int
) -> None:
    if head[start : start + 1] in (b" ", b"\t"):
        # A continuation line: part of the previous header, never of the start line.
        if len(spans) < 2:
            raise ParseError("Bad header folding")
        spans[-1][1] = end
    else:
        spans.append([start, end])
