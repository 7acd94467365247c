"""The hash of the hash-based algorithms is Kamailio's, bit for bit.

tests/data/kamailio-hash-vectors.tsv holds what Kamailio 5.6's `dispatcher.hash NSLOTS
KEY1 [KEY2]` printed. Rows whose hash is "None" are keys the command line tool sent as
integers rather than strings; they say nothing about string hashing and are skipped.
"""

from pathlib import Path

import pytest

from gdispatch.dispatcher.hashing import as_signed, kamailio_hash

VECTORS = Path(__file__).parent.parent / "data" / "kamailio-hash-vectors.tsv"


def _rows():
    for line in VECTORS.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        nslots, key1, key2, hashid, slot = line.split("\t")
        if hashid == "None":
            continue
        yield int(nslots), key1, key2, int(hashid), int(slot)


ROWS = list(_rows())


def test_vectors_file_is_not_empty():
    assert len(ROWS) > 150


@pytest.mark.parametrize("nslots,key1,key2,hashid,slot", ROWS)
def test_matches_kamailio(nslots, key1, key2, hashid, slot):
    h = kamailio_hash(key1.encode(), key2.encode())
    assert as_signed(h) == hashid
    assert h % nslots == slot


def test_signed_chars_matter():
    # A byte >= 0x80 is a negative C char: the hash differs from an unsigned reading.
    assert kamailio_hash("é".encode()) != kamailio_hash(b"\x00\xa9")
