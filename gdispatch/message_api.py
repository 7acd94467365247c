"""The message API for plugin authors: a safe, typed view of a request and the edits a
plugin may make to one attempt of it.

A plugin never touches bytes. It reads through `RequestView` (method, Request-URI parts,
headers, where it came from) and edits through `Attempt` (Request-URI user and host,
headers to add or remove). The proxy applies the edits when it builds the copy it sends,
by splicing (`gdispatch.sip.forward_request`), so a plugin cannot corrupt the message:
values are checked (no CR, LF or NUL; header names are tokens; the mandatory headers a
proxy relies on cannot be removed).

Every attempt starts from the request as it arrived: edits of one attempt never leak
into the next (kamailio#3388: the R-URI user rewritten for one gateway must not stay for
the next).
"""

from __future__ import annotations

import re

from gdispatch.sip import ParseError, SipMessage, parse_uri
from gdispatch.sip.uri import parse_host

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
# Headers the proxy itself manages or relies on: a plugin may read them, not remove or add them.
PROTECTED = frozenset({"via", "v", "call-id", "i", "cseq", "from", "f", "to", "t", "max-forwards", "route",
                       "record-route", "content-length", "l"})
# RFC 3261 §25.1 user: unreserved / escaped / user-unreserved ("#" and ":" must be escaped).
_USER_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]*\Z")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+)(:[0-9]{1,5})?\Z")


class EditError(ValueError):
    """A plugin asked for an edit that would make the message invalid. (Editing the
    dispatcher.list file fails with another exception, `gdispatch.listedit.ListEditError`.)"""


def is_valid_user(user: str) -> bool:
    """Whether `user` may be a Request-URI user part as is (what `Attempt.ruri_user` accepts)."""
    return bool(user) and _USER_CHARS.match(user) is not None


def _check_value(value: str, what: str) -> str:
    if not isinstance(value, str):
        raise EditError(f"{what}: expected a string, got {type(value).__name__}")
    if any(c in value for c in "\r\n\x00"):
        raise EditError(f"{what}: CR, LF and NUL are not allowed")
    return value


class RequestView:
    """Read-only access to a request (new requests, and each attempt's original)."""

    __slots__ = ("_msg", "source")

    def __init__(self, msg: SipMessage, source: tuple[str, str, int] | None = None):
        self._msg = msg
        # (transport, ip, port) the request came from.
        self.source = source

    @property
    def method(self) -> str:
        return self._msg.method

    @property
    def ruri(self) -> str:
        return self._msg.ruri.decode("utf-8", "replace")

    @property
    def ruri_user(self) -> str | None:
        return self._msg.uri.user

    @property
    def ruri_host(self) -> str:
        return self._msg.uri.host

    @property
    def ruri_port(self) -> int | None:
        return self._msg.uri.port

    @property
    def call_id(self) -> str:
        return self._msg.call_id.decode("utf-8", "replace")

    def header(self, name: str) -> str | None:
        """The first value of a header (any case, compact forms too), or None."""
        v = self._msg.get(name)
        return None if v is None else v.decode("utf-8", "replace")

    def headers(self, name: str) -> list[str]:
        """Every value of a header, comma-separated lists split."""
        return [v.decode("utf-8", "replace") for v in self._msg.get_all(name)]


