"""Kamailio-compatible hashing for the hash-based selection algorithms.

Destinations chosen by hash must match the ones a Kamailio it replaces would choose, so
that sticky routing survives the migration. The function below reproduces the behaviour
of Kamailio's dispatcher hash bit for bit (checked against vectors printed by Kamailio's
own ``dispatcher.hash`` command, see tests/unit/test_dispatcher_hashing.py): 4-byte
big-endian chunks of *signed* chars, ``h += v ^ (v >> 3)``, a tail step that runs even
for an empty tail, a final avalanche, and 0 mapped to 1, all in unsigned 32-bit.
"""

from __future__ import annotations

_MASK = 0xFFFFFFFF
# Bytes are C chars, signed on the platforms Kamailio is built for (x86 gcc).
_SIGNED = tuple(b - 256 if b > 127 else b for b in range(256))


def _accumulate(h: int, data: bytes) -> int:
    s = _SIGNED
    whole = len(data) & ~3
    for i in range(0, whole, 4):
        v = ((s[data[i]] << 24) + (s[data[i + 1]] << 16) + (s[data[i + 2]] << 8) + s[data[i + 3]]) & _MASK
        h = (h + (v ^ (v >> 3))) & _MASK
    v = 0
    for b in data[whole:]:
        v = ((v << 8) + s[b]) & _MASK
    return (h + (v ^ (v >> 3))) & _MASK


def kamailio_hash(key1: bytes, key2: bytes = b"") -> int:
    """The unsigned 32-bit hash of one or two keys (key2: the host part of a URI)."""
    h = _accumulate(0, key1)
    if key2:
        h = _accumulate(h, key2)
    h = ((h + (h >> 11)) + ((h >> 13) + (h >> 23))) & _MASK
    return h or 1


def as_signed(h: int) -> int:
    """The hash as Kamailio prints it (a signed 32-bit integer)."""
    return h - (1 << 32) if h & 0x80000000 else h
