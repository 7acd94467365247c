"""Destinations, sets and the dispatcher list as the running proxy holds them.

A `Destination` is one line of ``dispatcher.list``: set id, URI, Kamailio's state flags,
priority, attrs and an optional description, plus the runtime state the proxy keeps on it
(resolved address, call load, latency estimate). A `DispatcherSet` holds the destinations
of one set in try order and the per-set state the selection algorithms need.
`DispatcherList` is the whole file, swapped as one object on reload.

State changes and the set's tables: the selectable destinations of a set (and the slot
tables built from them, see algorithms.py) are computed once and reused by every
selection. Assigning `Destination.flags` or `Destination.address` marks the owning set
stale, and the next selection recomputes them, so nothing can select from an outdated
table; the prober and RPC may also call `DispatcherSet.state_changed()` directly.

Pure data and logic: no sockets, no gevent. Name resolution happens in the shell, which
fills in `Destination.address`. Parsing the file lives in listfile.py.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from gdispatch.net.tls import TlsPeer
from gdispatch.sip.uri import SipUri

if TYPE_CHECKING:  # probing.policy imports this module
    from gdispatch.config import Listen
    from gdispatch.probing.policy import ProbeState

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
# The state bits `dispatcher.set_state` writes; 16 (no DNS) and 32 (no ping) are configuration.
FLAGS_STATE = FLAG_INACTIVE | FLAG_TRYING | FLAG_DISABLED | FLAG_PROBING


def split_attrs(token: str) -> list[tuple[str, str]]:
    """``a=1;B="x";flag`` → [("a", "1"), ("b", "x"), ("flag", "")].

    Kamailio reads attrs with its SIP-parameter parser: names are case-insensitive (given
    here lowercased), a value may be a quoted string (given without its quotes), empty
    parts (``;;``, a trailing ``;``) are skipped. Raises ValueError for an unterminated
    quoted string, the one thing that parser refuses.
    """
    out: list[tuple[str, str]] = []
    i, n = 0, len(token)
    while i < n:
        j = i
        while j < n and token[j] not in ';="':
            j += 1
        name = token[i:j].strip().lower()
        value = ""
        if j < n and token[j] == "=":
            j += 1
            if j < n and token[j] == '"':
                close = j + 1
                while close < n and token[close] != '"':
                    close += 2 if token[close] == "\\" else 1
                if close >= n:
                    raise ValueError(f"unterminated quoted value in attrs {token!r}")
                value = token[j + 1 : close]
                j = close + 1
                while j < n and token[j] != ";":
                    j += 1
            else:
                k = j
                while j < n and token[j] != ";":
                    j += 1
                value = token[k:j].strip()
        elif j < n and token[j] == '"':
            raise ValueError(f"quote inside an attr name in attrs {token!r}")
        if name or value:
            out.append((name, value))
        i = j + 1
    return out


def parse_attrs(token: str) -> dict[str, str]:
    """``a=1;B=two;flag`` → {"a": "1", "b": "two", "flag": ""} (names lowercased; the last
    of a repeated name wins)."""
    return dict(split_attrs(token))


def _int_attr(value: str | None, low: int, high: int | None) -> int:
    """The attr as an int when it is digits within [low, high], else 0 (Kamailio's
    reading of a missing or unusable number; listfile.py reports those as errors)."""
    if not value or not value.isdigit():
        return 0
    v = int(value)
    if v < low or (high is not None and v > high):
        return 0
    return v


def state_letters(flags: int, usable: bool = True) -> str:
    """Kamailio's two letters for a flags value: inactive wins over disabled, which wins
    over trying, else active; then P probing, N no-ping, or X.

    A destination that is not `usable` (no address to send to: its name does not
    resolve, or no listen address can reach it) shows as inactive and not probed (``IX``,
    ``IN``), unless the operator disabled it (``DX``): it gets no call and no ping, as
    Kamailio's ``IX`` means. Kamailio has no such state: it leaves the line out of the
    list (``unable to add destination ... -- skipping``).
    """
    if not usable and not flags & FLAG_DISABLED:
        flags = (flags | FLAG_INACTIVE) & ~FLAG_PROBING
    if flags & FLAG_INACTIVE:
        first = "I"
    elif flags & FLAG_DISABLED:
        first = "D"
    elif flags & FLAG_TRYING:
        first = "T"
    else:
        first = "A"
    return first + ("P" if flags & FLAG_PROBING else ("N" if flags & FLAG_NOPING else "X"))


class Destination:
    """One destination of a set, as loaded from one line of the list file.

    From the file: `setid`, `uri` (with ``sip:`` added when the file omitted it),
    `sip_uri` (parsed), `flags`, `priority`, `attrs` (the attrs token verbatim, for
    plugins and ``dispatcher.list``), `attr_map` (name → value, names lowercased),
    `description` (the ``# ...`` text after the columns), `where` ("file:line").

    Typed attrs, read once from `attr_map` at construction: `duid`, `weight` (alg 9/15,
    1..100, 0 = none), `rweight` (alg 11, 1..100, 0 = none), `maxload` (alg 10, 0 =
    unlimited), `socket`, `cc`.

    The sockets it is sent from (gdispatch.dispatcher.sockets), set when the list is
    read against the listen addresses: `send_socket` (its `sockname` or `socket` attr)
    and `ping_socket` (`ping_socket`, else `send_socket`); None: the default applies.

    Runtime state: `flags` (the prober and RPC change it), `address` (set by the shell
    after name resolution; None = unusable, with `unusable` saying why), `load` (active
    calls, maintained by the proxy for alg 10), `latency_est_ms` (probing latency
    estimate for alg 13; None until measured, or seeded by the ``latency`` attr).
    `file_flags` keeps the flags as the file gave them, for writing the line back.
    `index` is the position in the owning set's try order. `load_elsewhere`: with several
    workers, the active calls the other workers count for it (the primary shows the sum).
    `load_nodes`: with ``[cluster] redis``, the active calls the other nodes count for it
    (gdispatch.ha), which algorithm 10 adds to `load`.
    """

    __slots__ = (
        "_address",
        "_flags",
        "_owner",
        "attr_map",
        "attrs",
        "cc",
        "description",
        "duid",
        "file_flags",
        "index",
        "latency_est_ms",
        "load",
        "load_elsewhere",
        "load_nodes",
        "maxload",
        "priority",
        "probe",
        "ping_socket",
        "rweight",
        "seed",
        "send_socket",
        "setid",
        "sip_uri",
        "socket",
        "unusable",
        "uri",
        "weight",
        "where",
    )

    def __init__(
        self,
        setid: int,
        uri: str,
        sip_uri: SipUri,
        flags: int = 0,
        priority: int = 0,
        attrs: str = "",
        attr_map: dict[str, str] | None = None,
        where: str = "",
        address: tuple[str, int] | None = None,
        unusable: str = "",
        *,
        description: str = "",
        load: int = 0,
        latency_est_ms: float | None = None,
    ) -> None:
        self._owner: DispatcherSet | None = None
        self.setid = setid
        self.uri = uri
        self.sip_uri = sip_uri
        self._flags = flags
        self.file_flags = flags
        self.priority = priority
        self.attrs = attrs
        self.attr_map = parse_attrs(attrs) if attr_map is None else attr_map
        self.where = where
        self._address = address
        self.unusable = unusable
        self.description = description
        self.load = load
        self.load_elsewhere = 0
        self.load_nodes = 0
        self.index = 0
        # Keepalive state and latency statistics (gdispatch.probing.policy.ProbeState), attached
        # by the prober; None when the destination is not probed.
        self.probe: ProbeState | None = None
        m = self.attr_map
        self.duid = m.get("duid", "")
        self.weight = _int_attr(m.get("weight"), 1, 100)
        self.rweight = _int_attr(m.get("rweight"), 1, 100)
        self.maxload = _int_attr(m.get("maxload"), 0, None)
        self.socket = m.get("socket", "")
        self.send_socket: Listen | None = None
        self.ping_socket: Listen | None = None
        self.cc = _int_attr(m.get("cc"), 0, 1)
        if latency_est_ms is None and m.get("latency", "").isdigit():
            latency_est_ms = float(m["latency"])  # Kamailio seeds its estimate with it
        self.latency_est_ms = latency_est_ms
        # A stable per-destination number for rendezvous hashing (algorithms.py): the
        # same URI and duid always give the same seed, whatever the line order.
        self.seed = zlib.crc32(f"{uri}\0{self.duid}".encode("utf-8", "surrogateescape"))

    # -- state the selection depends on ----------------------------------------------

    @property
    def flags(self) -> int:
        return self._flags

    @flags.setter
    def flags(self, value: int) -> None:
        # Only a change of selectability makes the set rebuild its tables: a ping that
        # only sets the probing bit (AX -> AP) must not restart a weight cycle.
        was = self.selectable
        self._flags = value
        if self._owner is not None and self.selectable != was:
            self._owner._stale = True

    @property
    def address(self) -> tuple[str, int] | None:
        return self._address

    @address.setter
    def address(self, value: tuple[str, int] | None) -> None:
        was = self.selectable
        self._address = value
        if self._owner is not None and self.selectable != was:
            self._owner._stale = True

    @property
    def usable(self) -> bool:
        """Has an address to send to, or gets one when a request goes to it (flag 16).
        When not, `unusable` says why."""
        return self._address is not None or bool(self._flags & FLAG_NODNSARES)

    @property
    def selectable(self) -> bool:
        """Neither inactive nor disabled (Kamailio's `ds_skip_dst`), and `usable`."""
        return not (self._flags & FLAGS_SKIP) and (self._address is not None or bool(self._flags & FLAG_NODNSARES))

    @property
    def has_capacity(self) -> bool:
        """Below `maxload` (always, when maxload is 0): alg 10 may give it a call."""
        return self.maxload == 0 or self.load + self.load_nodes < self.maxload

    # -- views ---------------------------------------------------------------------------

    @property
    def transport(self) -> str:
        return self.sip_uri.transport

    @property
    def tls_peer(self) -> TlsPeer | None:
        """Over TLS, who a connection to it must reach: the URI's host (SNI and the name
        in its certificate), its set and its `tls_profile` attr, which choose the
        `[tls.client]` profile (gdispatch.net.tls); None over another transport."""
        if self.sip_uri.transport != "tls":
            return None
        return TlsPeer(self.sip_uri.host, self.setid, self.attr_map.get("tls_profile", ""))

    def state_letters(self, flags: int | None = None) -> str:
        """The two-letter FLAGS field of Kamailio's `dispatcher.list`, for the current
        flags or for `flags` (what it showed before a change); ``IX`` while not `usable`."""
        return state_letters(self._flags if flags is None else flags, self.usable)

    @property
    def label(self) -> str:
        """How logs name it: the URI, then what tells it from another record of the same
        URI (the seed's Bronze/Silver/Gold: one SBC, three tech prefixes): its set and
        duid, else the line of the list file it came from, else its place in the set."""
        line = self.where.rpartition(":")[2]
        which = f"duid {self.duid}" if self.duid else (f"line {line}" if line.isdigit() else f"index {self.index}")
        return f"{self.uri} (set {self.setid}, {which})"

    def __repr__(self) -> str:
        return f"<Destination {self.setid} {self.uri} {self.state_letters()}>"


class DispatcherSet:
    """The destinations of one set id, in try order, with per-set selection state.

    - `destinations`: every destination, in try order (priority descending).
    - `active`: the selectable ones, in the same order (recomputed on state change).
    - `active_from[i]`: the position in `active` of the first selectable destination at
      index i or after it, wrapping: where Kamailio's linear probe from index i lands.
    - `rr_next`: the round-robin pointer (algs 4, 5 without credentials, 13, 14).
    - `rr_serial`: every destination has the same priority and it is > 0 (alg 14).
    """

    __slots__ = (
        "_active",
        "_active_from",
        "_cache",
        "_fixed",
        "_stale",
        "destinations",
        "id",
        "rr_next",
        "rr_serial",
    )

    def __init__(self, setid: int, destinations: list[Destination]):
        self.id = setid
        self.destinations = destinations
        for i, d in enumerate(destinations):
            d.index = i
            d._owner = self
        self.rr_next = 0
        first = destinations[0].priority if destinations else 0
        self.rr_serial = first > 0 and all(d.priority == first for d in destinations)
        # Tables that depend on the state (cleared on change) and tables Kamailio builds
        # once at load and never rebuilds (kept).
        self._cache: dict[str, Any] = {}
        self._fixed: dict[str, Any] = {}
        self.state_changed()

    def state_changed(self) -> None:
        """Recompute what depends on which destinations are selectable. Called by the
        prober and RPC after changing states; also run by the next selection after any
        assignment to a destination's `flags` or `address`."""
        self._stale = False
        dests = self.destinations
        active = tuple(d for d in dests if d.selectable)
        self._active = active
        # Walk backwards so each index learns the next selectable position after it.
        n = len(dests)
        active_from = [0] * n
        nxt = 0  # wraps to the first selectable one
        pos = len(active)
        for i in range(n - 1, -1, -1):
            if dests[i].selectable:
                pos -= 1
                nxt = pos
            active_from[i] = nxt
        self._active_from = active_from
        self._cache.clear()

    @property
    def active(self) -> tuple[Destination, ...]:
        if self._stale:
            self.state_changed()
        return self._active

    @property
    def active_from(self) -> list[int]:
        if self._stale:
            self.state_changed()
        return self._active_from

    def cached(self, key: str, build: Callable[[DispatcherSet], Any], *, fixed: bool = False) -> Any:
        """A table built by `build(self)` once and reused: until the next state change,
        or for the set's whole life with `fixed=True` (Kamailio's load-time tables)."""
        if self._stale:
            self.state_changed()
        store = self._fixed if fixed else self._cache
        try:
            return store[key]
        except KeyError:
            table = store[key] = build(self)
            return table

    # -- call load (alg 10) ------------------------------------------------------------

    def least_loaded(self) -> Destination | None:
        """The selectable destination with the fewest calls among those below their
        `maxload`; ties go to the earliest in try order. None when all are full."""
        best = None
        for d in self.active:
            if d.has_capacity and (best is None or d.load + d.load_nodes < best.load + best.load_nodes):
                best = d
        return best

    def total_load(self) -> int:
        return sum(d.load for d in self.destinations)

    def __repr__(self) -> str:
        return f"<DispatcherSet {self.id}: {len(self.destinations)} destination(s)>"


class DispatcherList:
    """All sets of one loaded list file. Replaced as a whole on reload.

    `problems` lists the lines left out when the file was loaded in "skip" mode (one
    "file:line: what" each); it is empty for a strict load.
    """

    __slots__ = ("problems", "sets", "source", "text")

    def __init__(self, sets: dict[int, DispatcherSet], source: str = "", problems: list[str] | None = None,
                 text: str = ""):
        self.sets = sets
        self.source = source
        self.problems = problems if problems is not None else []
        self.text = text  # what it was parsed from (other workers parse the same)

    def get(self, setid: int) -> DispatcherSet | None:
        return self.sets.get(setid)

    def destinations(self) -> Iterator[Destination]:
        for s in self.sets.values():
            yield from s.destinations
