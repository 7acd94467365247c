"""The INVITE transactions whose ACK must reach the worker that answered them.

With several workers an ACK goes to the worker after the owner of its call
(gdispatch.steering: `worker_for`). For the ACK of a 2xx that is right: it is a request
of its own, which any worker forwards statelessly (RFC 3261 §16.11). The ACK of a non-2xx
final is not: it belongs to the INVITE's server transaction (§17.1.1.3, §17.2.1), which
only the owner holds, and without it the owner resends its final until Timer H. When that
INVITE had no Route, the worker that gets its ACK knows at once: the ACK is not for a
dialog we record-routed, so it hands it to the owner of the call (unless its To tag says
the final was sent without a transaction, past capacity: then there is nothing to end,
gdispatch.proxy: STATELESS_TAG). When the INVITE had a
Route (a re-INVITE refused with 488 or 491, an INVITE with a preloaded Route), its ACK
carries that Route and reads like the ACK of a 2xx.

So before it sends a non-2xx final to an INVITE that had a Route, the owner notes the
transaction's key here, and a worker that gets an ACK it has no transaction for looks
for its key in the other workers' notes and hands it to the one that noted it. The note
is written before the final leaves, so it is there before the ACK can be sent.

One table per worker, written only by it and read by all, in memory the processes share
(`shared_memory`: the primary makes it, every worker maps it). A table is BUCKETS
buckets of WAYS slots; a slot holds a 64-bit digest of a key and when the note expires
(CLOCK_MONOTONIC, one clock for every process): Timer H and Timer I after it was written,
as long as the transaction can absorb the ACK. A bucket full of live notes gives up the
one that expires first (`evicted` counts them): its ACK would then be forwarded like the
ACK of a 2xx. At 16,384 buckets of 4 that takes some 1,700 such finals per second and
worker, sustained. Two keys with one digest only cost a hop: the ACK goes to the worker
that noted the other key, which has no transaction for it and forwards it.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Callable

BUCKETS = 16384
WAYS = 4
_SLOT = struct.Struct("<Qd")  # digest (0: free), expiry
_BUCKET = struct.Struct("<" + "Qd" * WAYS)
_DIGEST = struct.Struct("<Q")
_EXPIRY = struct.Struct("<d")
TABLE_BYTES = BUCKETS * _BUCKET.size


def shared_memory(n: int) -> int:
    """A file descriptor of zeroed memory for the tables of `n` workers, for the primary
    to map and its workers to inherit: a memfd on Linux, an unlinked temporary file
    elsewhere."""
    size = n * TABLE_BYTES
    try:
        fd = os.memfd_create("gdispatch-acknotes", 0)
    except (AttributeError, OSError):
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, size)
    return fd


def map_memory(fd: int, n: int) -> mmap.mmap:
    """The tables of `n` workers, mapped shared from `shared_memory()`'s descriptor."""
    return mmap.mmap(fd, n * TABLE_BYTES)


def digest(key: tuple) -> int:
    """The 64 bits a slot keeps of a server transaction's key: its first three fields,
    which the ACK shares with its INVITE (RFC 3261 §17.2.3: the branch, the sent-by host
    and port; for an RFC 2543 peer the Call-ID and the CSeq number). The same in every
    process (Python's own hash of a string is not). The CRC, in the high half, picks the
    bucket: the Adler sum's low bits barely change between branches made alike."""
    data = ("%s %s %s" % key[:3]).encode()
    return (zlib.crc32(data) << 32 | zlib.adler32(data)) or 1


def _bucket(d: int) -> int:
    return (d >> 32) % BUCKETS * _BUCKET.size


class AckNotes:
    """Worker `index`'s view of the `n` tables in `buf` (`map_memory`, or a bytearray in
    tests)."""

    def __init__(self, buf, index: int, n: int, lifetime: float, clock: Callable[[], float] = time.monotonic):
        self.buf = buf
        self.index = index
        self.n = n
        self.lifetime = lifetime  # Timer H + Timer I
        self.clock = clock
        self.evicted = 0

    def note(self, key: tuple) -> None:
        """Our INVITE transaction `key` is about to send a non-2xx final."""
        d = digest(key)
        base = self.index * TABLE_BYTES + _bucket(d)
        now = self.clock()
        slots = _BUCKET.unpack_from(self.buf, base)
        free = oldest = -1
        for way in range(WAYS):
            sd, expires = slots[2 * way], slots[2 * way + 1]
            if sd == d:
                free = way  # a retransmitted final: the same note again
                break
            if free < 0 and (sd == 0 or expires <= now):
                free = way
            if oldest < 0 or expires < slots[2 * oldest + 1]:
                oldest = way
        if free < 0:
            free = oldest
            self.evicted += 1
        off = base + free * _SLOT.size
        # The expiry first, then the digest: a reader never sees our digest with the
        # expiry of the note it replaces.
        _EXPIRY.pack_into(self.buf, off + 8, now + self.lifetime)
        _DIGEST.pack_into(self.buf, off, d)

    def noted_by(self, key: tuple) -> int | None:
        """The other worker that noted transaction `key` and has not seen its note
        expire, if one did."""
        d = digest(key)
        offset = _bucket(d)
        now = self.clock()
        for worker in range(self.n):
            if worker == self.index:
                continue
            slots = _BUCKET.unpack_from(self.buf, worker * TABLE_BYTES + offset)
            for way in range(0, 2 * WAYS, 2):
                if slots[way] == d and slots[way + 1] > now:
                    return worker
        return None
