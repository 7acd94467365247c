"""Small scanners for the pieces of RFC 3261 §25 grammar that several parsers share.

Character classes, unfolding of header lines, finding list separators outside quoted
strings and angle brackets, and parsing `;name=value` parameter lists. Everything here
works on one header value or one URI; nothing here knows about messages.
"""

from __future__ import annotations

import re

from .errors import ParseError

# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
TOKEN_BYTES = TOKEN_CHARS.encode("ascii")
# RFC 3261 §25.1: paramchar = param-unreserved / unreserved / escaped (URI parameters).
URI_PARAM_CHARS = TOKEN_CHARS + "[]/:&+$()"

_FOLD = re.compile(rb"[ \t]*\r?\n[ \t]+")
# Quoted strings and <...> as whole matches, so that a lone ',' match is a separator
# outside both (an unterminated quote or '<' then just scans on as plain text).
_LIST_SCAN = re.compile(rb'"(?:[^"\\]|\\.)*"|<[^>]*>|,', re.DOTALL)
# The empty line ending a header block, whether line ends are CRLF or bare LF.
BLANK_LINE = re.compile(rb"\n\r?\n")


def text(value: bytes) -> str:
    """Decode protocol bytes to str without ever failing (non-UTF-8 bytes survive as
    surrogates, so `.encode("utf-8", "surrogateescape")` gives the exact bytes back)."""
    return value.decode("utf-8", "surrogateescape")


def is_token(value: bytes) -> bool:
    """True when `value` is a non-empty RFC 3261 token."""
    # strip() removes members of the set from both ends; only an all-token value vanishes.
    return bool(value) and not value.strip(TOKEN_BYTES)


def unfold(value: bytes) -> bytes:
    """Replace each line fold (CRLF or LF followed by SP/HT, RFC 3261 §7.3.1) and the
    white space around it with one SP."""
    return _FOLD.sub(b" ", value)


def separator_positions(value: bytes) -> list[int]:
    """Offsets of the commas in `value` outside quoted strings and `<...>`.

    RFC 3261 §7.3.1 lets a list header carry several values joined by commas; a comma
    inside a quoted display name or inside an angle-bracketed URI does not separate.
    """
    if b"," not in value:
        return []
    if b'"' not in value and b"<" not in value:
        found = []
        i = value.find(b",")
        while i >= 0:
            found.append(i)
            i = value.find(b",", i + 1)
        return found
    return [m.start() for m in _LIST_SCAN.finditer(value) if m.end() - m.start() == 1]


def split_list(value: bytes) -> list[bytes]:
    """Split a list header value on commas outside quotes and `<>`; each part stripped."""
    if b"," not in value:
        return [value]
    parts = []
    start = 0
    for pos in separator_positions(value):
        parts.append(value[start:pos].strip())
        start = pos + 1
    parts.append(value[start:].strip())
    return parts


def _split_semicolons(params: str) -> list[str]:
    """Split on ';' outside quoted strings (a quoted parameter value may hold ';')."""
    if '"' not in params:
        return params.split(";")
    parts = []
    start = 0
    in_quotes = False
    i = 0
    n = len(params)
    while i < n:
        c = params[i]
        if in_quotes:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quotes = False
        elif c == '"':
            in_quotes = True
        elif c == ";":
            parts.append(params[start:i])
            start = i + 1
        i += 1
    if in_quotes:
        raise ParseError("Unterminated quoted string")
    parts.append(params[start:])
    return parts


def parse_params(
    params: str, reason: str, name_chars: str = TOKEN_CHARS
) -> dict[str, str | None]:
    """Parse `*( SEMI name [ EQUAL value ] )` into a dict with lowercase names.

    `params` is what follows the element the parameters belong to; anything other than
    white space before the first ';' is an error. White space around ';' and '=' is
    allowed (SEMI and EQUAL in RFC 3261 §25.1 are SWS-padded). A parameter without '='
    maps to None; values are kept as written (quoted values keep their quotes).
    Raises ParseError(reason) on an empty name (";;"), a name outside `name_chars`, or
    an empty or white-space-holding value.
    """
    result: dict[str, str | None] = {}
    if '"' not in params and " " not in params and "\t" not in params:
        # The compact form nearly every peer sends: nothing to strip or unquote.
        parts = params.split(";")
        if parts[0]:
            raise ParseError(reason)
        for part in parts[1:]:
            name, eq, value = part.partition("=")
            if not name or name.strip(name_chars) or (eq and not value):
                raise ParseError(reason)
            result[name.lower()] = value if eq else None
        return result
    parts = _split_semicolons(params)
    if parts[0].strip():
        raise ParseError(reason)
    for part in parts[1:]:
        name, eq, value = part.partition("=")
        name = name.strip()
        if not name or name.strip(name_chars):
            raise ParseError(reason)
        if eq:
            value = value.strip()
            if not value:
                raise ParseError(reason)
            if value[0] == '"':
                if len(value) < 2 or value[-1] != '"':
                    raise ParseError(reason)
            elif " " in value or "\t" in value:
                raise ParseError(reason)
            result[name.lower()] = value
        else:
            result[name.lower()] = None
    return result


def quoted_string_end(value: bytes, start: int) -> int:
    """Index of the DQUOTE closing the quoted string that opens at `value[start]`.

    Honours quoted-pairs (RFC 3261 §25.1: a backslash escapes the next octet, including a
    NUL or a DQUOTE). Raises ParseError when the string is never closed.
    """
    i = start + 1
    while True:
        quote = value.find(b'"', i)
        if quote < 0:
            raise ParseError("Unterminated quoted string")
        backslash = value.find(b"\\", i, quote)
        if backslash < 0:
            return quote
        i = backslash + 2  # the escaped octet cannot close the string
