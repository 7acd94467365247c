"""Which worker owns a datagram (gdispatch.cluster.relay.call_id_owner): every message of
a call must name the same worker, however its Call-ID header is spelled; and the relay
hands it to that worker."""

from gdispatch.cluster.relay import Relay, call_id_owner, relay_sockets

INVITE = (b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
          b"Call-ID: abc-123@host\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


def test_every_spelling_of_call_id_names_the_same_owner():
    forms = [
        INVITE,
        INVITE.replace(b"Call-ID: ", b"i: "),
        INVITE.replace(b"Call-ID: ", b"call-id:   "),
        INVITE.replace(b"Call-ID: ", b"CALL-ID :\t"),
        INVITE.replace(b"Call-ID: abc-123@host", b"Call-ID: abc-123@host  "),
    ]
    owners = {call_id_owner(m, 4) for m in forms}
    assert len(owners) == 1 and owners != {None}


def test_a_response_goes_where_its_request_went():
    resp = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCall-ID: abc-123@host\r\n"
            b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    assert call_id_owner(resp, 3) == call_id_owner(INVITE, 3)


def test_no_call_id_means_no_owner():
    assert call_id_owner(b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n\r\n", 2) is None
    assert call_id_owner(b"\r\n\r\n", 2) is None  # a keep-alive


def test_a_body_line_does_not_count():
    body = b"v=0\r\ni: not-the-call-id\r\n"
    msg = INVITE.replace(b"Content-Length: 0\r\n\r\n", b"Content-Length: %d\r\n\r\n" % len(body)) + body
    assert call_id_owner(msg, 7) == call_id_owner(INVITE, 7)


def test_calls_spread_over_the_workers():
    counts = [0, 0, 0]
    for n in range(3000):
        counts[call_id_owner(INVITE.replace(b"abc-123", b"call%d" % n), 3)] += 1
    assert all(900 < c < 1100 for c in counts), counts


def test_the_owner_is_the_same_whatever_the_call_id_header_looks_like():
    forms = [INVITE, INVITE.replace(b"Call-ID: ", b"i: "), INVITE.replace(b"Call-ID: ", b"call-id:  "),
             INVITE.replace(b"Call-ID: abc-123@host", b"Call-ID: abc-123@host  ")]
    for n in (2, 3, 4):
        assert len({call_id_owner(m, n) for m in forms}) == 1
    assert call_id_owner(b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n\r\n", 2) is None


def test_a_relay_sends_every_datagram_of_a_call_to_its_owner():
    """3 workers' relays on real loopback sockets: a datagram that reached the wrong
    worker, an ACK as any other, goes to the owner of its call; the owner keeps it."""
    import select

    class Listener:
        index = 0

    socks = relay_sockets(3)
    ports = [s.getsockname()[1] for s in socks]
    relays = [Relay(s, i, ports) for i, s in enumerate(socks)]

    def arrived() -> int:
        ready, _, _ = select.select(socks, [], [], 2.0)
        ready[0].recv(65535)
        return socks.index(ready[0])

    try:
        owner = call_id_owner(INVITE, 3)
        after, third = (owner + 1) % 3, (owner + 2) % 3
        ack = b"ACK" + INVITE[6:].replace(b"1 INVITE", b"1 ACK")
        addr = ("127.0.0.1", 5099)
        for data in (INVITE, ack):
            assert not relays[owner].steer(data, addr, Listener)
            for i in (after, third):
                assert relays[i].steer(data, addr, Listener) and arrived() == owner
        assert [r.sent for r in relays] == [{owner: 0, after: 2, third: 2}[i] for i in range(3)]
        assert select.select(socks, [], [], 0)[0] == []  # nothing else was sent
    finally:
        for s in socks:
            s.close()


def test_the_owner_handles_what_another_worker_handed_over_as_if_it_arrived_there():
    """The owner delivers the datagram with the listener it came in on and the caller's
    address (its Via received/rport, its responses' way back); a datagram from a socket
    that is no worker's relay is ignored."""
    import socket

    from tests.support.wait import wait_for

    class Listener:
        index = 3

    socks = relay_sockets(2)
    ports = [s.getsockname()[1] for s in socks]
    relays = [Relay(s, i, ports) for i, s in enumerate(socks)]
    got = []
    data = next(d for d in (INVITE.replace(b"abc-123", b"c%d" % n) for n in range(20)) if call_id_owner(d, 2) == 1)
    try:
        relays[1].start(lambda index, msg, addr: got.append((index, msg, addr)))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.sendto(b"\x00\x13\x89\x09192.0.2.9" + data, ("127.0.0.1", ports[1]))
        assert relays[0].steer(data, ("192.0.2.7", 5099), Listener)
        # The stranger's datagram was queued first: had it been taken, it would be in
        # `got` before the relayed one.
        wait_for(lambda: got, 2, 0.01)
        assert got == [(3, data, ("192.0.2.7", 5099))]
    finally:
        for r in relays:
            r.close()