class Attempt(RequestView):
    """One attempt of a dispatched request, to one destination: what plugins may change.

    Reads see the request as it arrived plus this attempt's edits of the Request-URI.
    """

    __slots__ = ("destination", "number", "_user", "_user_edited", "_host", "_hostport", "_add", "_remove")

    def __init__(self, msg: SipMessage, destination, number: int, source=None):
        super().__init__(msg, source)
        self.destination = destination  # read its attr_map, duid, uri; do not change it
        self.number = number  # 1 for the first attempt, 2 after the first failover...
        self._user: str | None = None  # the new user part, when `_user_edited`
        self._user_edited = False
        self._host: str | None = None  # host[:port] as the plugin set it
        self._hostport: tuple[str, int | None] | None = None  # ... and parsed
        self._add: list[tuple[str, str]] = []
        self._remove: list[str] = []

    @property
    def attrs(self) -> dict[str, str]:
        """The destination's attrs (names lowercased), e.g. {"prefix": "011"}."""
        return self.destination.attr_map

    @property
    def ruri_user(self) -> str | None:
        return self._user if self._user_edited else self._msg.uri.user

    @ruri_user.setter
    def ruri_user(self, user: str | None) -> None:
        if user is not None:
            _check_value(user, "ruri_user")
            if not is_valid_user(user):
                raise EditError(f"ruri_user: {user!r} is not a valid URI user part (escape it)")
        self._user = user
        self._user_edited = True

    @property
    def ruri_host(self) -> str:
        """The host, as `RequestView.ruri_host` gives it (lowercase, IPv6 without brackets)."""
        return self._msg.uri.host if self._hostport is None else self._hostport[0]

    @ruri_host.setter
    def ruri_host(self, hostport: str) -> None:
        """Set host or host:port (an IPv6 address in brackets: "[2001:db8::1]:5060")."""
        _check_value(hostport, "ruri_host")
        try:
            if not _HOST.match(hostport):
                raise ParseError("Bad host")
            parsed = parse_host(hostport, "Bad host")
        except ParseError:
            raise EditError(f"ruri_host: {hostport!r} is not host or host:port") from None
        self._host = hostport
        self._hostport = parsed

    @property
    def ruri_port(self) -> int | None:
        """The port: the one set with `ruri_host` when it was set (None: no port)."""
        return self._msg.uri.port if self._hostport is None else self._hostport[1]

    def add_header(self, name: str, value: str) -> None:
        _check_value(name, "header name")
        if not _TOKEN.match(name):
            raise EditError(f"header name {name!r} is not a token")
        if name.lower() in PROTECTED:
            raise EditError(f"{name} is managed by the proxy and cannot be added")
        self._add.append((name, _check_value(value, name)))

    def remove_header(self, name: str) -> None:
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise EditError(f"header name {name!r} is not a token")
        if name.lower() in PROTECTED:
            raise EditError(f"{name} is managed by the proxy and cannot be removed")
        self._remove.append(name.lower())

    # --- for the proxy

    @property
    def edited(self) -> bool:
        return self._user_edited or self._host is not None or bool(self._add) or bool(self._remove)

    def new_ruri(self) -> bytes | None:
        """The Request-URI with this attempt's user/host edits, or None if unchanged."""
        if not self._user_edited and self._host is None:
            return None
        raw = self._msg.ruri.decode("utf-8", "surrogateescape")
        scheme, _, rest = raw.partition(":")
        # '@' appears unescaped only as the end of the userinfo, which may itself hold ';'
        # and '?' (RFC 4475 §3.1.1.2): cut there first, as parse_uri does.
        at = rest.find("@")
        userinfo, hostpart = (rest[:at], rest[at + 1:]) if at >= 0 else (None, rest)
        # The host[:port] ends at the first ';' or '?' (URI parameters and headers stay).
        end = _hostpart_end(hostpart)
        host, tail = hostpart[:end], hostpart[end:]
        if self._host is not None:
            host = self._host
        if self._user_edited:
            if self._user is None:
                userinfo = None
            else:
                password = ""
                if userinfo is not None and ":" in userinfo:
                    password = ":" + userinfo.split(":", 1)[1]
                userinfo = self._user + password
        out = f"{scheme}:{userinfo + '@' if userinfo is not None else ''}{host}{tail}"
        parse_uri(out)  # never send what we could not parse ourselves
        return out.encode("utf-8", "surrogateescape")

    def header_lines(self) -> list[bytes]:
        return [f"{n}: {v}".encode() for n, v in self._add]

    def removed_headers(self) -> list[str]:
        return list(self._remove)


def _hostpart_end(s: str) -> int:
    """Index where the host[:port] part ends in `s` (at ';' or '?'), skipping [IPv6]."""
    start = s.find("]") if s.startswith("[") else 0
    ends = [i for i in (s.find(";", max(start, 0)), s.find("?", max(start, 0))) if i >= 0]
    return min(ends) if ends else len(s)


class RouteChoice:
    """What `gdispatch_choose_route` returns: dispatch to a set, or answer locally."""

    __slots__ = ("set", "algorithm", "limit", "failover_codes", "mode", "reply_code", "reply_reason", "name")

    def __init__(self, set: int, algorithm: int = 4, *, limit: int = 0, failover_codes=None, mode: str = "dst",
                 name: str = ""):
        self.set = set
        self.algorithm = algorithm
        self.limit = limit
        self.failover_codes = failover_codes  # None: the default (408 and 5xx)
        self.mode = mode
        self.reply_code = 0
        self.reply_reason = ""
        self.name = name

    @classmethod
    def reply(cls, code: int, reason: str = "") -> RouteChoice:
        if not 300 <= code <= 699:
            raise EditError(f"reply: expected a final code 300-699, got {code}")
        c = cls(0)
        c.reply_code = code
        c.reply_reason = _check_value(reason, "reason") or "Rejected"
        return c


class FailureAction:
    """What `gdispatch_after_failure` returns."""

    __slots__ = ("kind", "code", "reason", "set", "algorithm")

    def __init__(self, kind: str, code: int = 0, reason: str = "", set: int = 0, algorithm: int = 4):
        self.kind = kind  # "next" | "stop" | "reply" | "switch"
        self.code = code
        self.reason = reason
        self.set = set
        self.algorithm = algorithm

    @classmethod
    def next(cls) -> FailureAction:
        return cls("next")

    @classmethod
    def stop(cls) -> FailureAction:
        return cls("stop")

    @classmethod
    def reply(cls, code: int, reason: str = "") -> FailureAction:
        if not 300 <= code <= 699:
            raise EditError(f"reply: expected a final code 300-699, got {code}")
        return cls("reply", code, _check_value(reason, "reason") or "Rejected")

    @classmethod
    def switch(cls, set: int, algorithm: int = 4) -> FailureAction:
        return cls("switch", set=set, algorithm=algorithm)
