"""What the kernel drops before the proxy reads it: datagrams that cannot be SIP, and
datagrams from the sources gdispatch.flood has banned.

A flood of junk costs the proxy a wake-up, a read and a failed parse per datagram, and
what it fills of the socket's buffer is lost to the calls. A classic BPF program given
to each UDP socket (SO_ATTACH_FILTER, Linux 2.2) drops it in the kernel, in the context
of the sender's own send on a loopback or of the network's softirq otherwise, before it
is queued. The rule is the shape every SIP message over UDP has: a request starts with
its method, a response with ``SIP/2.0`` (RFC 3261 §7.1, §7.2), so the first three bytes
are capital letters (methods are tokens; every one in use is in capitals and has three
letters or more); a keep-alive starts with CR or LF (RFC 5626 §3.5.1), and so may a
message (RFC 3261 §7.5). Random bytes pass about once in a hundred, nearly all of them
for a first byte that is CR or LF; a new method passes.

Banned sources come first: each is one comparison of the IP header's source address
(two instructions for IPv4, four loads for IPv6). The program is built again and
attached in place of the old one when the list of bans changes.

For a UDP socket the program sees the UDP header first: the payload starts at offset 8;
`SKF_NET_OFF` reaches the IP header.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from gdispatch.bpf import ABS, JEQ, JGE, JGT, JMP, LD, RET, SKF_NET_OFF, B, K, Program, W, setsockopt_program

SO_ATTACH_FILTER = 26  # Linux, include/uapi/asm-generic/socket.h
PAYLOAD = 8  # the UDP header's length
ACCEPT = 0xFFFFFFFF  # the whole datagram
DROP = 0
MAX_BANS = 512  # bans past this are kept out by the proxy itself (gdispatch.flood)
_IPV4_SOURCE = 12  # offset of the source address in the IPv4 header
_IPV6_SOURCE = 8


def program(v6: bool, banned: Sequence[str] = ()) -> Program:
    """The filter for a socket of the family `v6` says, with the sources `banned`
    (addresses of that family; others are skipped)."""
    # Jumps are written first with a label as their target, then resolved: a classic
    # BPF jump counts the instructions it skips.
    code: list[tuple[Any, ...]] = []
    for text in banned[:MAX_BANS]:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if (ip.version == 6) != v6:
            continue
        base = _IPV6_SOURCE if v6 else _IPV4_SOURCE
        words = [int.from_bytes(ip.packed[i:i + 4], "big") for i in range(0, len(ip.packed), 4)]
        next_source = f"after {text}"
        for i, word in enumerate(words):
            code.append((LD | W | ABS, 0, 0, (SKF_NET_OFF + base + 4 * i) & 0xFFFFFFFF))
            last = i == len(words) - 1
            code.append((JMP | JEQ | K, "drop" if last else 0, 0 if last else next_source, word))
        code.append(("label", next_source, 0, 0))
    # The payload: CR or LF (a keep-alive), or three capital letters.
    code += [(LD | B | ABS, 0, 0, PAYLOAD), (JMP | JEQ | K, "accept", 0, 0x0D), (JMP | JEQ | K, "accept", 0, 0x0A)]
    for i in range(3):
        if i:
            code.append((LD | B | ABS, 0, 0, PAYLOAD + i))
        code += [(JMP | JGE | K, 0, "drop", ord("A")), (JMP | JGT | K, "drop", 0, ord("Z"))]
    code += [("label", "accept", 0, 0), (RET | K, 0, 0, ACCEPT), ("label", "drop", 0, 0), (RET | K, 0, 0, DROP)]
    return _resolve(code)


def _resolve(code: list) -> Program:
    """The program with its labels taken out and each jump's label turned into the
    number of instructions it skips."""
    at: dict[object, int] = {}
    prog: list = []
    for insn in code:
        if insn[0] == "label":
            at[insn[1]] = len(prog)
        else:
            prog.append(insn)
    out: Program = []
    for pc, (op, jt, jf, k) in enumerate(prog):
        jt = at[jt] - pc - 1 if isinstance(jt, str) else jt
        jf = at[jf] - pc - 1 if isinstance(jf, str) else jf
        assert 0 <= jt <= 255 and 0 <= jf <= 255
        out.append((op, jt, jf, k))
    return out


def attach(sock: socket.socket, v6: bool, banned: Sequence[str] = ()) -> OSError | None:
    """Give `sock` the filter, replacing the one it had; the kernel's refusal, if any
    (not Linux: the proxy then reads everything, and drops junk as it parses)."""
    try:
        setsockopt_program(sock, SO_ATTACH_FILTER, program(v6, banned))
    except OSError as e:
        return e
    return None
