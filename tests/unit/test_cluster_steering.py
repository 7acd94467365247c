"""The kernel's choice of worker (gdispatch.cluster.steering): the BPF program agrees with the
workers' own `call_id_owner` for every message of a call, the ACK included, checked on
an interpreter of the classic BPF it uses and, on Linux, by the
kernel on real sockets."""

from __future__ import annotations

import errno
import random
import select
import socket

import pytest

from gdispatch.cluster import steering
from gdispatch.cluster.relay import call_id_owner

MSG = (b"BYE sip:svc@127.0.0.1:5070 SIP/2.0\r\n%sFrom: <sip:a@127.0.0.1>;tag=1\r\n"
       b"To: <sip:b@127.0.0.1>;tag=2\r\n%s\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n")


def message(call_id_line: bytes, vias: int = 1) -> bytes:
    via = b"".join(b"Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK%d\r\n" % (5000 + i, i) for i in range(vias))
    return MSG % (via, call_id_line)


def run(prog, packet: bytes) -> int:
    """Classic BPF as the kernel runs it, for the instructions `program` uses: a load
    past the end of the packet ends the program with 0."""
    a = x = 0
    mem = [0] * 16
    pc = 0

    def load(off: int, size: int) -> int | None:
        if off < 0 or off + size > len(packet):
            return None
        return int.from_bytes(packet[off:off + size], "big")

    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # LD
            mode, size = code & 0xE0, {0x00: 4, 0x08: 2, 0x10: 1}[code & 0x18]
            if mode == 0x00:
                a = k
            elif mode == 0x80:
                a = len(packet)
            elif mode == 0x60:
                a = mem[k]
            else:
                v = load(k if mode == 0x20 else x + k, size)
                if v is None:
                    return 0
                a = v
        elif cls == 0x01:  # LDX
            x = k if code & 0xE0 == 0x00 else mem[k]
        elif cls == 0x02:
            mem[k] = a
        elif cls == 0x03:
            mem[k] = x
        elif cls == 0x04:  # ALU
            op, v = code & 0xF0, (x if code & 0x08 else k)
            a = (a + v if op == 0x00 else a * v if op == 0x20 else a % v) & 0xFFFFFFFF
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            if op == 0x00:
                pc += k
            else:
                pc += jt if (a == k if op == 0x10 else a >= k) else jf
        elif cls == 0x06:  # RET
            return a if code & 0x18 == 0x10 else k
        elif cls == 0x07:
            if code & 0xF8 == 0x80:
                a = x
            else:
                x = a


@pytest.mark.parametrize("scan", steering.SCANS)
def test_the_program_fits_classic_bpf(scan):
    prog = steering.program(4, scan)
    assert len(prog) <= 4096  # BPF_MAXINSNS
    assert all(0 <= jt <= 255 and 0 <= jf <= 255 for _, jt, jf, _ in prog)


@pytest.mark.parametrize(("n", "scan"), [(2, 1024), (3, 1024), (8, 1024), (2, 256), (2, 192)])
def test_the_program_picks_the_owner_of_the_call(n, scan):
    rng = random.Random(n)
    prog = steering.program(n, scan)
    for i in range(300):
        call_id = rng.choice([b"%d-%d@127.0.0.1" % (i, rng.randrange(1 << 16)),
                              b"%032x" % rng.getrandbits(128), b"a%d" % i, b"x",
                              b"node-17.sbc.example.net-%d" % i])
        for line in (b"Call-ID: " + call_id, b"Call-ID:" + call_id):
            # Every offset of the header against the words the program reads.
            body = message(line, vias=rng.randrange(1, 6) if scan > 256 else 1)
            data = b"X" * rng.randrange(8) + body
            assert data.find(b"Call-ID:") < scan
            assert run(prog, data) == call_id_owner(data, n), data
            # The same call's ACK: the owner too, like every message of the call.
            ack = b"ACK sip:" + b"x" * rng.randrange(8) + body[len(b"BYE sip:"):]
            assert run(prog, ack) == call_id_owner(ack, n), ack


def test_call_owner_is_the_hash_the_program_computes():
    """h = h * 31 + byte over the first HASHED bytes, modulo 2**32, as the program's
    loop computes it."""
    rng = random.Random(1)
    for length in (0, 1, 5, steering.HASHED, steering.HASHED + 9):
        value = bytes(rng.randrange(33, 127) for _ in range(length))
        h = 0
        for c in value[:steering.HASHED]:
            h = (h * 31 + c) & 0xFFFFFFFF
        assert steering.call_owner(value, 1 << 31) == h % (1 << 31)


