"""What the hash-based algorithms hash: the keys Kamailio takes from a request, and the
hash template of algorithm 7.

- `uri_keys(uri)`: algorithms 1-3 hash two keys, the URI's user and its ``host[:port]``,
  as written in the message (case kept, IPv6 in brackets). The port is part of the second
  key only when the URI has one and it is not the default (5060, or 5061 for sips). With
  `user_only` (Kamailio's modparam ``flags`` bit 1) the second key is empty. This is how
  tests/data/kamailio-hash-vectors.tsv was made: key1 = user, key2 = host or host:port.
- `auth_username(msg)`: algorithm 5 hashes the user part of the Digest ``username`` of the
  first Proxy-Authorization header, else of the first Authorization header.
- `compile_template(text)`: algorithm 7 hashes a template of request fields, Kamailio's
  ``hash_pvar`` (e.g. ``"$fU@$ci"``). The variables:

  ======== =========================================
  ``$ci``  Call-ID
  ``$fu``  From URI          ``$tu``  To URI          ``$ru``  Request-URI
  ``$fU``  From URI user     ``$tU``  To URI user     ``$rU``  Request-URI user
  ``$fd``  From URI domain   ``$td``  To URI domain   ``$rd``  Request-URI domain
  ``$hdr(Name)``  the first header called Name (any case, compact forms too)
  ======== =========================================

  Everything else is literal text. A variable name runs over all the letters after ``$``
  (so ``$ciX`` is the unknown ``$ciX``, not ``$ci`` then ``X``). An unknown variable, a
  ``$`` with no name, ``$hdr`` without ``(Name)``, or a template with no variable is a
  `TemplateError` when the template is compiled (at configuration time), never at call
  time. A value the request lacks (no such header, no user part) expands to nothing;
  Kamailio would print ``<null>`` there, so such requests hash differently from Kamailio.
  Like Kamailio the expansion is trimmed; an empty one cannot be hashed (see
  algorithms.py for what happens then).

Messages are `gdispatch.sip.SipMessage`. URIs are read from their bytes as written, as
leniently as Kamailio reads them; a header that does not parse at all (a From value with
unbalanced ``<>``) expands to nothing in a template, and raises ParseError from the
message for algorithms 1-3 (algorithms.py decides what then).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from gdispatch.sip import ParseError, SipMessage, SipUri

__all__ = ["HashTemplate", "TemplateError", "auth_username", "compile_template", "uri_keys"]


def _b(value: str) -> bytes:
    # Parsed values keep undecodable bytes as surrogates; this gives the wire bytes back.
    return value.encode("utf-8", "surrogateescape")


def _split_uri(uri: SipUri | bytes) -> tuple[bytes, bytes, bytes, bytes | None]:
    """(scheme lowercased, user, host, port text or None) of a URI as written.

    Works on the raw bytes, as leniently as Kamailio's URI parser (a From user with
    unescaped UTF-8 still hashes): the user ends at ':' or '@', the host at ';', '?' or
    the port; an IPv6 host keeps its brackets. A non-SIP URI (tel:) gives its number as
    the user and no host.
    """
    raw = (uri.raw if isinstance(uri, SipUri) else uri).strip()
    colon = raw.find(b":")
    scheme = raw[:colon].lower()
    rest = raw[colon + 1 :]
    if scheme not in (b"sip", b"sips"):
        return scheme, rest.split(b";", 1)[0], b"", None
    at = rest.find(b"@")
    user = b""
    if at >= 0:
        user = rest[:at].split(b":", 1)[0]
        rest = rest[at + 1 :]
    for stop in (b"?", b";"):
        cut = rest.find(stop)
        if cut >= 0:
            rest = rest[:cut]
    if rest.startswith(b"["):
        close = rest.find(b"]")
        if close >= 0:
            after = rest[close + 1 :]
            return scheme, user, rest[: close + 1], after[1:] if after.startswith(b":") else None
    host, colon_, port = rest.partition(b":")
    return scheme, user, host, port if colon_ else None


def uri_keys(uri: SipUri | bytes, user_only: bool = False) -> tuple[bytes, bytes]:
    """(key1, key2) of a URI for Kamailio's hash: user, and host[:port non-default]."""
    scheme, user, host, port = _split_uri(uri)
    if user_only or not host:
        return user, b""
    if port is not None and not (port.isdigit() and int(port) == (5061 if scheme == b"sips" else 5060)):
        return user, host + b":" + port
    return user, host


