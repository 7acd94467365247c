"""One source cannot take the proxy from the others, end to end: junk that cannot be SIP
is dropped by the kernel before the proxy reads it (gdispatch.sockfilter), and a source
sending past `[flood] source_rate` is banned while the others, and the destinations of
the list, are served (gdispatch.flood). Bounded bursts, not floods: the floods and the
figures are `make bench-attack`'s."""

from __future__ import annotations

import json
import os
import socket

from . import harness
from .harness import HOST

FLOODER = "127.0.0.66"


def stats(p: harness.Proxy) -> dict:
    return json.loads(p.rpc("stats", json_out=True).stdout)


def options(port: int, src: str, local_port: int = 0) -> bytes:
    return harness.build_request("OPTIONS", f"sip:{HOST}:{port}", local_port=local_port or 5999).replace(
        f"{HOST}:{local_port or 5999}".encode(), f"{src}:{local_port or 5999}".encode(), 1)


def answered(p: harness.Proxy, src: str) -> bool:
    """Whether an OPTIONS from `src` gets its 200 (tried three times)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.settimeout(0.3)
    try:
        for _ in range(3):
            s.sendto(options(p.port, src, s.getsockname()[1]), (HOST, p.port))
            try:
                if harness.status_code(s.recv(65535)) == 200:
                    return True
            except OSError:
                pass
        return False
    finally:
        s.close()


def burst(p: harness.Proxy, src: str, datagrams: list[bytes]) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    try:
        for d in datagrams:
            try:
                s.sendto(d, (HOST, p.port))
            except OSError:
                pass
    finally:
        s.close()


def test_junk_is_dropped_before_the_proxy_reads_it(proxy):
    p = proxy("1 sip:127.0.0.1:5071 32 0\n")
    junk = [os.urandom(64 + i % 900) for i in range(300)]
    junk = [b"\x01" + d[1:] for d in junk]  # never three capital letters
    burst(p, FLOODER, junk)
    assert answered(p, FLOODER)  # read after the burst: the whole burst went before it
    assert stats(p)["bad_messages_dropped"] == 0  # none of it reached the parser


def test_a_source_past_its_rate_is_banned_the_others_are_served(proxy):
    gateway = "127.0.0.7"
    p = proxy(f"1 sip:{gateway}:5071 32 0\n", config="[flood]\nsource_rate = 100\nban_time = 30\n",
              listen=("udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}"))
    flood = [options(p.port, FLOODER).replace(b"OPTIONS sip:", b"OPTIONS sip:%d@" % i, 1) for i in range(600)]
    burst(p, FLOODER, flood)
    burst(p, gateway, flood)  # a destination of the list: never banned
    assert not answered(p, FLOODER)  # queued behind its burst: the ban is in place by then
    assert answered(p, HOST) and answered(p, gateway)
    # Its TCP connections are refused too; the others' are served.
    assert harness.sip_options(p.port, transport="tcp", source_ip=FLOODER) is None
    assert harness.sip_options(p.port, transport="tcp") == 200
    s = stats(p)
    assert s["flood_bans"] == 1 and s["banned_sources"] == 1 and s["flood_dropped"] > 0, s
    assert s["tcp_refused_banned"] >= 1, s
    assert f"source {FLOODER} sent more than 100 datagrams in a second" in p.log()
