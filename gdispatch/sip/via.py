"""The Via header value: `Via` and `parse_via` (RFC 3261 §20.42, §18.2.1; RFC 3581).

A proxy reads the top Via of every message (transaction key, where to send responses)
and never rewrites one it did not add, so a `Via` keeps its exact bytes in `raw` and the
message builders splice those bytes instead of re-serialising this object.
"""

from __future__ import annotations

import re

from .errors import ParseError
from .grammar import parse_params, text
from .uri import format_hostport

# The shape nearly every Via has: no white space but the one SP, SIP/2.0, no quotes.
_FAST = re.compile(
    rb"SIP/2\.0/([A-Za-z0-9]+) ([A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?"
    rb"((?:;[^\s\";]+)*)\Z"
)
# RFC 3261 §25.1 via-parm with the LWS that SLASH, COLON and SEMI allow (RFC 4475 §3.1.1.1).
_TOKEN = rb"[A-Za-z0-9\-.!%*_+`'~]+"
_FULL = re.compile(
    rb"(" + _TOKEN + rb")\s*/\s*(" + _TOKEN + rb")\s*/\s*(" + _TOKEN + rb")"
    rb"\s+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?:\s*:\s*([0-9]{1,5}))?\s*(;.*)?\Z",
    re.DOTALL,
)


class Via:
    """One Via value.

    `protocol` is "SIP/2.0"; `transport` uppercase (UDP, TCP, TLS, SCTP, WS...); `host`
    lowercase, IPv6 without brackets; `port` int or None; `params` lowercase names,
    values as written. `branch` and `received` are None when absent; `rport` is None
    when absent, "" when present without a value (RFC 3581 §3), else the digits.
    `raw` is the value's bytes as received (a folded value with each fold replaced by
    one SP, as `SipMessage.get` gives it).
    """

    __slots__ = (
        "branch",
        "host",
        "params",
        "port",
        "protocol",
        "raw",
        "received",
        "rport",
        "transport",
    )

    def __init__(
        self,
        protocol: str,
        transport: str,
        host: str,
        port: int | None,
        params: dict[str, str | None],
        raw: bytes,
    ) -> None:
        self.protocol = protocol
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params
        self.branch = params.get("branch")
        self.received = params.get("received")
        if "rport" in params:
            self.rport: str | None = params["rport"] or ""
        else:
            self.rport = None
        self.raw = raw

    def sent_by(self) -> str:
        """`host[:port]` as sent (IPv6 in brackets), the port only if the Via has one."""
        return format_hostport(self.host, self.port)

    def __repr__(self) -> str:
        return f"Via({text(self.raw)!r})"


def parse_via(value: bytes) -> Via:
    """Parse one Via value (one element of a comma-joined Via line).

    Raises ParseError("Bad Via") for anything that is not
    `protocol-name / version / transport SP host [: port] *(;param)`, including empty
    parameters (";;", RFC 4475 §3.1.2.1) and ports above 65535.
    """
    raw = value.strip()
    m = _FAST.match(raw)
    if m is not None:
        protocol = "SIP/2.0"
        transport, host, port, tail = m.groups()
    else:
        m = _FULL.match(raw)
        if m is None:
            raise ParseError("Bad Via")
        name, version, transport, host, port, tail = m.groups()
        protocol = f"{name.decode().upper()}/{version.decode()}"
    port_number = int(port) if port is not None else None
    if port_number is not None and port_number > 65535:
        raise ParseError("Bad Via")
    host_text = host.decode("ascii").lower()
    if host_text[0] == "[":
        if ":" not in host_text:
            raise ParseError("Bad Via")
        host_text = host_text[1:-1]
    params = parse_params(text(tail), "Bad Via") if tail else {}
    return Via(
        protocol, transport.decode("ascii").upper(), host_text, port_number, params, raw
    )
