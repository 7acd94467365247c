"""A one-process UDP flooder for bench/attack.sh: junk datagrams or SIP INVITEs, from one
source address on the loopback to the proxy, as fast as one Python process can send them.

    flood.py junk   --src 127.0.0.66 --dst 127.0.0.1:5060 --seconds 30 --out flood.json
    flood.py invite --src 127.0.0.66 --dst 127.0.0.1:5060 --seconds 30 --out flood.json

* ``junk``: random bytes that are not SIP, 100-1400 bytes long (a pool of 4,096 payloads
  made once, sent in turn: drawing random bytes per datagram would cost more than sending).
* ``invite``: well-formed INVITEs to ``sip:NNNN@DST`` (NNNN counting up from 1000, like an
  extension scanner), each with a new Call-ID, Via branch and From tag. Responses are
  read (without waiting) and counted, so the flooder's socket never stops the proxy's
  answers at a full buffer and the report says what the proxy sent back.

Bounded in time (``--seconds``) and in count (``--max``); ``--rate`` paces it (0: as fast
as it can), so that several proxies can face the same flood. The socket is connected: a
connected ``send`` costs less than ``sendto`` and the kernel's loopback path, not this
loop, is then most of the cost of a datagram. Writes ``{"sent", "bytes", "errors",
"seconds", "rate", "replies", "reply_bytes"}`` to ``--out`` as JSON, and prints it.
Pin it to one core with ``taskset``: the caller does.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import time

POOL = 4096
# How many datagrams between two looks at the clock and at the replies: small enough to
# stop within a few milliseconds of the deadline, large enough to cost nothing per send.
BATCH = 256


def junk_pool(rng: random.Random) -> list[bytes]:
    pool = []
    while len(pool) < POOL:
        data = rng.randbytes(rng.randint(100, 1400))
        # Not SIP by construction: a SIP message starts with a method token or "SIP/2.0",
        # and a first byte that is not a letter rules out both.
        if data[:1].isalpha():
            data = b"\x00" + data[1:]
        pool.append(data)
    return pool


def invite_template(src: str, sport: int, dst: str) -> bytes:
    """An INVITE with %d placeholders: user, branch, From tag, Call-ID (the same counter)."""
    host, port = dst.rsplit(":", 1)
    body = (b"v=0\r\no=scan 1 1 IN IP4 " + src.encode() + b"\r\ns=-\r\nc=IN IP4 " + src.encode()
            + b"\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n")
    head = (
        f"INVITE sip:%d@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {src}:{sport};branch=z9hG4bK-scan-%d;rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:scanner@{src}>;tag=scan%d\r\n"
        f"To: <sip:%d@{host}:{port}>\r\n"
        f"Call-ID: scan-%d@{src}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:scanner@{src}:{sport}>\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=("junk", "invite"))
    ap.add_argument("--src", default="127.0.0.66")
    ap.add_argument("--dst", required=True, help="IP:PORT of the proxy")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=0.0, help="datagrams per second at most (0: as fast as it can)")
    ap.add_argument("--max", type=int, default=100_000_000, help="sends at most (failed ones included)")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    host, port = a.dst.rsplit(":", 1)
    for ip in (a.src, host):
        if not ip.startswith("127."):
            raise SystemExit(f"flood.py: refusing non-loopback address {ip}")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    s.bind((a.src, 0))
    s.connect((host, int(port)))
    s.setblocking(False)
    send, recv = s.send, s.recv
    sent = nbytes = errors = replies = reply_bytes = 0
    seconds = max(0.0, a.seconds)
    t0 = time.monotonic()
    end = t0 + seconds

    def pace(done: int) -> float:
        """The time now, after sleeping until `done` sends are due at --rate."""
        now = time.monotonic()
        if a.rate > 0:
            due = t0 + done / a.rate
            if due > now:
                time.sleep(max(0.0, min(due, end) - now))
                now = time.monotonic()
        return now

    if a.kind == "junk":
        pool = junk_pool(random.Random(66))
        i = 0
        while sent + errors < a.max and pace(sent + errors) < end:
            for data in pool[i:i + min(BATCH, a.max - sent - errors)]:
                try:
                    nbytes += send(data)
                    sent += 1
                except OSError:
                    errors += 1
            i = (i + BATCH) % POOL
    else:
        tmpl = invite_template(a.src, s.getsockname()[1], a.dst)
        first = 0
        while sent + errors < a.max and pace(sent + errors) < end:
            for n in range(first, first + min(BATCH, a.max - sent - errors)):
                user = 1000 + n % 9000
                try:
                    nbytes += send(tmpl % (user, n, n, user, n))
                    sent += 1
                except OSError:
                    errors += 1
            first += BATCH
            while True:
                try:
                    reply_bytes += len(recv(65536))
                    replies += 1
                except OSError:
                    break
    elapsed = time.monotonic() - t0
    res = {"kind": a.kind, "src": a.src, "dst": a.dst, "sent": sent, "bytes": nbytes, "errors": errors,
           "seconds": round(elapsed, 3), "rate": round(sent / elapsed) if elapsed > 0 else 0,
           "replies": replies, "reply_bytes": reply_bytes}
    text = json.dumps(res)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
