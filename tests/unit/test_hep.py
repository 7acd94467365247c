"""HEP v3 (gdispatch.hep) on plain bytes, against the specification's own example packet
and packets computed by hand; the sender over a real UDP socket; the `[capture]` table;
and the tap of the transport shell (gdispatch.net.Transports.tap) in process, on real
sockets: nothing wrapped without it, every message received and sent copied with it."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from gevent import socket as gsocket

from gdispatch import hep
from gdispatch.config import ConfigError, Listen, from_dict
from gdispatch.net import Transports
from tests.e2e.harness import free_port
from tests.support.hep import Collector, HepError, decode
from tests.support.wait import wait_for

# The example of the "HEP3 Network Protocol Specification" (rev. 37), octet for octet as
# the document prints it, each line with its annotation there.
SPEC_EXAMPLE = bytes.fromhex(
    "48 45 50 33"                    # HEP3 ID
    "00 71"                          # total length = 113 octets
    "00 00 00 01 00 07 02"           # protocol family = 2 (IPv4)
    "00 00 00 02 00 07 11"           # protocol ID = 17 (UDP)
    "00 00 00 03 00 0a d4 ca 00 01"  # IPv4 source address = 212.202.0.1
    "00 00 00 04 00 0a 52 74 00 d3"  # IPv4 destination address = 82.116.0.211
    "00 00 00 07 00 08 2e ea"        # source port = 12010
    "00 00 00 08 00 08 13 c4"        # destination port = 5060
    "00 00 00 09 00 0a 4e 49 82 cb"  # seconds timestamp 1313440459 = Mon Aug 15 22:34:19 2011
    "00 00 00 0a 00 0a 00 01 d4 c0"  # microseconds timestamp offset 120000 = 0.12 seconds
    "00 00 00 0b 00 07 01"           # 01 - SIP
    "00 00 00 0c 00 0a 00 00 00 E4"  # capture ID (228)
    "00 00 00 0f 00 14 49 4e 56 49 54 45 20 73 69 70 3a 62 6f 62"  # SIP payload "INVITE sip:bob" (shortened)
)

MESSAGE = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKa\r\n"
           b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: c1@test\r\nCSeq: 1 OPTIONS\r\n"
           b"Content-Length: 0\r\n\r\n")


# --------------------------------------------------------------------------- the encoder

def test_the_specification_example_decodes_as_the_specification_annotates_it():
    p = decode(SPEC_EXAMPLE)
    assert (p.ip_family, p.ip_protocol) == (2, 17)
    assert (p.source, p.destination) == (("212.202.0.1", 12010), ("82.116.0.211", 5060))
    assert (p.time_sec, p.time_usec, p.protocol_type, p.capture_id) == (1313440459, 120000, 1, 228)
    assert p.payload == b"INVITE sip:bob" and p.correlation_id is None


def test_encode_writes_the_specification_example_octet_for_octet():
    packet = hep.encode("udp", ("212.202.0.1", 12010), ("82.116.0.211", 5060), b"INVITE sip:bob",
                        capture_id=228, time_us=1313440459 * 1_000_000 + 120000)
    assert packet == SPEC_EXAMPLE


def test_ipv6_over_tcp_with_a_correlation_id_octet_for_octet():
    # Computed by hand from the specification: the IPv6 address chunks (types 5 and 6,
    # 6 + 16 octets), the TCP protocol ID, and the correlation id (type 0x11) before
    # the payload, in the order Kamailio's siptrace writes them.
    expected = bytes.fromhex(
        "48 45 50 33 00 88"              # HEP3, total 136 octets
        "00 00 00 01 00 07 0a"           # family 10 (IPv6)
        "00 00 00 02 00 07 06"           # protocol ID 6 (TCP)
        "00 00 00 05 00 16 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01"  # 2001:db8::1
        "00 00 00 06 00 16 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 02"  # 2001:db8::2
        "00 00 00 07 00 08 13 c4"        # source port 5060
        "00 00 00 08 00 08 c3 50"        # destination port 50000
        "00 00 00 09 00 0a 65 53 f1 00"  # 1700000000 s
        "00 00 00 0a 00 0a 00 0f 42 3f"  # 999999 us
        "00 00 00 0b 00 07 01"           # SIP
        "00 00 00 0c 00 0a ff ff ff ff"  # capture agent 4294967295
        "00 00 00 11 00 09 61 40 62"     # correlation id "a@b"
        "00 00 00 0f 00 0a 41 43 4b 20"  # payload "ACK "
    )
    packet = hep.encode("tcp", ("2001:db8::1", 5060), ("2001:db8::2", 50000), b"ACK ", capture_id=0xFFFFFFFF,
                        time_us=1_700_000_000_999_999, correlation=b"a@b")
    assert packet == expected
    p = decode(packet)
    assert (p.ip_family, p.ip_protocol, p.source, p.destination) == (10, 6, ("2001:db8::1", 5060),
                                                                     ("2001:db8::2", 50000))
    assert (p.correlation_id, p.payload, p.capture_id, p.time_usec) == (b"a@b", b"ACK ", 0xFFFFFFFF, 999999)


def test_the_chunks_come_in_kamailios_order_and_tls_has_its_protocol_id():
    p = decode(hep.encode("tls", ("10.0.0.1", 5061), ("10.0.0.2", 5061), MESSAGE, capture_id=1, time_us=0,
                          correlation=b"c1@test"))
    assert [(v, t) for v, t, _ in p.chunks] == [(0, t) for t in (1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 0x11, 15)]
    assert p.ip_protocol == 22 and p.payload == MESSAGE


def test_what_cannot_be_a_hep3_packet_is_refused():
    with pytest.raises(ValueError, match="over 65535"):
        hep.encode("udp", ("10.0.0.1", 1), ("10.0.0.2", 2), b"x" * 65500, capture_id=1, time_us=0)
    with pytest.raises(ValueError, match="address family"):
        hep.encode("udp", ("10.0.0.1", 1), ("::1", 2), MESSAGE, capture_id=1, time_us=0)


def test_the_decoder_refuses_what_the_specification_does_not_allow():
    with pytest.raises(HepError, match="total length"):
        decode(SPEC_EXAMPLE[:-1])
    with pytest.raises(HepError, match="HEP3 ID"):
        decode(b"HEP2" + SPEC_EXAMPLE[4:])
    bad = bytearray(SPEC_EXAMPLE)
    bad[11] = 8  # the protocol family chunk (uint8) said 8 octets long
    with pytest.raises(HepError):
        decode(bytes(bad))


@pytest.mark.parametrize("message,call_id", [
    (MESSAGE, b"c1@test"),
    (MESSAGE.replace(b"Call-ID: c1@test", b"i:c2 "), b"c2"),  # compact form, trailing white space
    (MESSAGE.replace(b"Call-ID: c1@test", b"CALL-ID  :\tc3"), b"c3"),  # any case, white space before the colon
    (MESSAGE.replace(b"Call-ID: c1@test\r\n", b"") + b"i: not-a-header", b""),  # the body is not searched
    (MESSAGE.replace(b"Call-ID: c1@test\r\n", b"") + b"Call-ID: nor-this", b""),
    (MESSAGE.replace(b"\r\n", b"\n"), b"c1@test"),  # bare line feeds
    (MESSAGE[:MESSAGE.index(b"CSeq")], b"c1@test"),  # no end of the header
    (b"garbage", b""),
])
def test_the_correlation_id_is_the_call_id(message, call_id):
    assert hep.call_id(message) == call_id


# --------------------------------------------------------------------------- the sender

@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


def test_the_sender_sends_each_copy_with_its_call_id_and_the_time(collector):
    stats: dict[str, int] = {}
    sender = hep.Sender(collector.address, 2001, stats)
    try:
        before = time.time()
        sender.capture("udp", ("127.0.0.1", 5060), ("127.0.0.2", 5070), MESSAGE)
        p = wait_for(lambda: collector.packets and collector.packets[0])
    finally:
        sender.close()
    assert (p.source, p.destination, p.capture_id) == (("127.0.0.1", 5060), ("127.0.0.2", 5070), 2001)
    assert (p.payload, p.correlation_id) == (MESSAGE, b"c1@test")
    assert p.time_sec is not None and p.time_usec is not None
    assert before - 1 < p.time_sec + p.time_usec / 1e6 < time.time() + 1
    assert stats == {"hep_sent": 1, "hep_send_failures": 0}


def test_a_copy_that_cannot_be_sent_is_counted_and_logged_once_not_raised(collector, caplog):
    stats: dict[str, int] = {}
    sender = hep.Sender(collector.address, 2001, stats)
    try:
        with caplog.at_level(logging.WARNING, logger="gdispatch.hep"):
            big = MESSAGE + b"x" * 65450  # a HEP3 packet may hold it, a UDP datagram may not (EMSGSIZE)
            sender.capture("udp", ("127.0.0.1", 5060), ("127.0.0.2", 5070), big)
            sender.capture("udp", ("127.0.0.1", 5060), ("127.0.0.2", 5070), big + b"x" * 100)  # over 65535
            sender.capture("udp", ("127.0.0.1", 5060), ("127.0.0.2", 5070), MESSAGE)
    finally:
        sender.close()
    assert stats == {"hep_sent": 1, "hep_send_failures": 2}
    assert len([r for r in caplog.records if "hep_send_failures" in r.getMessage()]) == 1


def test_a_collector_that_is_not_listening_is_counted_in_failures():
    port = free_port("udp")  # nobody there: the kernel answers with port unreachable
    stats: dict[str, int] = {}
    sender = hep.Sender(f"udp:127.0.0.1:{port}", 2001, stats)

    def refused() -> bool:
        sender.capture("udp", ("127.0.0.1", 5060), ("127.0.0.2", 5070), MESSAGE)
        return stats["hep_send_failures"] > 0

    try:
        wait_for(refused, 5, 0.02)  # the copy after the port-unreachable one fails (ECONNREFUSED)
    finally:
        sender.close()


# --------------------------------------------------------------------------- [capture]

def test_the_capture_table_takes_an_ip_address_and_a_uint32_agent_id():
    c = from_dict({"capture": {"hep": "udp:[::1]:9060", "capture_id": 4294967295}}).capture
    assert (c.hep, c.capture_id) == ("udp:[::1]:9060", 4294967295)
    assert from_dict({}).capture.hep == ""  # off by default
    for bad, why in [({"hep": "udp:homer.example:9060"}, "expected"), ({"hep": "udp:999.1.1.1:9060"}, "IP address"),
                     ({"hep": "udp:127.0.0.1:0"}, "1-65535"), ({"capture_id": 2 ** 32}, "4294967295")]:
        with pytest.raises(ConfigError, match=why):
            from_dict({"capture": bad})


# --------------------------------------------------------------------------- the tap

@pytest.fixture
def shell():
    """Transports on a UDP and a TCP listen address of 127.0.0.1 (free ports), started
    with a handler that keeps what it receives, and (`tap`) what its tap was given."""
    made: list[Transports] = []

    def make(tapped: bool) -> Transports:
        t = Transports((Listen("udp", "127.0.0.1", free_port("udp")), Listen("tcp", "127.0.0.1", free_port("tcp"))))
        t.copies = []  # type: ignore[attr-defined]
        t.received = []  # type: ignore[attr-defined]
        if tapped:
            t.tap(lambda *copy: t.copies.append(copy))  # type: ignore[attr-defined]
        t.handler = lambda data, source: t.received.append((data, source))  # type: ignore[attr-defined]
        t.start(t.handler)  # type: ignore[attr-defined]
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def test_without_a_tap_nothing_on_the_sip_path_is_wrapped(shell):
    t = shell(tapped=False)
    udp, tcp = t.listeners
    assert t.on_message is t.handler  # type: ignore[attr-defined]
    assert "sendto" not in vars(udp) and "remember" not in vars(t)
    with gsocket.create_connection(("127.0.0.1", tcp.listen.port), timeout=5) as client:
        client.sendall(MESSAGE)
        data, source = wait_for(lambda: t.received and t.received[0])  # type: ignore[attr-defined]
        assert "send" not in vars(source.conn)
    wait_for(lambda: t.table.open == 0, 5, 0.01)  # the connection ended with its peer's


def test_the_tap_copies_udp_in_and_out_with_the_sockets_addresses(shell):
    t = shell(tapped=True)
    udp = t.listeners[0]
    here = ("127.0.0.1", udp.listen.port)
    peer = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    there = peer.getsockname()
    try:
        peer.sendto(MESSAGE, here)
        data, source = wait_for(lambda: t.received and t.received[0])  # type: ignore[attr-defined]
        answer = b"SIP/2.0 200 OK\r\nCall-ID: c1@test\r\n\r\n"
        t.reply(source, source.addr, answer)
        request = MESSAGE.replace(b"c1@test", b"c2@test")
        assert t.send("udp", there, request) is udp
        assert peer.recv(65535) == answer and peer.recv(65535) == request
    finally:
        peer.close()
    assert t.copies == [("udp", there, here, MESSAGE), ("udp", here, there, answer),  # type: ignore[attr-defined]
                        ("udp", here, there, request)]


def test_the_tap_copies_tcp_in_and_out_on_connections_accepted_and_opened(shell):
    t = shell(tapped=True)
    tcp = t.listeners[1]
    here = ("127.0.0.1", tcp.listen.port)
    server = gsocket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    gateway = server.getsockname()
    try:
        with gsocket.create_connection(here, timeout=5) as client:
            client.sendall(MESSAGE)
            data, source = wait_for(lambda: t.received and t.received[0])  # type: ignore[attr-defined]
            there = client.getsockname()
            answer = b"SIP/2.0 200 OK\r\nCall-ID: c1@test\r\nContent-Length: 0\r\n\r\n"
            t.reply(source, source.addr, answer)
            assert client.recv(65535) == answer
        # A connection the proxy opens is named by its listener's address, as Kamailio names
        # the socket a message leaves from.
        t.send("tcp", gateway, MESSAGE)
        peer, _ = server.accept()
        peer.settimeout(5)
        assert peer.recv(65535) == MESSAGE
        peer.close()
        # Both peers closed: the connections end (none is left waiting on its socket
        # when the transports close).
        wait_for(lambda: t.table.open == 0, 5, 0.01)
    finally:
        server.close()
    assert t.copies == [("tcp", there, here, MESSAGE), ("tcp", here, there, answer),  # type: ignore[attr-defined]
                        ("tcp", here, gateway, MESSAGE)]
