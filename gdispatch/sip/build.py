"""Building outgoing messages from parsed ones, by splicing bytes.

`forward_request` (RFC 3261 §16.6), `strip_top_via` (§16.7 step 3), `build_response`
(§8.2.6), `build_ack` (§17.1.1.3) and `build_cancel` (§9.1). Each works on the header
lines `parse_message` kept: a header that is not edited goes out as the very bytes that
came in, an edited one keeps its name as written, and no parsed object is ever turned
back into text. Line ends are written as CRLF; bodies are copied unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ParseError
from .grammar import separator_positions
from .headers import DISPLAY_NAMES, canonical_name
from .message import SipMessage


def _replace_first_value(line: bytes, value: bytes) -> bytes:
    """`line` with its first comma-separated value replaced by `value`; the name as
    written and the other values' bytes are kept."""
    colon = line.find(b":") + 1
    rest = line[colon:]
    separators = separator_positions(rest) if b"," in rest else None
    if separators:
        return line[:colon] + b" " + value + rest[separators[0] :]
    return line[:colon] + b" " + value


def _drop_first_values(line: bytes, count: int) -> tuple[bytes | None, int]:
    """Remove up to `count` leading comma-separated values from `line`.

    Returns (the line that remains, or None if no value is left; how many were removed).
    """
    colon = line.find(b":") + 1
    rest = line[colon:]
    if b"," not in rest:
        return None, 1  # a single value
    separators = separator_positions(rest)
    if count > len(separators):
        return None, len(separators) + 1
    # lstrip() also eats a line fold that followed the comma.
    return line[:colon] + b" " + rest[separators[count - 1] + 1 :].lstrip(), count


def _splice(
    start_line: bytes,
    lines: list[bytes],
    replace: dict[int, bytes | None],
    insert: dict[int, list[bytes]],
    append: Sequence[bytes],
    body: bytes,
) -> bytes:
    """Join the header lines with edits: `insert[i]` goes before line i (i may be
    len(lines)), `replace[i]` replaces line i (None removes it), `append` follows."""
    out = [start_line, *lines]
    # From the last edit up, so that the positions of those still to come hold
    # (out[i + 1] is lines[i]).
    for i in sorted(replace.keys() | insert.keys(), reverse=True):
        if i in replace:
            line = replace[i]
            if line is None:
                del out[i + 1]
            else:
                out[i + 1] = line
        added = insert.get(i)
        if added:
            out[i + 1:i + 1] = added
    out.extend(append)
    out.append(b"")
    out.append(body)
    return b"\r\n".join(out)


def forward_request(
    msg: SipMessage,
    *,
    via: bytes,
    ruri: bytes | None = None,
    max_forwards: int | None = None,
    record_route: Sequence[bytes] = (),
    pop_routes: int = 0,
    top_via: bytes | None = None,
    add_headers: Sequence[bytes] = (),
    remove_headers: Sequence[str] = (),
) -> bytes:
    """The copy of request `msg` a proxy sends on (RFC 3261 §16.6).

    - `via`: a complete Via value, added as a new Via line above all others (step 8).
    - `ruri`: the new Request-URI (step 6), if given.
    - `max_forwards`: the value to write (step 3): replaces the first Max-Forwards value,
      or appends `Max-Forwards: N` when there is none.
    - `record_route`: complete Record-Route values that become the topmost entries, in
      the given order (step 4).
    - `pop_routes`: how many Route values to remove from the top (loose routing, §16.4);
      a comma-joined Route line keeps its remaining values. ValueError if there are fewer.
    - `top_via`: replaces the value of the first existing Via entry, e.g. to add
      `received`/`rport` (RFC 3261 §18.2.1, RFC 3581 §4).
    - `add_headers`: complete header lines (no CRLF) appended to the header block.
    - `remove_headers`: names (any form) of headers to remove everywhere.

    The body and Content-Length are unchanged; untouched lines are byte-identical.
    """
    lines = msg._lines
    names = msg._names
    replace: dict[int, bytes | None] = {}
    insert: dict[int, list[bytes]] = {}
    append: list[bytes] = []

    if remove_headers:
        dropped = {canonical_name(name) for name in remove_headers}
        for i, name in enumerate(names):
            if name in dropped:
                replace[i] = None

    if pop_routes > 0:
        remaining = pop_routes
        for i in ([names.index("route")] if names.count("route") == 1 else msg._indexes("route")):
            replace[i], removed = _drop_first_values(lines[i], remaining)
            remaining -= removed
            if remaining == 0:
                break
        if remaining:
            raise ValueError(
                f"pop_routes={pop_routes} but the request has fewer Route values"
            )

    via_index = names.index("via") if "via" in names else None
    if top_via is not None:
        if via_index is None:
            raise ValueError("top_via given but the request has no Via")
        replace[via_index] = _replace_first_value(lines[via_index], top_via)
    if via_index is None:
        via_index = 0
    insert[via_index] = [b"Via: " + via]

    if max_forwards is not None:
        if "max-forwards" not in names:
            append.append(b"Max-Forwards: %d" % max_forwards)
        else:
            mf_index = names.index("max-forwards")
            line = lines[mf_index]
            replace[mf_index] = line[: line.find(b":") + 1] + b" %d" % max_forwards

    if record_route:
        added = [b"Record-Route: " + value for value in record_route]
        rr_index = msg._index("record-route")
        if rr_index is None:
            # No Record-Route yet: put ours just below the Via block.
            via_lines = msg._indexes("via")
            rr_index = via_lines[-1] + 1 if via_lines else 0
        insert.setdefault(rr_index, []).extend(added)

    start_line = msg.start_line
    if ruri is not None:
        method, _, version = start_line.split(b" ")
        start_line = b" ".join((method, ruri, version))

    append.extend(add_headers)
    return _splice(start_line, lines, replace, insert, append, msg.body)


