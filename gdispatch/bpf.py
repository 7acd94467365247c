"""Classic BPF, as the Linux socket options take it: the opcodes, and handing a program
to the kernel. The programs themselves live with what they decide: which worker a
datagram goes to (gdispatch.cluster.steering), which datagrams are dropped before the proxy
reads them (gdispatch.sockfilter)."""

from __future__ import annotations

import ctypes
import socket
import struct

# Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
LD, LDX, ST, STX, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, LEN = 0x00, 0x20, 0x40, 0x60, 0x80
JA, JEQ, JGT, JGE = 0x00, 0x10, 0x20, 0x30
K, X = 0x00, 0x08
ADD, MUL, MOD = 0x00, 0x20, 0x90
TAX, TXA = 0x00, 0x80
RET_A = 0x10
INSN = struct.Struct("HBBI")  # struct sock_filter: code, jt, jf, k
# Loads at this offset and above read the network (IP) header (linux/filter.h SKF_NET_OFF).
SKF_NET_OFF = (-0x100000) & 0xFFFFFFFF

Program = list  # of (code, jt, jf, k) tuples


def setsockopt_program(sock: socket.socket, option: int, prog: Program) -> None:
    """Give `prog` to the kernel with SOL_SOCKET `option` (SO_ATTACH_FILTER,
    SO_ATTACH_REUSEPORT_CBPF). Raises OSError when the kernel refuses it."""
    code = b"".join(INSN.pack(*insn) for insn in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HP", len(prog), ctypes.addressof(buf))  # struct sock_fprog
    # The kernel copies the program before setsockopt returns: `buf` may go.
    sock.setsockopt(socket.SOL_SOCKET, option, fprog)
