"""The notes of the INVITE transactions whose ACK must come back to their worker
(gdispatch.acknotes): what one worker writes the others read, for as long as the
transaction can absorb the ACK, in a bounded table."""

from __future__ import annotations

import mmap
import os

from gdispatch import acknotes
from gdispatch.acknotes import BUCKETS, WAYS, AckNotes


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def views(n: int, clock: Clock, buf=None) -> list[AckNotes]:
    buf = bytearray(n * acknotes.TABLE_BYTES) if buf is None else buf
    return [AckNotes(buf, i, n, 37.0, clock) for i in range(n)]


def key(i: int, method: str = "INVITE") -> tuple:
    return (f"z9hG4bK-{i}", "127.0.0.1", 5060 + i % 7, method)


def bucket(k: tuple) -> int:
    return (acknotes.digest(k) >> 32) % BUCKETS


def test_a_note_is_read_by_the_other_workers_until_it_expires():
    clock = Clock()
    w0, w1, w2 = views(3, clock)
    w1.note(key(1))
    assert w0.noted_by(key(1)) == 1 and w2.noted_by(key(1)) == 1
    assert w1.noted_by(key(1)) is None  # a worker's own transactions are in its own table
    # The ACK's key names the INVITE as the transaction's does (RFC 3261 §17.2.3).
    assert w0.noted_by(key(1, "INVITE")) == 1
    assert w0.noted_by(key(2)) is None
    clock.t += 36.9
    assert w0.noted_by(key(1)) == 1
    clock.t += 0.2
    assert w0.noted_by(key(1)) is None


def test_a_resent_final_renews_its_note_in_place():
    clock = Clock()
    w0, w1 = views(2, clock)
    for _ in range(3):
        w0.note(key(5))
        clock.t += 20
    assert w1.noted_by(key(5)) == 0  # 40 s after the first note, 20 after the last
    # One slot for it, not three: the bucket still takes WAYS - 1 others.
    same_bucket = [k for k in (key(i) for i in range(200000))
                   if bucket(k) == bucket(key(5)) and k != key(5)]
    for k in same_bucket[:WAYS - 1]:
        w0.note(k)
    assert w0.evicted == 0 and w1.noted_by(key(5)) == 0


def test_a_full_bucket_gives_up_the_note_that_expires_first():
    clock = Clock()
    w0, w1 = views(2, clock)
    target = bucket(key(0))
    same = [k for k in (key(i) for i in range(400000)) if bucket(k) == target][:WAYS + 2]
    assert len(same) == WAYS + 2
    for k in same[:WAYS]:
        w0.note(k)
        clock.t += 1
    assert w0.evicted == 0 and all(w1.noted_by(k) == 0 for k in same[:WAYS])
    w0.note(same[WAYS])  # the bucket is full of live notes
    assert w0.evicted == 1
    assert w1.noted_by(same[0]) is None and all(w1.noted_by(k) == 0 for k in same[1:WAYS + 1])
    clock.t += 40  # all expired: the next one takes a slot without evicting
    w0.note(same[WAYS + 1])
    assert w0.evicted == 1 and w1.noted_by(same[WAYS + 1]) == 0


def test_the_digest_is_the_same_in_every_process():
    """Python's hash of a string changes with each process; the digest must not."""
    import subprocess
    import sys

    code = "from gdispatch import acknotes; print(acknotes.digest(('z9hG4bKx', '10.0.0.1', 5060, 'INVITE')))"
    out = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert out == {f"{acknotes.digest(('z9hG4bKx', '10.0.0.1', 5060, 'INVITE'))}\n"}


def test_the_shared_memory_is_seen_by_every_mapping():
    """The primary's descriptor, mapped twice as two processes map it."""
    fd = acknotes.shared_memory(2)
    try:
        maps = [acknotes.map_memory(fd, 2) for _ in range(2)]
        clock = Clock()
        a = AckNotes(maps[0], 0, 2, 37.0, clock)
        b = AckNotes(maps[1], 1, 2, 37.0, clock)
        assert b.noted_by(key(9)) is None  # zeroed
        a.note(key(9))
        assert b.noted_by(key(9)) == 0
        assert all(isinstance(m, mmap.mmap) for m in maps)
        for m in maps:
            m.close()
    finally:
        os.close(fd)
