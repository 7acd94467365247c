"""Timing of the hot path: `python -m gdispatch.sip._bench`.

Prints, for a typical ~700-byte INVITE with an SDP body, the time to parse it, to read
what the proxy reads on every request (top Via, Call-ID, CSeq, tags, Max-Forwards,
Route), and to build the forwarded copy. Figures are the best of several runs, so they
show the code's cost rather than the machine's noise.
"""

from __future__ import annotations

import timeit

from .build import forward_request
from .parse import parse_message

INVITE = (
    b"INVITE sip:+15551234567@gw1.example.net;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds.1;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:+15551234567@gw1.example.net;user=phone>\r\n"
    b'From: "Alice Caller" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY\r\n"
    b"Supported: replaces, timer\r\n"
    b"User-Agent: ExamplePhone/1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 228\r\n"
    b"\r\n"
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 18 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=sendrecv\r\n"
)

VIA = b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.gd.0.5f3a9c2e1b"
RECORD_ROUTE = (b"<sip:127.0.0.1:5060;lr>",)


def _inspect(data: bytes) -> tuple[object, ...]:
    msg = parse_message(data)
    return (
        msg.top_via.branch,
        msg.call_id,
        msg.cseq,
        msg.from_tag,
        msg.to_tag,
        msg.max_forwards,
        msg.routes,
    )


def _forward(data: bytes) -> bytes:
    msg = parse_message(data)
    return forward_request(
        msg,
        via=VIA,
        ruri=b"sip:+15551234567@198.51.100.7:5060",
        max_forwards=(msg.max_forwards or 70) - 1,
        record_route=RECORD_ROUTE,
    )


def _best_us(stmt: object, number: int) -> float:
    runs = timeit.repeat(stmt, number=number, repeat=7)  # type: ignore[arg-type]
    return min(runs) / number * 1e6


def main() -> None:
    number = 20000
    parse = _best_us(lambda: parse_message(INVITE), number)
    inspect = _best_us(lambda: _inspect(INVITE), number)
    forward = _best_us(lambda: _forward(INVITE), number) - parse
    print(f"INVITE of {len(INVITE)} bytes")
    print(f"parse_message:                     {parse:6.2f} us")
    print(f"parse + read Via/Call-ID/CSeq/tags: {inspect:6.2f} us")
    print(f"forward_request (parse excluded):  {forward:6.2f} us")


if __name__ == "__main__":
    main()
