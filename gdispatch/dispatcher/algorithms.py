"""Kamailio's destination selection algorithms, by their numbers.

`select(dset, algorithm, msg)` returns the destinations of a set in the order the proxy
tries them: the chosen one first, then the failover list. As in Kamailio, the failover
list continues from the chosen index to the end of the set and wraps to the start,
skipping destinations that are inactive or disabled (reference: `ds_manage_routes`).

Pure logic over `DispatcherSet`; the message is only read (Call-ID for hashing).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

from gdispatch.dispatcher.destination import Destination, DispatcherSet
from gdispatch.dispatcher.hashing import kamailio_hash


class HasCallId(Protocol):
    call_id: bytes


ALG_HASH_CALLID = 0
ALG_ROUND_ROBIN = 4
ALG_RANDOM = 6
ALG_PRIORITY = 8
ALG_WEIGHT = 9


def _hash_callid(dset: DispatcherSet, msg: HasCallId) -> int:
    return kamailio_hash(msg.call_id.strip()) % len(dset.destinations)


def _round_robin(dset: DispatcherSet, msg: HasCallId) -> int:
    return dset.rr_next % len(dset.destinations)


def _random(dset: DispatcherSet, msg: HasCallId) -> int:
    return random.randrange(len(dset.destinations))


def _priority(dset: DispatcherSet, msg: HasCallId) -> int:
    return 0


def _weight(dset: DispatcherSet, msg: HasCallId) -> int:
    slots = dset.weight_slots
    if not slots:
        return 0
    i = dset.weight_next
    dset.weight_next = (i + 1) % len(slots)
    return slots[i]


_FIRST_INDEX: dict[int, Callable[[DispatcherSet, HasCallId], int]] = {
    ALG_HASH_CALLID: _hash_callid,
    ALG_ROUND_ROBIN: _round_robin,
    ALG_RANDOM: _random,
    ALG_PRIORITY: _priority,
    ALG_WEIGHT: _weight,
}

SUPPORTED = frozenset(_FIRST_INDEX)


def select(dset: DispatcherSet, algorithm: int, msg: HasCallId, limit: int = 0) -> list[Destination]:
    """Destinations to try, in order; empty when none is selectable.

    The first index comes from the algorithm; an unselectable destination there is
    skipped by probing forward (Kamailio's behaviour), which also gives the failover order.
    `limit` > 0 caps the number returned.
    """
    dests = dset.destinations
    n = len(dests)
    if n == 0:
        return []
    first = _FIRST_INDEX[algorithm](dset, msg)
    out: list[Destination] = []
    for k in range(n):
        d = dests[(first + k) % n]
        if d.selectable:
            out.append(d)
            if limit and len(out) >= limit:
                break
    if algorithm == ALG_ROUND_ROBIN and out:
        # The pointer moves past the destination actually chosen.
        dset.rr_next = dests.index(out[0]) + 1
    return out
