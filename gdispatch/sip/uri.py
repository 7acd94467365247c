"""URIs and name-addr values: `SipUri`, `parse_uri`, `NameAddr`, `parse_name_addr`.

A SIP/SIPS URI (RFC 3261 §19.1) is split into user, password, host, port, parameters and
headers; a tel URI (RFC 3966) into number and parameters; any other scheme is kept opaque
(RFC 3261 §19: a SIP element must accept URIs of schemes it does not understand in
header fields). Escapes are not decoded: the proxy compares and copies URIs, it never
rebuilds one, and `raw` is always the exact input.

Parsed values are shared: the same bytes give the same object from a bounded cache
(in-dialog requests carry the same Request-URI, a gateway's Contact, and the same Route,
our own Record-Route, call after call). Treat `SipUri` and `NameAddr` as read-only.

`parse_name_addr` handles the From/To/Contact/Route/Record-Route value grammar
(RFC 3261 §20.10, §25.1): an optional display name, the URI with or without `<>`, and
header parameters.
"""

from __future__ import annotations

import re

from .errors import ParseError
from .grammar import (
    TOKEN_BYTES,
    URI_PARAM_CHARS,
    parse_params,
    quoted_string_end,
    text,
)

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
# RFC 3261 §25.1: what a SIP URI may hold unescaped (reserved, unreserved, '%', and the
# brackets of an IPv6 reference). White space, '<', '>', '"' and the rest must be escaped.
_SIP_URI_BAD = re.compile(r"[^A-Za-z0-9\-_.!~*'()%;/?:@&=+$,\[\]]")
# Anything but white space and the delimiters RFC 3261 §19.1.1 forbids in any URI.
_OPAQUE_BAD = re.compile(r'[\s<>"]')
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*)\Z")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")

# bytes -> parsed value; emptied when full, so that a peer sending ever new values costs a
# parse each, as without the cache, and no memory.
_CACHE_MAX = 2048
_URI_CACHE: dict[bytes, SipUri] = {}
_NAME_ADDR_CACHE: dict[bytes, NameAddr] = {}


def _remember(cache: dict, key: bytes, value):
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value
    return value


