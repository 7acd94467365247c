"""SIP requests and responses as bytes, for the unit and the e2e tests alike.

    request("BYE", "sip:svc@127.0.0.1:5071", routes=[route], to_tag="uas1", cseq=2)
    response(180, vias=[top, below], to_tag="gw1")

Every header can be changed by a keyword; None leaves it out (a message missing a
mandatory header). The headers are written in one order (RFC 3261 §7.3.1: the order of
headers of different names carries no meaning):

    Via...  Route...  Record-Route...  Max-Forwards  From  To  Call-ID  CSeq  Contact
    headers...  Content-Type  Content-Length

`headers` are extra lines ("Name: value"), written as given after Contact (a second Via,
a folded line: whatever the test puts there). `compact`: True, or the names of the
builder's own headers to write in their compact form (RFC 3261 §7.3.3: v, f, t, i, m, l,
c); `headers` are written as given. Messages a test crafts on purpose
(torture messages, an attacker's bytes) are better written out as bytes where they are
used: the builder writes only well-formed SIP.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

COMPACT = {"Via": "v", "From": "f", "To": "t", "Call-ID": "i", "Contact": "m", "Content-Length": "l",
           "Content-Type": "c"}
REASONS = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 400: "Bad Request",
           403: "Forbidden", 404: "Not Found", 408: "Request Timeout", 481: "Call/Transaction Does Not Exist",
           486: "Busy Here", 487: "Request Terminated", 500: "Server Internal Error",
           503: "Service Unavailable"}

AUTO = "auto"  # content_length: the length of the body

VIA = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds"
FROM = "<sip:alice@atlanta.example.com>"
FROM_TAG = "1928301774"
TO = "<sip:bob@biloxi.example.com>"
CALL_ID = "a84b4c76e66710@pc33.atlanta.example.com"


def request(method: str = "INVITE", ruri: str = "sip:bob@biloxi.example.com", *,
            vias: str | Sequence[str] | None = VIA,
            routes: Sequence[str] = (),
            record_routes: Sequence[str] = (),
            max_forwards: int | str | None = 70,
            from_: str | None = FROM, from_tag: str | None = FROM_TAG,
            to: str | None = "", to_tag: str | None = None,
            call_id: str | None = CALL_ID,
            cseq: int | str | None = 1, cseq_method: str | None = None,
            contact: str | None = None,
            headers: Iterable[str] = (),
            body: bytes | str = b"",
            content_type: str | None = None,
            content_length: int | str | None = AUTO,
            compact: bool | Iterable[str] = False) -> bytes:
    """A request. `vias`: one Via value or a list, each on its own line (join them with
    ", " for one line); `routes` and `record_routes` likewise. `to`: the To name-addr,
    by default <ruri>. `from_tag`/`to_tag`: appended as ;tag=, None for none. `cseq`: the
    number (the method is `cseq_method` or the request's) or the whole value as a string.
    `content_length`: AUTO (the body's length), a value, or None for no Content-Length."""
    if to == "":
        to = f"<{ruri}>"
    if isinstance(cseq, int):
        cseq = f"{cseq} {cseq_method or method}"
    start = f"{method} {ruri} SIP/2.0"
    return _message(start, vias, routes, record_routes, max_forwards, from_, from_tag, to, to_tag, call_id, cseq,
                    contact, headers, body, content_type, content_length, compact)


def response(status: int = 200, reason: str | None = None, *,
             vias: str | Sequence[str] | None = VIA,
             record_routes: Sequence[str] = (),
             from_: str | None = FROM, from_tag: str | None = FROM_TAG,
             to: str | None = TO, to_tag: str | None = None,
             call_id: str | None = CALL_ID,
             cseq: int | str | None = 1, cseq_method: str = "INVITE",
             contact: str | None = None,
             headers: Iterable[str] = (),
             body: bytes | str = b"",
             content_type: str | None = None,
             content_length: int | str | None = AUTO,
             compact: bool | Iterable[str] = False) -> bytes:
    """A response; the keywords as for `request`. `reason`: by default the usual phrase of
    `status`."""
    if isinstance(cseq, int):
        cseq = f"{cseq} {cseq_method}"
    start = f"SIP/2.0 {status} {REASONS.get(status, 'Unknown') if reason is None else reason}"
    return _message(start, vias, (), record_routes, None, from_, from_tag, to, to_tag, call_id, cseq,
                    contact, headers, body, content_type, content_length, compact)


def _values(v: str | Sequence[str] | None) -> Sequence[str]:
    if v is None:
        return ()
    return (v,) if isinstance(v, str) else v


def _tagged(value: str, tag: str | None) -> str:
    return value if tag is None else f"{value};tag={tag}"


def _message(start, vias, routes, record_routes, max_forwards, from_, from_tag, to, to_tag, call_id, cseq,
             contact, headers, body, content_type, content_length, compact) -> bytes:
    if isinstance(body, str):
        body = body.encode()
    if compact is True:
        short = set(COMPACT)
    else:
        short = {_canonical(n) for n in (compact or ())}

    def name(n: str) -> str:
        return COMPACT[n] if n in short else n

    lines = [start]
    lines += [f"{name('Via')}: {v}" for v in _values(vias)]
    lines += [f"Route: {r}" for r in _values(routes)]
    lines += [f"Record-Route: {r}" for r in _values(record_routes)]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    if from_ is not None:
        lines.append(f"{name('From')}: {_tagged(from_, from_tag)}")
    if to is not None:
        lines.append(f"{name('To')}: {_tagged(to, to_tag)}")
    if call_id is not None:
        lines.append(f"{name('Call-ID')}: {call_id}")
    if cseq is not None:
        lines.append(f"CSeq: {cseq}")
    if contact is not None:
        lines.append(f"{name('Contact')}: {contact}")
    lines += headers
    if content_type is not None:
        lines.append(f"{name('Content-Type')}: {content_type}")
    if content_length is not None:
        lines.append(f"{name('Content-Length')}: {len(body) if content_length == AUTO else content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _canonical(n: str) -> str:
    """'call-id' -> 'Call-ID', 'via' -> 'Via' (for `compact`)."""
    return next((full for full in COMPACT if full.lower() == n.strip().lower()), n)
