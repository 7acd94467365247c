"""SIP messages: `SipMessage`, `Header`, and what a proxy must refuse.

A `SipMessage` is what `parse_message` (parse.py) made of the bytes: the start line, the
header lines with their canonical names, the body. Nothing else is decoded until asked
(RFC 3261 §7): header values are sliced out on `get()`, and Via, CSeq, From/To tags,
routes are parsed once by cached properties.
The original bytes are kept line by line so that the builders in build.py can splice
edits and send every untouched byte unchanged.

`validate_request` / `validate_response` hold the checks a proxy makes before it acts on
a message (RFC 3261 §16.3, §8.2; RFC 4475 §3.1.2), kept apart from parsing so the proxy
can still answer a broken request whose Via is usable.

Via lives in via.py and is re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import ParseError
from .grammar import is_token, split_list, unfold
from .headers import (
    DISPLAY_NAMES,
    NOT_LISTS,
    canonical_name,
)
from .uri import NameAddr, SipUri, parse_name_addr, parse_uri
from .via import Via, parse_via

__all__ = [
    "MAX_MESSAGE_SIZE",
    "Header",
    "SipMessage",
    "Via",
    "parse_via",
]

MAX_MESSAGE_SIZE = 65535

T = TypeVar("T")

# Methods this proxy knows (RFC 3261 and the extensions that define methods): they choose
# between 400 and 501 for a CSeq/start-line mismatch (RFC 4475 §3.1.2.18), and are the
# methods the metrics count by name (gdispatch.proxy.core).
KNOWN_METHODS = frozenset(
    {
        "ACK",
        "BYE",
        "CANCEL",
        "INFO",
        "INVITE",
        "MESSAGE",
        "NOTIFY",
        "OPTIONS",
        "PRACK",
        "PUBLISH",
        "REFER",
        "REGISTER",
        "SUBSCRIBE",
        "UPDATE",
    }
)

# RFC 3261 §8.1.1: the headers every request (and so every response) carries.
_MANDATORY = ("via", "from", "to", "call-id", "cseq")
# The method names of KNOWN_METHODS as they come on the wire, and as text: a start line
# or CSeq with one of them needs no token check and no decoding.
_METHOD_NAMES = {m.encode(): m for m in KNOWN_METHODS}
# Single-valued headers that may appear once at most (RFC 4475 §3.3.8).
_SINGLE = ("from", "to", "call-id", "cseq", "max-forwards")
# The mandatory ones among them, each there exactly once in a valid message.
_ONCE = ("from", "to", "call-id", "cseq")
_ONCE_EACH = [1, 1, 1, 1]
_TOKEN = rb"[A-Za-z0-9\-.!%*_+`'~]+"
# The two shapes nearly every From, To and Contact value has (RFC 3261 §20.10): token
# words or a quoted string without escapes then <URI> without white space, or a bare URI
# without ';', '?' or ',' (an addr-spec, as SIPp and many phones write Contact); then
# token parameters. Everything it matches, `parse_name_addr` accepts, so a match
# validates the value without building a NameAddr; anything else goes through
# `parse_name_addr` for the verdict. Group 1: the parameters.
_NAME_ADDR_FAST = re.compile(
    rb'(?:(?:(?:' + _TOKEN + rb' )*|"[^"\\\r\n]*" ?)<[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>"]+>'
    rb'|[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>";?,]+)'
    rb"((?:;" + _TOKEN + rb"(?:=" + _TOKEN + rb")?)*)\Z"
)
_TAG_PARAM = re.compile(rb";[Tt][Aa][Gg]=(" + _TOKEN + rb")")
# The name-addr headers every message has: header, parsed property, tag property, error.
_NAME_ADDR_HEADERS = (("from", "from_addr", "from_tag", "Bad From"), ("to", "to_addr", "to_tag", "Bad To"))


class cached_property(Generic[T]):
    """functools.cached_property without its lock (Python 3.11 takes one on every first
    access, which costs more than the value being cached)."""

    def __init__(self, func: Callable[[Any], T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, owner: type | None = None) -> T:
        if obj is None:
            return self  # type: ignore[return-value]
        value = obj.__dict__[self.name] = self.func(obj)
        return value


class Header:
    """One header as received: `name` canonical (lowercase full name), `value` unfolded
    and stripped, `raw` the original line(s) without the final line end."""

    __slots__ = ("name", "raw", "value")

    def __init__(self, name: str, value: bytes, raw: bytes) -> None:
        self.name = name
        self.value = value
        self.raw = raw

    def __repr__(self) -> str:
        return f"Header({self.name!r}, {self.value!r})"


class SipMessage:
    """A parsed request or response. Build one with `parse_message`.

    Plain attributes (set by the parser): `raw` (the message's bytes, without trailing
    datagram junk), `is_request`, `method` (the request method; for a response the CSeq
    method, or "" when CSeq is unusable), `ruri` (request; b"" for a response), `status`
    and `reason` (response; 0 and b"" for a request), `version` ("SIP/2.0"), `body`,
    `content_length` (None when the header is absent), `start_line`.

    Everything else is computed on first use and cached.
    """

    def __init__(
        self,
        raw: bytes,
        start_line: bytes,
        lines: list[bytes],
        names: list[str],
        folded: bool,
    ) -> None:
        self.raw = raw
        self.start_line = start_line
        self.body = b""
        self.content_length: int | None = None
        # Header lines without their line ends, and their canonical names, in order.
        # build.py reads these to splice edits; nothing mutates them.
        self._lines = lines
        self._names = names
        self._folded = folded
        self.is_request = True
        self.method = ""
        self.ruri = b""
        self.status = 0
        self.reason = b""
        self.version = "SIP/2.0"

    def __repr__(self) -> str:
        if self.is_request:
            return f"<SipMessage {self.method} {self.ruri!r}>"
        return f"<SipMessage {self.status} {self.reason!r}>"

    # -- headers ---------------------------------------------------------------------

    def _index(self, canonical: str) -> int | None:
        """Index of the first header line called `canonical`, or None."""
        # A C-level scan of a dozen interned names beats building a dict per message.
        names = self._names
        return names.index(canonical) if canonical in names else None

    def _value(self, index: int) -> bytes:
        line = self._lines[index]
        value = line[line.find(b":") + 1 :].strip()
        if self._folded and b"\n" in value:
            value = unfold(value)
        return value

    def _first(self, canonical: str) -> bytes | None:
        """`get()` for a canonical name: what the hot paths call (no name mapping, and
        the index and value lookups inlined)."""
        names = self._names
        if canonical not in names:
            return None
        line = self._lines[names.index(canonical)]
        value = line[line.find(b":") + 1 :].strip()
        if self._folded and b"\n" in value:
            value = unfold(value)
        return value

    def _indexes(self, canonical: str) -> list[int]:
        return [i for i, name in enumerate(self._names) if name == canonical]

    def get(self, name: str) -> bytes | None:
        """Value of the first header called `name` (any case, full or compact form)."""
        return self._first(canonical_name(name))

    def values(self, canonical: str) -> list[bytes]:
        """`get_all()` for a canonical name: what the hot paths call (a single line
        without a comma, the usual Route, is taken as it is)."""
        names = self._names
        count = names.count(canonical)
        if count == 0:
            return []
        if count == 1 and canonical not in NOT_LISTS:
            value = self._value(names.index(canonical))
            return [value] if b"," not in value else split_list(value)
        return self.get_all(canonical)

    def get_all(self, name: str) -> list[bytes]:
        """Values of every header called `name`, in order. List headers (all but those in
        headers.NOT_LISTS) are split on commas outside quotes and `<>`, so that
        `Route: <a>, <b>` and two Route lines give the same list."""
        canonical = canonical_name(name)
        if canonical not in self._names:
            return []
        values = [self._value(i) for i in self._indexes(canonical)]
        if canonical in NOT_LISTS:
            return values
        split: list[bytes] = []
        for value in values:
            split.extend(split_list(value))
        return split

    def has(self, name: str) -> bool:
        return canonical_name(name) in self._names

    def count(self, name: str) -> int:
        """How many header lines are called `name`."""
        return self._names.count(canonical_name(name))

    @cached_property
    def headers(self) -> list[Header]:
        """Every header, in order, as `Header` objects."""
        return [
            Header(name, self._value(i), self._lines[i])
            for i, name in enumerate(self._names)
        ]

    # -- what a proxy reads ----------------------------------------------------------

    @cached_property
    def call_id(self) -> bytes:
        value = self._first("call-id")
        if value is None:
            raise ParseError("Missing Call-ID")
        return value

    @cached_property
    def cseq(self) -> tuple[int, str]:
        """(sequence number, method). ParseError if absent or malformed, including a
        number beyond 2**32-1 (RFC 3261 §8.1.1.5, RFC 4475 §3.1.2.4)."""
        value = self._first("cseq")
        if value is None:
            raise ParseError("Missing CSeq")
        return _parse_cseq(value)

    @cached_property
    def max_forwards(self) -> int | None:
        """None when absent; ParseError when not a number (range is checked by
        validate_request)."""
        value = self._first("max-forwards")
        return None if value is None else _parse_max_forwards(value)

    @cached_property
    def top_via(self) -> Via:
        """The first Via value (first element of the first Via line)."""
        index = self._index("via")
        if index is None:
            raise ParseError("Missing Via")
        value = self._value(index)
        if b"," in value:
            value = split_list(value)[0]
        return parse_via(value)

    @cached_property
    def vias(self) -> list[Via]:
        return [parse_via(value) for value in self.get_all("via")]

    @cached_property
    def from_addr(self) -> NameAddr:
        value = self._first("from")
        if value is None:
            raise ParseError("Missing From")
        return parse_name_addr(value)

    @cached_property
    def to_addr(self) -> NameAddr:
        value = self._first("to")
        if value is None:
            raise ParseError("Missing To")
        return parse_name_addr(value)

    @cached_property
    def from_tag(self) -> bytes | None:
        """The From tag; None when there is no From or no tag (RFC 2543 peers)."""
        return self._tag("from")

    @cached_property
    def to_tag(self) -> bytes | None:
        """The To tag; None when there is no To or no tag (an initial request)."""
        return self._tag("to")

    def _tag(self, canonical: str) -> bytes | None:
        value = self._first(canonical)
        if value is None:
            return None
        m = _NAME_ADDR_FAST.match(value)
        if m is not None:
            return _last_tag(m.group(1))
        addr = self.from_addr if canonical == "from" else self.to_addr
        tag = addr.params.get("tag")
        return None if tag is None else tag.encode("utf-8", "surrogateescape")

    @cached_property
    def routes(self) -> list[NameAddr]:
        return [parse_name_addr(value) for value in self.get_all("route")]

    @cached_property
    def record_routes(self) -> list[NameAddr]:
        return [parse_name_addr(value) for value in self.get_all("record-route")]

    @cached_property
    def uri(self) -> SipUri:
        """The parsed Request-URI (requests only)."""
        if not self.is_request:
            raise ParseError("Not a request")
        return parse_uri(self.ruri)

    @property
    def sips(self) -> bool:
        """The Request-URI is a SIPS URI (RFC 3261 §19.1): the request goes over TLS on
        every hop, and a proxy's Record-Route for it is a SIPS URI too (§16.6 step 4).
        Read from the first bytes, without parsing the URI."""
        return self.ruri[:5].lower() == b"sips:"

    # -- validation ------------------------------------------------------------------

    def validate_request(self) -> None:
        """Raise ParseError for a request a proxy must refuse (RFC 3261 §16.3, §8.2.1-2,
        RFC 4475 §3.1.2 and §3.3), with the status code to answer with:

        505 for a SIP version other than 2.0; 416 for a Request-URI scheme other than
        sip, sips or tel; 501 for a CSeq method that differs from an unknown request
        method (RFC 4475 §3.1.2.18 prefers it at proxies); 400 for the rest: a bad
        Request-URI or one carrying headers, a missing or repeated Via, From, To, Call-ID
        or CSeq, a malformed top Via, From, To, Call-ID, CSeq or Contact, a CSeq method
        that differs from a known request method, a Max-Forwards outside 0-255.

        Only the top Via is parsed: the others are the upstream hops' business and are
        forwarded as they came. From, To and Contact are checked as name-addr values;
        their URIs are left to the elements that use them.

        Date is not checked: a proxy does not use it, and RFC 4475 §3.1.2.12 asks
        elements not to reject a bad Date they do not need.
        """
        if not self.is_request:
            raise ParseError("Not a request")
        if self.version != "SIP/2.0":
            raise ParseError("Version Not Supported", 505)
        cache = self.__dict__
        uri = cache.get("uri")
        if uri is None:
            try:
                uri = cache["uri"] = parse_uri(self.ruri)
            except ParseError:
                raise ParseError("Bad Request-URI") from None
        if uri.scheme not in ("sip", "sips", "tel"):
            raise ParseError("Unsupported URI Scheme", 416)
        if uri.headers is not None:
            # RFC 3261 §19.1.1 (table): headers are not allowed in a Request-URI;
            # RFC 4475 §3.1.2.11 lets us reject rather than strip them.
            raise ParseError("Bad Request-URI")
        self._check_common()
        if cache["cseq"][1] != self.method:
            # RFC 3261 §8.1.1.5: the CSeq method MUST match the request's (ACK and
            # CANCEL included: they carry their own method in CSeq).
            status = 400 if self.method in KNOWN_METHODS else 501
            raise ParseError("CSeq method mismatch", status)
        names = self._names
        if "max-forwards" in names:
            max_forwards = cache.get("max_forwards")
            if max_forwards is None:
                max_forwards = cache["max_forwards"] = _parse_max_forwards(self._value(names.index("max-forwards")))
            if max_forwards > 255:
                raise ParseError("Bad Max-Forwards")
        else:
            cache["max_forwards"] = None
        if "contact" in names:
            if names.count("contact") == 1:
                contacts = split_list(self._value(names.index("contact")))
            else:
                contacts = self.get_all("contact")
            for contact in contacts:
                # RFC 3261 §10.2.2: "Contact: *" removes all bindings.
                if contact != b"*" and _NAME_ADDR_FAST.match(contact) is None:
                    try:
                        parse_name_addr(contact)
                    except ParseError:
                        raise ParseError("Bad Contact") from None

    def validate_response(self) -> None:
        """Raise ParseError for a response a proxy must drop (RFC 3261 §16.7 step 1-3 need
        a usable Via and transaction key): an unsupported version, a missing or repeated
        Via, From, To, Call-ID or CSeq, or a malformed one (RFC 4475 §3.1.2.5)."""
        if self.is_request:
            raise ParseError("Not a response")
        self._check_version()
        self._check_common()

    def _check_version(self) -> None:
        if self.version != "SIP/2.0":
            raise ParseError("Version Not Supported", 505)

    def _check_common(self) -> None:
        names = self._names
        if ("via" not in names or list(map(names.count, _ONCE)) != _ONCE_EACH
                or names.count("max-forwards") > 1):
            # Which rule is broken, for the 400's reason.
            for name in _MANDATORY:
                if name not in names:
                    raise ParseError(f"Missing {DISPLAY_NAMES[name]}")
            for name in _SINGLE:
                if names.count(name) > 1:
                    raise ParseError(f"Multiple {DISPLAY_NAMES[name]} headers")
        # The headers every message has, there once each as just checked: read in one
        # pass and cached for the properties, rather than found again one by one.
        lines = self._lines
        values = [line[line.find(b":") + 1:].strip() for line in map(lines.__getitem__, map(names.index, _MANDATORY))]
        if self._folded:
            values = [unfold(v) if b"\n" in v else v for v in values]
        via, from_, to, call_id, cseq = values
        cache = self.__dict__
        if "top_via" not in cache:
            cache["top_via"] = parse_via(split_list(via)[0] if b"," in via else via)
        # The name-addr syntax of From and To is checked (RFC 4475 §3.1.2.6, .14, .15);
        # their URIs are not parsed: a proxy copies them untouched, and a URI of any
        # scheme is legal there (RFC 4475 §3.3.4). A value of the common shape is valid
        # and gives its tag at once.
        for value, (_name, addr, tag, reason) in zip((from_, to), _NAME_ADDR_HEADERS):
            m = _NAME_ADDR_FAST.match(value)
            if m is None:
                try:
                    getattr(self, addr)
                except ParseError:
                    raise ParseError(reason) from None
            elif tag not in cache:
                cache[tag] = _last_tag(m.group(1))
        if not call_id or len(call_id.split()) != 1:
            raise ParseError("Bad Call-ID")
        cache["call_id"] = call_id
        if "cseq" not in cache:
            cache["cseq"] = _parse_cseq(cseq)


def _parse_cseq(value: bytes) -> tuple[int, str]:
    """CSeq's (sequence number, method); ParseError when malformed, including a number
    beyond 2**32-1 (RFC 3261 §8.1.1.5, RFC 4475 §3.1.2.4)."""
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 10:
        raise ParseError("Bad CSeq")
    method = _METHOD_NAMES.get(parts[1]) or extension_method(parts[1], "Bad CSeq")
    number = int(parts[0])
    if number > 0xFFFFFFFF:
        raise ParseError("Bad CSeq")
    return number, method


def extension_method(word: bytes, error: str) -> str:
    """A method name other than KNOWN_METHODS (RFC 3261 §7.1: Method = INVITEm / ... /
    extension-method, a token), as text; ParseError(`error`) when it is not a token."""
    if not is_token(word):
        raise ParseError(error)
    return word.decode("ascii")


def _parse_max_forwards(value: bytes) -> int:
    """Max-Forwards as a number; its range is for `validate_request` to check."""
    if not value.isdigit() or len(value) > 9:
        raise ParseError("Bad Max-Forwards")
    return int(value)


def _last_tag(params: bytes) -> bytes | None:
    """The tag among the parameters of a name-addr of the common shape; the last one
    wins, as in the parameter dict of `parse_name_addr`."""
    if not params:
        return None
    tags = _TAG_PARAM.findall(params)
    return tags[-1] if tags else None
