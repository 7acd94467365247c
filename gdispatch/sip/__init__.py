"""The sans-IO SIP message layer: parse bytes lazily, read what a proxy needs, and build
outgoing messages by splicing the bytes received.

No sockets and no gevent here: pure functions and small classes, tested with plain bytes.

- errors.py   `ParseError` (reason phrase + status code to answer with)
- grammar.py  shared scanners: tokens, unfolding, list separators, `;params`
- headers.py  header names: compact forms, canonical names, list headers
- uri.py      `SipUri`, `parse_uri`, `format_hostport`, `NameAddr`, `parse_name_addr`
- via.py      `Via`, `parse_via`
- parse.py    `parse_message`: start line, header lines and their names, body framing
- message.py  `SipMessage`, `Header`, request/response validation
- build.py    `forward_request`, `strip_top_via`, `build_response`, `build_ack`,
              `build_cancel`
- framing.py  `frame_stream` for TCP/TLS receive buffers
"""

from .build import (
    build_ack,
    build_cancel,
    build_response,
    forward_request,
    strip_top_via,
)
from .errors import ParseError
from .framing import frame_stream
from .headers import COMPACT_FORMS, canonical_name
from .message import MAX_MESSAGE_SIZE, Header, SipMessage
from .parse import parse_message
from .uri import NameAddr, SipUri, format_hostport, parse_name_addr, parse_uri
from .via import Via, parse_via

__all__ = [
    "COMPACT_FORMS",
    "MAX_MESSAGE_SIZE",
    "Header",
    "NameAddr",
    "ParseError",
    "SipMessage",
    "SipUri",
    "Via",
    "build_ack",
    "build_cancel",
    "build_response",
    "canonical_name",
    "format_hostport",
    "forward_request",
    "frame_stream",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "strip_top_via",
]