# -- algorithm 5 --------------------------------------------------------------------------

_USERNAME = re.compile(rb'(?:^|[\s,])username\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))', re.IGNORECASE)


def _digest_user(value: bytes) -> bytes | None:
    scheme, _, params = value.partition(b" ")
    if scheme.lower() != b"digest":
        return None  # Kamailio parses Digest credentials only
    m = _USERNAME.search(params)
    if m is None:
        return None
    name = m.group(1)
    name = re.sub(rb"\\(.)", rb"\1", name) if name is not None else m.group(2)
    # Kamailio hashes the user part of "user@domain" usernames.
    user = name.partition(b"@")[0].strip()
    return user or None


def auth_username(msg: SipMessage) -> bytes | None:
    """The Digest username (user part) of the first Proxy-Authorization header, else of
    the first Authorization header; None when neither holds one."""
    for header in ("proxy-authorization", "authorization"):
        value = msg.get(header)
        if value is not None:
            user = _digest_user(value)
            if user is not None:
                return user
    return None


# -- algorithm 7 --------------------------------------------------------------------------


class TemplateError(ValueError):
    """A hash template that cannot be compiled: says where and why."""


Getter = Callable[[SipMessage], bytes]


def _safe(get: Getter) -> Getter:
    def safe_get(msg: SipMessage) -> bytes:
        try:
            return get(msg)
        except ParseError:
            return b""

    return safe_get


def _header(name: str) -> Getter:
    def get(msg: SipMessage) -> bytes:
        return msg.get(name) or b""

    return get


_VARIABLES: dict[str, Getter] = {
    "ci": lambda m: m.call_id,
    "fu": lambda m: m.from_addr.uri_raw,
    "fU": lambda m: _split_uri(m.from_addr.uri_raw)[1],
    "fd": lambda m: _split_uri(m.from_addr.uri_raw)[2],
    "tu": lambda m: m.to_addr.uri_raw,
    "tU": lambda m: _split_uri(m.to_addr.uri_raw)[1],
    "td": lambda m: _split_uri(m.to_addr.uri_raw)[2],
    "ru": lambda m: m.ruri,
    "rU": lambda m: _split_uri(m.ruri)[1],
    "rd": lambda m: _split_uri(m.ruri)[2],
}
_NAME = re.compile(r"[A-Za-z]+")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!%*_+`'~.\-]+\Z")  # an RFC 3261 token


class HashTemplate:
    """A compiled hash template: `expand(msg)` gives the bytes to hash (trimmed)."""

    __slots__ = ("_parts", "source")

    def __init__(self, source: str, parts: list[bytes | Getter]):
        self.source = source
        self._parts = parts

    def expand(self, msg: SipMessage) -> bytes:
        return b"".join(p if isinstance(p, bytes) else p(msg) for p in self._parts).strip()

    def __repr__(self) -> str:
        return f"HashTemplate({self.source!r})"


def compile_template(text: str) -> HashTemplate:
    """Compile e.g. ``"$fU@$ci"``; TemplateError names the offending variable."""
    parts: list[bytes | Getter] = []
    literal = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "$":
            literal.append(c)
            i += 1
            continue
        if text.startswith("hdr(", i + 1):
            close = text.find(")", i + 5)
            header = text[i + 5 : close] if close >= 0 else ""
            if close < 0 or not _HEADER_NAME.match(header):
                raise TemplateError(f"hash template {text!r}: $hdr( at position {i} needs a header name and ')'")
            get: Getter = _header(header)
            end = close + 1
        else:
            m = _NAME.match(text, i + 1)
            name = m.group() if m else ""
            if name not in _VARIABLES:
                shown = f"${name}" if name else f"'$' at position {i} without a name"
                known = ", ".join(f"${v}" for v in _VARIABLES) + ", $hdr(Name)"
                raise TemplateError(f"hash template {text!r}: unknown variable {shown} (known: {known})")
            get = _VARIABLES[name]
            end = i + 1 + len(name)
        if literal:
            parts.append(_b("".join(literal)))
            literal = []
        parts.append(_safe(get))
        i = end
    if literal:
        parts.append(_b("".join(literal)))
    if not any(callable(p) for p in parts):
        raise TemplateError(f"hash template {text!r} has no variable: every call would hash the same text")
    return HashTemplate(text, parts)
