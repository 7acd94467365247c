"""Header names: compact forms, canonical names, and which headers are comma lists.

Every header is known inside the package by its canonical name: the lowercase full name
("via", "call-id"), whatever case or compact form the wire used. The parser turns wire
names into canonical ones through a bounded cache, so the usual names cost one dict
lookup per header line.
"""

from __future__ import annotations

import sys

from .errors import ParseError
from .grammar import is_token

# RFC 3261 §7.3.3 and §20, plus the compact forms registered since in the IANA SIP
# header field registry.
COMPACT_FORMS: dict[str, str] = {
    "a": "accept-contact",  # RFC 3841
    "b": "referred-by",  # RFC 3892
    "c": "content-type",
    "d": "request-disposition",  # RFC 3841
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",  # RFC 3841
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",  # RFC 4474
    "o": "event",  # RFC 6665
    "r": "refer-to",  # RFC 3515
    "s": "subject",
    "t": "to",
    "u": "allow-events",  # RFC 6665
    "v": "via",
    "x": "session-expires",  # RFC 4028
    "y": "identity",  # RFC 8224
}

# The usual spelling of the names that error reasons mention.
DISPLAY_NAMES: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "from": "From",
    "max-forwards": "Max-Forwards",
    "to": "To",
    "via": "Via",
}

# Headers whose value is never a comma-separated list: single-valued headers, and those
# whose own grammar holds commas (credentials and challenges, HTTP dates, Retry-After
# comments, CSeq, Call-ID's free-form word). `get_all` splits every other header on
# commas outside quotes and `<>`, as RFC 3261 §7.3.1 allows for list headers.
NOT_LISTS = frozenset(
    {
        "authentication-info",
        "authorization",
        "call-id",
        "content-disposition",
        "content-length",
        "content-type",
        "cseq",
        "date",
        "event",
        "expires",
        "from",
        "identity",
        "identity-info",
        "max-forwards",
        "mime-version",
        "min-expires",
        "min-se",
        "organization",
        "priority",
        "proxy-authenticate",
        "proxy-authorization",
        "rack",
        "refer-to",
        "referred-by",
        "replaces",
        "reply-to",
        "retry-after",
        "rseq",
        "server",
        "session-expires",
        "subject",
        "subscription-state",
        "timestamp",
        "to",
        "user-agent",
        "www-authenticate",
    }
)

# Wire name -> canonical name, keyed by the line's bytes up to and including the colon
# ("Via:", "v :"), so that the parser needs no strip or lower() for names it has seen.
# The parser reads it directly; only learn_wire_name() writes it. Bounded: a peer
# sending random header names must not grow it without limit.
WIRE_NAMES: dict[bytes, str] = {}
WIRE_NAMES_MAX = 4096
_QUERY_NAMES: dict[str, str] = {}


def canonical_name(name: str) -> str:
    """The canonical name for a name given in any case or compact form."""
    canonical = _QUERY_NAMES.get(name)
    if canonical is None:
        lowered = name.strip().lower()
        canonical = sys.intern(COMPACT_FORMS.get(lowered, lowered))
        if len(_QUERY_NAMES) < WIRE_NAMES_MAX:
            _QUERY_NAMES[name] = canonical
    return canonical


def learn_wire_name(key: bytes) -> str:
    """Canonical name for `key`, a header line's bytes up to and including its colon.

    Raises ParseError("Bad header") when the line has no colon or the name is not a token
    (RFC 3261 §7.3.1: header = field-name *(SP/HT) ":" value).
    """
    if not key.endswith(b":"):
        raise ParseError("Bad header")
    name = key[:-1].rstrip(b" \t")
    if not is_token(name):
        raise ParseError("Bad header")
    lowered = name.decode("ascii").lower()
    # Interned so that equal names are one object and comparisons take the fast path.
    canonical = sys.intern(COMPACT_FORMS.get(lowered, lowered))
    if len(WIRE_NAMES) < WIRE_NAMES_MAX:
        WIRE_NAMES[key] = canonical
    return canonical
