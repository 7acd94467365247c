"""Which worker a datagram belongs to, decided by the kernel as it arrives: the BPF
program of the SO_REUSEPORT group, and the group's sockets (`shared_udp_sockets`).

With several workers (gdispatch.cluster) every worker has a UDP socket on the shared SIP
address, all in one SO_REUSEPORT group. Left alone, the kernel picks the socket by a hash
of the sender's address, so one trunk's datagrams all reach one worker, which hands half
of them (those of calls it does not own) to the owner over the relay: one more process
to wake on the way of every such message, which on an idle box is most of the latency a
worker adds.

Linux lets a classic BPF program choose the socket instead (SO_ATTACH_REUSEPORT_CBPF,
Linux 4.5): it sees the UDP payload and returns the index of the socket in the group,
the order the sockets were bound in. `program(n)` finds the Call-ID header and returns
`call_owner()` of its value, the same function the workers use, so the datagrams of a
call go straight to the worker that owns it; the relay is left for what the program
cannot read (see `program`). The primary binds the n sockets in worker order and hands
socket i to worker i (`shared_udp_sockets`).

Classic BPF has no loops and at most 4,096 instructions, so the program is unrolled: the
first bytes of the payload are read a word at a time and each word compared with the
four ways "Call-ID:" can cross it, then the name is checked whole and up to `HASHED`
bytes of the value are hashed. The kernel runs it translated, each load grown to a dozen
instructions, and refuses a program larger than `net.core.optmem_max` (20 KB before
Linux 6.8, 128 KB since): `attach` offers the kernel the longest search of `SCANS` it
takes.
"""

from __future__ import annotations

import errno
import operator
import socket

from gdispatch.bpf import (
    ABS,
    ADD,
    ALU,
    IMM,
    IND,
    JA,
    JEQ,
    JGE,
    JMP,
    LD,
    LDX,
    LEN,
    MEM,
    MISC,
    MOD,
    MUL,
    RET,
    RET_A,
    ST,
    STX,
    TAX,
    TXA,
    B,
    K,
    W,
    X,
    setsockopt_program,
)
from gdispatch.config import Listen
from gdispatch.net import TransportError, udp_socket

SO_ATTACH_REUSEPORT_CBPF = 51  # Linux, include/uapi/asm-generic/socket.h
SCANS = (1024, 512, 384, 256, 192, 128)  # payload bytes searched for "Call-ID:", longest first
HASHED = 32  # bytes of the Call-ID value the owner is computed from
NO_CHOICE = 0xFFFFFFFF  # an index past the group: the kernel falls back to its hash

_GROUP = 8  # words searched after one check of the datagram's length
_NAME = b"Call-ID:"
# The word read at an offset 4k that starts d bytes into "Call-ID:", for d = 3, 2, 1, 0:
# an occurrence starting at s is seen in the first word at or after s.
_CROSSINGS = [(d, int.from_bytes(_NAME[d:d + 4], "big")) for d in (3, 2, 1, 0)]


# 31 ** (length - 1 - i) mod 2**32 for each length: the hash below as one sum of products.
_POWERS = [[pow(31, length - 1 - i, 1 << 32) for i in range(length)] for length in range(HASHED + 1)]


def call_owner(call_id: bytes, n: int) -> int:
    """The worker (0..n-1) that owns the call called `call_id` (the header's value,
    stripped): a multiply-by-31 hash of its first HASHED bytes (h = h * 31 + byte, modulo
    2**32), which `program()` computes in the kernel the same way."""
    head = call_id[:HASHED]
    return (sum(map(operator.mul, head, _POWERS[len(head)])) & 0xFFFFFFFF) % n