def format_hostport(host: str, port: int | None) -> str:
    """`host[:port]`, with an IPv6 address put between brackets (RFC 3261 §25.1)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def parse_host(hostport: str, reason: str) -> tuple[str, int | None]:
    """Split `host[:port]` into a lowercase host (IPv6 without brackets) and a port.

    Raises ParseError(reason) for an empty or malformed host, unbalanced brackets, or a
    port that is not 1-5 digits up to 65535.
    """
    port_text = None
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise ParseError(reason)
        host = hostport[1:close]
        after = hostport[close + 1 :]
        if after:
            if after[0] != ":":
                raise ParseError(reason)
            port_text = after[1:]
        if not _IPV6.match(host):
            raise ParseError(reason)
    else:
        host, colon, port_text = hostport.partition(":")
        if not colon:
            port_text = None
        if not _HOSTNAME.match(host):
            raise ParseError(reason)
    port = None
    if port_text is not None:
        if not _PORT.match(port_text):
            raise ParseError(reason)
        port = int(port_text)
        if port > 65535:
            raise ParseError(reason)
    return host.lower(), port


class SipUri:
    """A parsed URI. Field values are as written (escapes kept) except where noted.

    - `scheme`: lowercase ("sip", "sips", "tel", or any other scheme).
    - `user`, `password`: userinfo parts of a SIP/SIPS URI, None when absent; for a tel
      URI `user` is the telephone number.
    - `host`: lowercase, IPv6 without brackets; "" for schemes other than sip/sips.
    - `port`: int or None.
    - `params`: URI parameters, lowercase names; a flag parameter (";lr") maps to None.
    - `headers`: the text after '?' of a SIP/SIPS URI, or None.
    - `opaque`: everything after "scheme:", as written.
    - `raw`: the exact input bytes.
    """

    __slots__ = (
        "headers",
        "host",
        "opaque",
        "params",
        "password",
        "port",
        "raw",
        "scheme",
        "user",
    )

    def __init__(
        self,
        scheme: str,
        user: str | None,
        password: str | None,
        host: str,
        port: int | None,
        params: dict[str, str | None],
        headers: str | None,
        opaque: str,
        raw: bytes,
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = params
        self.headers = headers
        self.opaque = opaque
        self.raw = raw

    @property
    def transport(self) -> str:
        """The `transport` parameter, lowercase; "tls" for sips, else "udp" by default
        (RFC 3261 §19.1.2 table, note 2)."""
        value = self.params.get("transport")
        if value:
            return value.lower()
        return "tls" if self.scheme == "sips" else "udp"

    @property
    def port_or_default(self) -> int:
        """The port, else the transport's default: 5061 over TLS (sips:, or
        ;transport=tls), else 5060 (RFC 3263 §4.2)."""
        return self.port or (5061 if self.transport == "tls" else 5060)

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def hostport(self) -> str:
        """`host[:port]`, IPv6 in brackets, the port only if the URI has one."""
        return format_hostport(self.host, self.port)

    def __str__(self) -> str:
        return text(self.raw)

    def __repr__(self) -> str:
        return f"SipUri({text(self.raw)!r})"


def parse_uri(value: bytes | str) -> SipUri:
    """Parse a URI. Raises ParseError("Bad URI") on garbage: a missing or malformed scheme,
    white space or '<>"' in the URI, unbalanced brackets, a bad port, an empty host for
    sip/sips."""
    if type(value) is bytes:
        cached = _URI_CACHE.get(value)
        if cached is not None:
            return cached
        return _remember(_URI_CACHE, value, _parse_uri(text(value), value))
    if isinstance(value, str):
        return _parse_uri(value, value.encode("utf-8", "surrogateescape"))
    raw = bytes(value)
    return _parse_uri(text(raw), raw)


def _parse_uri(uri_text: str, raw: bytes) -> SipUri:
    colon = uri_text.find(":")
    if colon <= 0 or not _SCHEME.match(uri_text, 0, colon):
        raise ParseError("Bad URI")
    scheme = uri_text[:colon].lower()
    rest = uri_text[colon + 1 :]
    if scheme == "sip" or scheme == "sips":
        return _parse_sip_uri(scheme, rest, raw)
    if not rest or _OPAQUE_BAD.search(rest):
        raise ParseError("Bad URI")
    if scheme == "tel":
        # RFC 3966: telephone-subscriber = number *( ";" par ); no host, no userinfo.
        number, semi, params = rest.partition(";")
        if not number:
            raise ParseError("Bad URI")
        return SipUri(
            scheme,
            number,
            None,
            "",
            None,
            parse_params(semi + params, "Bad URI", URI_PARAM_CHARS) if semi else {},
            None,
            rest,
            raw,
        )
    return SipUri(scheme, None, None, "", None, {}, None, rest, raw)


def _parse_sip_uri(scheme: str, rest: str, raw: bytes) -> SipUri:
    # RFC 3261 §19.1.1: sip:user:password@host:port;uri-parameters?headers
    if not rest or _SIP_URI_BAD.search(rest):
        raise ParseError("Bad URI")
    opaque = rest
    user = password = None
    # '@' cannot appear unescaped anywhere but as the userinfo terminator, while the user
    # part may hold ';', '?' and ',' (RFC 4475 §3.1.1.2 and §3.1.1.9): cut at '@' first.
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if not user:
            raise ParseError("Bad URI")
        if colon:
            password = pw
    headers = None
    qmark = rest.find("?")
    if qmark >= 0:
        headers = rest[qmark + 1 :]
        rest = rest[:qmark]
    semi = rest.find(";")
    if semi >= 0:
        params = parse_params(rest[semi:], "Bad URI", URI_PARAM_CHARS)
        rest = rest[:semi]
    else:
        params = {}
    host, port = parse_host(rest, "Bad URI")
    return SipUri(scheme, user, password, host, port, params, headers, opaque, raw)


class NameAddr:
    """A name-addr or addr-spec header value (From, To, Contact, Route, Record-Route).

    - `display`: the display name, None when absent: the text between the quotes of a
      quoted-string (quoted-pairs kept as written), or the unquoted words.
    - `uri_raw`: the URI's exact bytes; `uri` parses them on first use.
    - `params`: header parameters (after '>', or after the URI of an addr-spec, which per
      RFC 3261 §20.10 belong to the header, not to the URI); lowercase names.
    - `raw`: the exact value.
    """

    __slots__ = ("_uri", "display", "params", "raw", "uri_raw")

    def __init__(
        self,
        display: bytes | None,
        uri_raw: bytes,
        params: dict[str, str | None],
        raw: bytes,
    ) -> None:
        self.display = display
        self.uri_raw = uri_raw
        self.params = params
        self.raw = raw
        self._uri: SipUri | None = None

    @property
    def uri(self) -> SipUri:
        """The parsed URI (ParseError if it is garbage); parsed once, on first use."""
        if self._uri is None:
            self._uri = parse_uri(self.uri_raw)
        return self._uri

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __repr__(self) -> str:
        return f"NameAddr({text(self.raw)!r})"


def parse_name_addr(value: bytes) -> NameAddr:
    """Parse `[display-name] <URI> *(;param)` or `addr-spec *(;param)`.

    Raises ParseError for an unterminated quoted string, an unquoted display name with
    non-token characters, unbalanced `<>`, white space inside `<>`, an addr-spec holding
    '?' or ',' (RFC 3261 §20.10 requires `<>` then), or malformed parameters.
    """
    cached = _NAME_ADDR_CACHE.get(value)
    if cached is not None:
        return cached
    return _remember(_NAME_ADDR_CACHE, value, _parse_name_addr(value))


def _parse_name_addr(value: bytes) -> NameAddr:
    raw = value
    value = value.strip()
    if not value:
        raise ParseError("Bad name-addr")
    display = None
    if value[0] == 0x22:  # '"': quoted display name, then '<' must follow
        close = quoted_string_end(value, 0)
        display = value[1:close]
        lt = close + 1
        while lt < len(value) and value[lt] in (0x20, 0x09):
            lt += 1
        if lt >= len(value) or value[lt] != 0x3C:
            raise ParseError("Bad name-addr")
    else:
        lt = value.find(b"<")
        if lt > 0:
            words = value[:lt].split()
            # RFC 3261 §25.1: an unquoted display name is *(token LWS); RFC 4475 §3.1.2.15.
            for word in words:
                if word.strip(TOKEN_BYTES):
                    raise ParseError("Bad display name")
            display = b" ".join(words) or None
    if lt >= 0:
        gt = value.find(b">", lt + 1)
        if gt < 0:
            raise ParseError("Unbalanced <>")
        uri_raw = value[lt + 1 : gt]
        # RAQUOT/LAQUOT allow no white space inside the brackets (RFC 4475 §3.1.2.14).
        if not uri_raw or uri_raw != uri_raw.strip():
            raise ParseError("Bad addr-spec")
        tail = value[gt + 1 :]
    else:
        if b">" in value:
            raise ParseError("Unbalanced <>")
        semi = value.find(b";")
        if semi >= 0:
            uri_raw = value[:semi].rstrip()
            tail = value[semi:]
        else:
            uri_raw = value
            tail = b""
        if b"?" in uri_raw or b"," in uri_raw or b" " in uri_raw or b"\t" in uri_raw:
            # RFC 3261 §20.10: such a URI must be in <>; RFC 4475 §3.1.2.13.
            raise ParseError("Bad addr-spec")
    params = parse_params(text(tail), "Bad header parameter") if tail else {}
    return NameAddr(display, uri_raw, params, raw)
