"""Destinations, sets and the dispatcher list as the running proxy holds them.

A `Destination` is one line of ``dispatcher.list``: set id, URI, Kamailio's state flags,
priority and attrs. A `DispatcherSet` holds the destinations of one set in try order and
the small amount of selection state some algorithms need (round-robin pointer, weight
slots). `DispatcherList` is the whole file, swapped as one object on reload.

Pure data and logic: no sockets, no gevent. Name resolution happens in the shell, which
fills in `Destination.address`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from gdispatch.sip.uri import SipUri

# Kamailio's destination flag bits (dispatcher.list column 3, `dispatcher.set_state`).
FLAG_INACTIVE = 1
FLAG_TRYING = 2
FLAG_DISABLED = 4
FLAG_PROBING = 8
FLAG_NODNSARES = 16
FLAG_NOPING = 32
FLAGS_ALL = 63
# A destination with either bit is skipped by every selection algorithm.
FLAGS_SKIP = FLAG_INACTIVE | FLAG_DISABLED


@dataclass(eq=False)
class Destination:
    """One destination of a set, as loaded from one line of the list file."""

    setid: int
    uri: str
    sip_uri: SipUri
    flags: int = 0
    priority: int = 0
    attrs: str = ""
    attr_map: dict[str, str] = field(default_factory=dict)
    where: str = ""  # "file:line" it came from, for messages
    # (ip, port) to send to, filled in by the shell after name resolution; None while
    # unresolved (such a destination is skipped, with `unusable` saying why).
    address: tuple[str, int] | None = None
    unusable: str = ""

    @property
    def transport(self) -> str:
        return self.sip_uri.transport

    @property
    def weight(self) -> int:
        try:
            w = int(self.attr_map.get("weight", "0"))
        except ValueError:
            return 0
        return w if 1 <= w <= 100 else 0

    @property
    def selectable(self) -> bool:
        return not (self.flags & FLAGS_SKIP) and self.address is not None

    def state_letters(self) -> str:
        """The two-letter FLAGS field of Kamailio's `dispatcher.list`."""
        f = self.flags
        if f & FLAG_INACTIVE:
            first = "I"
        elif f & FLAG_DISABLED:
            first = "D"
        elif f & FLAG_TRYING:
            first = "T"
        else:
            first = "A"
        second = "P" if f & FLAG_PROBING else ("N" if f & FLAG_NOPING else "X")
        return first + second

    def __repr__(self) -> str:
        return f"<Destination {self.setid} {self.uri} {self.state_letters()}>"


class DispatcherSet:
    """The destinations of one set id, in try order, with per-set selection state."""

    __slots__ = ("destinations", "id", "rr_next", "weight_next", "weight_slots")

    def __init__(self, setid: int, destinations: list[Destination]):
        self.id = setid
        self.destinations = destinations
        self.rr_next = 0
        self.weight_slots: list[int] = []
        self.weight_next = 0
        self.build_weight_slots()

    def build_weight_slots(self, rng: random.Random | None = None) -> None:
        """Algorithm 9's 100 slots, as Kamailio fills them: each destination gets
        `weight` slots in list order, a short total is padded with the last destination,
        a long one truncated; the slots are shuffled once and consumed cyclically, so any
        100 consecutive calls split exactly by weight."""
        dests = self.destinations
        if not dests or dests[0].weight == 0:
            self.weight_slots = []
            return
        slots: list[int] = []
        for i, d in enumerate(dests):
            slots.extend([i] * d.weight)
        slots = slots[:100]
        slots.extend([len(dests) - 1] * (100 - len(slots)))
        (rng or random).shuffle(slots)
        self.weight_slots = slots
        self.weight_next = 0


class DispatcherList:
    """All sets of one loaded list file. Replaced as a whole on reload."""

    __slots__ = ("sets", "source")

    def __init__(self, sets: dict[int, DispatcherSet], source: str = ""):
        self.sets = sets
        self.source = source

    def get(self, setid: int) -> DispatcherSet | None:
        return self.sets.get(setid)

    def destinations(self):
        for s in self.sets.values():
            yield from s.destinations