def test_a_long_common_prefix_still_spreads_the_calls():
    """Call-IDs made by one node share their first bytes: 32 are hashed."""
    owners = {call_id_owner(message(b"Call-ID: node-17.sbc.example.net-%06d" % i), 4) for i in range(40)}
    assert owners == {0, 1, 2, 3}


def test_what_the_program_cannot_read_is_left_to_the_kernel_and_the_relay():
    prog = steering.program(2)
    # The compact form: no choice.
    assert run(prog, message(b"i: abc")) == steering.NO_CHOICE
    # A Call-Info header first: no choice, or (where its name crosses the words read so
    # that it does not look like "Call-ID:") the Call-ID after it; never another worker.
    for shift in range(4):
        data = b"X" * shift + message(b"Call-Info: <http://x>\r\nCall-ID: abc")
        assert run(prog, data) in (steering.NO_CHOICE, call_id_owner(data, 2))
    # Past the bytes searched: no choice either.
    assert run(prog, message(b"Call-ID: abc", vias=steering.SCANS[0] // 40 + 1)) == steering.NO_CHOICE
    # "Call" first somewhere else (a Request-URI): the same.
    outcomes = set()
    for shift in range(4):
        data = b"X" * shift + b"INVITE sip:Callcenter@x SIP/2.0\r\n" + message(b"Call-ID: abc")
        outcomes.add(run(prog, data))
        assert run(prog, data) in (steering.NO_CHOICE, call_id_owner(data, 2))
    assert steering.NO_CHOICE in outcomes
    # A keep-alive: nothing to read.
    assert run(prog, b"\r\n\r\n") == steering.NO_CHOICE
    # A datagram that ends within the value: a load past the end, 0 as the kernel returns.
    assert run(prog, b"x" * 4 + b"Call-ID: abc" + b"y" * 16) == 0
    # A short one whose last bytes could not all be read: no choice.
    assert run(prog, b"x" * 40 + b"Call-ID: abc") == steering.NO_CHOICE
    # Two spaces after the colon: the program hashes the second space too, the workers
    # strip it; where they disagree, the relay corrects the kernel's choice.
    data = message(b"Call-ID:  abc")
    assert run(prog, data) == steering.call_owner(b" abc", 2)
    assert call_id_owner(data, 2) == steering.call_owner(b"abc", 2)


def skip_unless_too_big(refused: OSError | None) -> None:
    """A kernel without the feature skips the test; one that refused even the shortest
    program (net.core.optmem_max too low for it) fails it: that is ours to fix."""
    assert refused is not None and refused.errno != errno.ENOMEM, refused
    pytest.skip(f"the kernel does not take SO_ATTACH_REUSEPORT_CBPF here: {refused}")


def test_the_kernel_delivers_each_datagram_to_the_owner_socket():
    n = 3
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", socks[0].getsockname()[1] if socks else 0))
            s.setblocking(False)
            socks.append(s)
        scan, refused = steering.attach(socks[0], n)
        if not scan:
            skip_unless_too_big(refused)
        port = socks[0].getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            seen = [0] * n
            for i in range(150):
                data = message(b"Call-ID: %d-%x@127.0.0.1" % (i, i * 7919))
                if i % 3 == 0:
                    data = b"ACK" + data[3:]  # an ACK goes to the owner too
                tx.sendto(data, ("127.0.0.1", port))
                ready, _, _ = select.select(socks, [], [], 2.0)
                assert ready, "nothing arrived"
                got = socks.index(ready[0])
                assert ready[0].recv(65535) == data
                owner = call_id_owner(data, n)
                assert got == owner
                seen[got] += 1
        assert all(seen), seen  # every worker owns some calls
    finally:
        for s in socks:
            s.close()


def test_shared_sockets_are_bound_in_worker_order_and_steered():
    """The primary's sockets for 3 workers on one address (port 0: the first one's port
    for all): a datagram reaches socket i when its call is worker i's, so worker i must
    get socket i."""
    from gdispatch.config import Listen

    groups, steered, refused = steering.shared_udp_sockets(
        (Listen("tcp", "127.0.0.1", 0), Listen("udp", "127.0.0.1", 0)), 3)
    try:
        assert list(groups) == [1]  # only the UDP address, by its position
        socks = groups[1]
        assert len({s.getsockname() for s in socks}) == 1
        if not steered:
            skip_unless_too_big(refused)
        for s in socks:
            s.setblocking(False)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for i in range(30):
                data = message(b"Call-ID: order-%d" % i)
                tx.sendto(data, socks[0].getsockname())
                ready, _, _ = select.select(socks, [], [], 2.0)
                assert ready and socks.index(ready[0]) == call_id_owner(data, 3)
                ready[0].recv(65535)
    finally:
        for s in (s for group in groups.values() for s in group):
            s.close()