def strip_top_via(msg: SipMessage) -> bytes:
    """Response `msg` without its first Via value (RFC 3261 §16.7 step 3): the whole line
    if it holds one value, else the first value of the comma-joined line."""
    i = msg._index("via")
    if i is None:
        raise ParseError("Missing Via")
    lines = msg._lines
    line = lines[i]
    if b"," not in line:
        # The usual case, one value on the line: the line goes.
        return b"\r\n".join((msg.start_line, *lines[:i], *lines[i + 1 :], b"", msg.body))
    remaining, _ = _drop_first_values(line, 1)
    return b"\r\n".join((msg.start_line, *lines[:i], *((remaining,) if remaining else ()), *lines[i + 1 :],
                          b"", msg.body))


def _line(msg: SipMessage, name: str) -> bytes:
    """The first `name` header line of `msg`, as received."""
    i = msg._index(name)
    if i is None:
        raise ParseError(f"Missing {DISPLAY_NAMES[name]}")
    return msg._lines[i]


def build_response(
    request: SipMessage,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    headers: Sequence[bytes] = (),
    body: bytes = b"",
    top_via: bytes | None = None,
) -> bytes:
    """A response generated here to `request` (RFC 3261 §8.2.6.2): every Via line in
    order, From, To, Call-ID and CSeq copied as they came, then `headers` (complete lines
    without CRLF), Content-Length and `body`.

    `to_tag` is added to To when the status is above 100 and To has none. `top_via`
    replaces the first Via value (the request's top Via with `received`/`rport` added,
    RFC 3261 §18.2.1, RFC 3581 §4). Works on a request that does not validate: whatever
    of those headers exists is copied, so a broken request can still get its 400.
    """
    lines = request._lines
    out = [b"SIP/2.0 %d %s" % (status, reason.encode("utf-8"))]
    via_lines = [lines[i] for i in request._indexes("via")]
    if top_via is not None and via_lines:
        via_lines[0] = _replace_first_value(via_lines[0], top_via)
    out.extend(via_lines)
    for name in ("from", "to", "call-id", "cseq"):
        i = request._index(name)
        if i is None:
            continue
        line = lines[i]
        if name == "to" and to_tag and status > 100:
            try:
                has_tag = request.to_tag is not None
            except ParseError:
                has_tag = True  # a To we cannot parse is copied as it came
            if not has_tag:
                line += b";tag=" + to_tag.encode("utf-8")
        out.append(line)
    out.extend(headers)
    out.append(b"Content-Length: %d" % len(body))
    out.append(b"")
    out.append(body)
    return b"\r\n".join(out)


def _in_transaction_request(
    request: SipMessage, method: bytes, to_line: bytes
) -> bytes:
    # RFC 3261 §17.1.1.3 and §9.1: same Request-URI, Call-ID, From and CSeq number; one
    # Via equal to the request's top Via; the request's Route set.
    out = [
        b"%s %s SIP/2.0" % (method, request.ruri),
        b"Via: " + request.top_via.raw,
    ]
    out.extend(request._lines[i] for i in request._indexes("route"))
    out.append(b"Max-Forwards: 70")
    out.append(_line(request, "from"))
    out.append(to_line)
    out.append(_line(request, "call-id"))
    out.append(b"CSeq: %d %s" % (request.cseq[0], method))
    out.append(b"Content-Length: 0")
    out.append(b"")
    out.append(b"")
    return b"\r\n".join(out)


def build_ack(request: SipMessage, response: SipMessage) -> bytes:
    """The ACK a client transaction sends for a non-2xx final `response` to INVITE
    `request` (RFC 3261 §17.1.1.3): To comes from the response, with its tag."""
    return _in_transaction_request(request, b"ACK", _line(response, "to"))


def build_cancel(request: SipMessage) -> bytes:
    """A CANCEL for `request`, an INVITE this proxy forwarded (RFC 3261 §9.1)."""
    return _in_transaction_request(request, b"CANCEL", _line(request, "to"))