def program(n: int, scan: int = SCANS[0]) -> list[tuple[int, int, int, int]]:
    """The steering program for a group of `n` sockets, as (code, jt, jf, k) tuples.

    It returns the `call_owner()` of the value of the first "Call-ID:"
    that starts in the first `scan` bytes, read as the value after one optional space up
    to the CR that ends it. It returns NO_CHOICE (the kernel's own hash) when there is
    none there, when the first "Call" there is not "Call-ID:" (a compact "i:" form, a
    Call-Info header first), or in the last bytes of a short datagram; and 0 when the
    datagram ends within the value's first bytes (a load past the end: the kernel's rule
    for classic BPF). Either way the worker that gets the datagram relays it where it
    belongs (gdispatch.cluster.relay: `Relay.steer`), as without the program.
    """
    prog: list = []
    jumps: list[int] = []  # positions of the jumps to `found`, filled in below
    words = scan // 4
    for w in range(words):
        pos = 4 * w
        if w % _GROUP == 0:
            # A load past the end would end the program with 0 (worker 0 for every short
            # datagram): the next words are read only if they are there.
            last = 4 * (min(w + _GROUP, words) - 1)
            prog += [(LD | W | LEN, 0, 0, 0), (JMP | JGE | K, 1, 0, last + 4), (RET | K, 0, 0, NO_CHOICE)]
        prog.append((LD | W | ABS, 0, 0, pos))
        starts = [(word, pos - d) for d, word in _CROSSINGS if pos - d >= 0]
        m = len(starts)
        # Compare with each crossing (the earliest start first); a match jumps to its
        # stub below, which sets X to where the name would start.
        prog += [(JMP | JEQ | K, m + i, 0, word) for i, (word, _start) in enumerate(starts)]
        prog.append((JMP | JA, 0, 0, 2 * m))
        for _word, start in starts:
            prog.append((LDX | W | IMM, 0, 0, start))
            jumps.append(len(prog))
            prog.append(None)
    prog.append((RET | K, 0, 0, NO_CHOICE))
    found = len(prog)
    for j in jumps:
        prog[j] = (JMP | JA, 0, 0, found - j - 1)
    # X = where the name would start: the whole name, then one optional space.
    prog += [(LD | W | IND, 0, 0, 0), (JMP | JEQ | K, 1, 0, int.from_bytes(_NAME[:4], "big")),
             (RET | K, 0, 0, NO_CHOICE),
             (LD | W | IND, 0, 0, 4), (JMP | JEQ | K, 1, 0, int.from_bytes(_NAME[4:], "big")),
             (RET | K, 0, 0, NO_CHOICE),
             (LD | B | IND, 0, 0, 8), (JMP | JEQ | K, 0, 3, 0x20),
             (MISC | TXA, 0, 0, 0), (ALU | ADD | K, 0, 0, 1), (MISC | TAX, 0, 0, 0),
             (STX, 0, 0, 2),  # M[2] = X (the loads below go through X; the hash needs it)
             (LD | IMM, 0, 0, 0), (ST, 0, 0, 0)]  # M[0] = hash
    ends: list[int] = []
    for b in range(HASHED):
        prog += [(LDX | W | MEM, 0, 0, 2), (LD | B | IND, 0, 0, 8 + b)]
        ends.append(len(prog))
        prog.append(None)  # CR: the value ended
        prog += [(MISC | TAX, 0, 0, 0), (LD | MEM, 0, 0, 0), (ALU | MUL | K, 0, 0, 31),
                 (ALU | ADD | X, 0, 0, 0), (ST, 0, 0, 0)]
    done = len(prog)
    for j in ends:
        prog[j] = (JMP | JEQ | K, done - j - 1, 0, 0x0D)
    prog += [(LD | MEM, 0, 0, 0), (ALU | MOD | K, 0, 0, n), (RET | RET_A, 0, 0, 0)]
    assert len(prog) <= 4096 and all(jt <= 255 and jf <= 255 for _c, jt, jf, _k in prog)
    return prog


def attach(sock: socket.socket, n: int) -> tuple[int, OSError | None]:
    """Give the SO_REUSEPORT group of `sock` the steering program for `n` sockets, with
    the longest search of SCANS the kernel takes. Returns (the bytes searched, None), or
    (0, the kernel's last refusal) when it takes none (not Linux, older than 4.5, or
    `net.core.optmem_max` below even the shortest)."""
    error: OSError | None = None
    for scan in SCANS:
        try:
            setsockopt_program(sock, SO_ATTACH_REUSEPORT_CBPF, program(n, scan))
        except OSError as e:
            error = e
            if e.errno != errno.ENOMEM:
                break  # not a matter of size
            continue
        return scan, None
    return 0, error


def shared_udp_sockets(listens: tuple[Listen, ...], n: int
                       ) -> tuple[dict[int, list[socket.socket]], int, OSError | None]:
    """For n workers: for each UDP listen address (by its position in `listens`), n
    sockets in one SO_REUSEPORT group, bound in worker order so that the kernel's index
    of socket i in the group is i, and the group steered by Call-ID (`attach`).
    Returns the sockets, the bytes the kernel searches for the Call-ID (the least over
    the groups; 0 when a group is not steered) and the kernel's refusal if there was one.
    Raises TransportError when an address cannot be bound."""
    out: dict[int, list[socket.socket]] = {}
    scan = SCANS[0]
    refused: OSError | None = None
    try:
        for i, listen in enumerate(listens):
            if listen.transport != "udp":
                continue
            socks = out[i] = [udp_socket(listen, reuseport=True)]
            if listen.port == 0:
                listen = Listen(listen.transport, listen.host, socks[0].getsockname()[1])
            # The program goes on the group before the other sockets join it: a datagram
            # arriving meanwhile lands in socket 0 (an index past the group falls back to
            # the kernel's hash), whose worker relays it, never unsteered in another's.
            searched, error = attach(socks[0], n)
            scan = min(scan, searched)
            refused = refused or error
            socks.extend(udp_socket(listen, reuseport=True) for _ in range(n - 1))
    except OSError as e:
        for socks in out.values():
            for sock in socks:
                sock.close()
        raise TransportError(e.errno, f"cannot listen on {listen}: {e.strerror}") from None
    return out, scan, refused
