"""Stream framing: `frame_stream` cuts whole messages out of a TCP/TLS receive buffer.

On a stream, Content-Length is the only way to find where a message ends (RFC 3261
§18.3), so it is mandatory there; CRLFs between messages are keep-alives
(RFC 5626 §3.5.1) and are skipped. The transport owns the buffer; this module only reads
it and says how many bytes were used.
"""

from __future__ import annotations

import re

from .errors import ParseError
from .grammar import BLANK_LINE
from .message import MAX_MESSAGE_SIZE

# A Content-Length line ("l" is its compact form, RFC 3261 §7.3.3); the value may be
# folded onto the next line.
_CONTENT_LENGTH = re.compile(
    rb"\n(?:content-length|l)[ \t]*:((?:[^\r\n]|\r?\n[ \t])*)", re.IGNORECASE
)


def frame_stream(buf: bytes | bytearray) -> tuple[bytes | None, int]:
    """Find the first whole message in `buf`.

    Returns (message bytes, bytes consumed) when one is complete, or (None, bytes
    consumed) when more bytes are needed; consumed counts the leading CRLFs skipped, so
    it may be above 0 even then. Raises ParseError when the header block has no
    Content-Length, a malformed or conflicting one, or the message would exceed
    MAX_MESSAGE_SIZE (status 413). After a ParseError the stream cannot be resynchronised
    and the connection should be closed (RFC 4475 §3.1.2.3).
    """
    size = len(buf)
    start = 0
    while start < size and buf[start] in (0x0D, 0x0A):
        start += 1
    blank = BLANK_LINE.search(buf, start)
    if blank is None:
        if size - start > MAX_MESSAGE_SIZE:
            raise ParseError("Message Too Large", 413)
        return None, start
    values = [
        m.group(1).strip() for m in _CONTENT_LENGTH.finditer(buf, start, blank.start())
    ]
    if not values:
        raise ParseError("Missing Content-Length")
    value = values[0]
    if not value.isdigit() or len(value) > 9 or any(v != value for v in values[1:]):
        raise ParseError("Bad Content-Length")
    end = blank.end() + int(value)
    if end - start > MAX_MESSAGE_SIZE:
        raise ParseError("Message Too Large", 413)
    if end > size:
        return None, start
    return bytes(buf[start:end]), end
