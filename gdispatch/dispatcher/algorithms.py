"""Kamailio's destination selection algorithms, by their numbers (0-15, not 64).

``select(dset, algorithm, msg, limit=0, options=None)`` returns the destinations of a set
in the order the proxy tries them: the chosen one first, then the failover list. Only
selectable destinations are returned (neither inactive nor disabled, and resolved); an
empty list means none can take the request. ``limit`` > 0 caps the length.

The failover list is Kamailio's unless an algorithm says otherwise: after the chosen
destination come the later ones of the set, then the earlier ones (wrapping), in the
set's try order (priority descending, see listfile.py).

| alg | chooses |
|---|---|
| 0 | hash of the Call-ID |
| 1, 2, 3 | hash of the From, To, Request-URI: user and host[:port] (keys.py) |
| 4 | round robin: the next after the previous choice |
| 5 | hash of the Digest username; round robin when the request has no credentials |
| 6 | random |
| 7 | hash of the `SelectOptions.hash_template` expansion (keys.py) |
| 8 | priority: always the first selectable one |
| 9 | weight: the `weight` attrs as percentages (100 slots per cycle) |
| 10 | call load: the fewest active calls (`Destination.load`) below `maxload` |
| 11 | relative weight: the `rweight` attrs, over the active destinations |
| 12 | parallel: every selectable destination, for the proxy to fork to |
| 13 | latency: priority lowered by the latency estimate; round robin among equals |
| 14 | round robin when all priorities are equal and > 0, else priority |
| 15 | SRV style: the lowest priority value first, weighted inside it by `weight` |

Better than Kamailio by default; Kamailio's behaviour with
``SelectOptions(kamailio_compat=True)``:

- Hashing (0-3, 5, 7) while a destination is down. Kamailio probes from the dead slot to
  the next index, so one neighbour takes all of the dead one's calls (kamailio#2361).
  gdispatch keeps every key whose slot is healthy exactly where Kamailio puts it (hash
  modulo all destinations: with all up, the slots are Kamailio's), and re-hashes only the
  keys of a dead slot, with rendezvous (highest-random-weight) hashing over the active
  destinations: each such key goes to the active destination with the highest
  ``mix(hash, destination seed)``. So the dead one's calls spread evenly over the
  survivors, a key keeps its fallback while that fallback lives, no other key moves, and
  all of them come back when it does. The seed hashes URI and duid, so it does not
  depend on line order.
- Random (6): uniform over the active destinations, instead of random modulo all then
  probing to the next index (the same double load as above).
- Weight (9): the slots are rebuilt over the active destinations on every state change,
  keeping their proportions (75/25/.. with one down shares out its slots), instead of
  Kamailio's fixed slots probed to the next index. With all up the counts per 100 are
  Kamailio's (a short total padded with the last destination, a long one truncated).
  Weights count when any destination has one (Kamailio: only when the first one has).
  The slots are spread evenly and deterministically (Kamailio: shuffled).
- Relative weight (11): exact shares, one slot per unit of weight after dividing by
  the weights' GCD (at most 10,000 slots, shared out by largest remainder beyond that),
  instead of 100 truncated slots with the remainder to the last destination
  (kamailio#2698: with more than 25 hosts one takes a disproportionate share).
- Parallel (12): inactive destinations are not forked to (Kamailio adds every
  destination after the first active one as a branch).
- A key that cannot be read (a From/To header that does not parse, no Call-ID, an
  empty template expansion) spreads the request by round robin; Kamailio fails the
  selection, and so does compat mode (an empty list). Algorithm 5 without credentials
  is round robin in both, as in Kamailio. (URIs themselves are read as leniently as
  Kamailio reads them, and a tel: URI hashes its number where Kamailio fails.)

Other differences, in both modes: algorithm 10 applies to INVITE only (other methods
take the priority order, as in Kamailio) and needs no ``duid``, the proxy maintaining
`Destination.load`; algorithm 13 ignores ``cc`` (no latency average is kept); 15 fails
over through the rest of the chosen tier, then the next tiers by ascending priority
value. Overload control (64) and ``use_default`` are not implemented.

Per call: the hash, an index or two, and the result list. Everything that depends only on
which destinations are selectable (slot tables, the active tuple) is built once per state
change by the set (`DispatcherSet.cached`), see destination.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import gcd
from typing import TypeVar

from gdispatch.dispatcher.destination import Destination, DispatcherSet
from gdispatch.dispatcher.hashing import kamailio_hash
from gdispatch.dispatcher.keys import HashTemplate, TemplateError, auth_username, compile_template, uri_keys
from gdispatch.sip import ParseError, SipMessage

__all__ = [
    "ALGORITHM_NAMES",
    "DEFAULT_OPTIONS",
    "SUPPORTED",
    "HashTemplate",
    "SelectOptions",
    "SlotTable",
    "TemplateError",
    "check_options",
    "compile_template",
    "exact_counts",
    "select",
    "spread",
]

ALG_HASH_CALLID = 0
ALG_HASH_FROM_URI = 1
ALG_HASH_TO_URI = 2
ALG_HASH_RURI = 3
ALG_ROUND_ROBIN = 4
ALG_HASH_AUTH_USER = 5
ALG_RANDOM = 6
ALG_HASH_TEMPLATE = 7
ALG_PRIORITY = 8
ALG_WEIGHT = 9
ALG_CALL_LOAD = 10
ALG_RELATIVE_WEIGHT = 11
ALG_PARALLEL = 12
ALG_LATENCY = 13
ALG_ROUND_ROBIN_OR_PRIORITY = 14
ALG_PRIORITY_WEIGHT = 15

ALGORITHM_NAMES = {
    ALG_HASH_CALLID: "hash of Call-ID",
    ALG_HASH_FROM_URI: "hash of From URI",
    ALG_HASH_TO_URI: "hash of To URI",
    ALG_HASH_RURI: "hash of Request-URI",
    ALG_ROUND_ROBIN: "round robin",
    ALG_HASH_AUTH_USER: "hash of auth username",
    ALG_RANDOM: "random",
    ALG_HASH_TEMPLATE: "hash of template",
    ALG_PRIORITY: "priority",
    ALG_WEIGHT: "weight",
    ALG_CALL_LOAD: "call load",
    ALG_RELATIVE_WEIGHT: "relative weight",
    ALG_PARALLEL: "parallel",
    ALG_LATENCY: "latency",
    ALG_ROUND_ROBIN_OR_PRIORITY: "round robin or priority",
    ALG_PRIORITY_WEIGHT: "priority and weight (SRV)",
}

MAX_SLOTS = 10_000  # largest slot table for algorithms 9, 11, 15 before shares are rounded


@dataclass(frozen=True)
class SelectOptions:
    """How `select` behaves beyond the algorithm number.

    - `hash_user_only`: algorithms 1-3 hash the URI user only (Kamailio modparam
      ``flags`` bit 1).
    - `hash_template`: what algorithm 7 hashes; a `HashTemplate` or its source text
      (compiled here, so a bad template fails when the options are built).
    - `kamailio_compat`: reproduce Kamailio's behaviour where gdispatch does better
      (module docstring).
    """

    hash_user_only: bool = False
    hash_template: HashTemplate | None = None
    kamailio_compat: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.hash_template, str):
            object.__setattr__(self, "hash_template", compile_template(self.hash_template))


DEFAULT_OPTIONS = SelectOptions()

T = TypeVar("T")


def _rotate(seq: Sequence[T], pos: int, limit: int) -> list[T]:
    """seq[pos:] + seq[:pos], at most `limit` long (0 = all)."""
    n = len(seq)
    if limit <= 0 or limit > n:
        limit = n
    if pos == 0:
        return list(seq[:limit])
    out = list(seq[pos : pos + limit])
    if len(out) < limit:
        out.extend(seq[: limit - len(out)])
    return out


# -- slot tables ----------------------------------------------------------------------------


class SlotTable:
    """A cycle of slots consumed one per call: any full cycle splits exactly by count."""

    __slots__ = ("next", "slots")

    def __init__(self, slots: list[int]):
        self.slots = slots
        self.next = 0

    def take(self) -> int:
        i = self.next
        self.next = 0 if i + 1 >= len(self.slots) else i + 1
        return self.slots[i]


def exact_counts(weights: Sequence[int], cap: int = MAX_SLOTS) -> list[int]:
    """Slot counts in exact proportion to `weights` (divided by their GCD); beyond `cap`
    slots, `cap` shared out by largest remainder (ties to the earlier weight)."""
    g = 0
    for w in weights:
        g = gcd(g, w)
    if g == 0:
        return [0] * len(weights)
    counts = [w // g for w in weights]
    total = sum(counts)
    if total <= cap:
        return counts
    quotas = [divmod(c * cap, total) for c in counts]
    counts = [q for q, _ in quotas]
    short = cap - sum(counts)
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-quotas[i][1], i))
    for i in by_remainder[:short]:
        counts[i] += 1
    return counts


def spread(counts: Sequence[int]) -> list[int]:
    """Slots for `counts` (slot i appears counts[i] times), evenly interleaved: the k-th
    slot of i sits at time (k + 1/2) / counts[i], so each destination's calls are evenly
    spaced over the cycle. Deterministic, unlike Kamailio's shuffle."""
    timed = [((2 * k + 1) / (2 * c), i) for i, c in enumerate(counts) for k in range(c)]
    timed.sort()
    return [i for _, i in timed]


def _kamailio_weight_counts(dests: Sequence[Destination]) -> list[int]:
    """Kamailio's alg 9 fill: `weight` slots each in try order up to 100, the rest of
    100 to the last destination."""
    counts = [0] * len(dests)
    used = 0
    for i, d in enumerate(dests):
        take = min(d.weight, 100 - used)
        counts[i] = take
        used += take
    counts[-1] += 100 - used
    return counts


def _weight_table(dset: DispatcherSet) -> SlotTable | None:
    """Alg 9: slots over the active destinations (positions in `dset.active`)."""
    dests = dset.destinations
    active = dset.active
    if not active or not any(d.weight for d in dests):
        return None
    counts = _kamailio_weight_counts(dests)
    weights = [counts[d.index] for d in active]
    if not any(weights):
        weights = [1] * len(active)  # only unweighted destinations are left: share equally
    return SlotTable(spread(exact_counts(weights)))


def _kamailio_weight_table(dset: DispatcherSet) -> SlotTable | None:
    """Alg 9 as Kamailio builds it at load: 100 shuffled slots (indexes into the set),
    only when the first destination has a weight; never rebuilt."""
    dests = dset.destinations
    if not dests or dests[0].weight == 0:
        return None
    slots = [i for i, c in enumerate(_kamailio_weight_counts(dests)) for _ in range(c)]
    random.shuffle(slots)
    return SlotTable(slots)


def _rweight_table(dset: DispatcherSet) -> SlotTable | None:
    """Alg 11: exact shares over the active destinations (positions in `dset.active`)."""
    weights = [d.rweight for d in dset.active]
    if not any(weights):
        return None
    return SlotTable(spread(exact_counts(weights)))


def _kamailio_rweight_table(dset: DispatcherSet) -> SlotTable | None:
    """Alg 11 as Kamailio builds it: 100 shuffled slots (indexes into the set), each
    active destination getting rweight*100/sum truncated, the rest to the last filled."""
    dests = dset.destinations
    active = dset.active
    total = sum(d.rweight for d in active)
    if len(dests) < 2 or total == 0:
        return None
    slots = [d.index for d in active for _ in range(d.rweight * 100 // total)]
    last = slots[-1] if slots else len(dests) - 1
    slots.extend([last] * (100 - len(slots)))
    random.shuffle(slots)
    return SlotTable(slots)


class _Tiers:
    """Alg 15: the best (lowest priority value) active tier with its weighted slots, and
    the other active destinations by ascending priority value."""

    __slots__ = ("rest", "table", "tier")

    def __init__(self, dset: DispatcherSet):
        active = dset.active
        best = min(d.priority for d in active)
        self.tier = tuple(d for d in active if d.priority == best)
        weights = [d.weight for d in self.tier]
        if not any(weights):
            weights = [1] * len(self.tier)
        self.table = SlotTable(spread(exact_counts(weights)))
        # sorted() is stable: inside a tier, try order.
        self.rest = tuple(sorted((d for d in active if d.priority != best), key=lambda d: d.priority))


# -- the algorithms -------------------------------------------------------------------------

Algorithm = Callable[[DispatcherSet, SipMessage, int, SelectOptions], "list[Destination]"]


def _from_index(dset: DispatcherSet, index: int, limit: int) -> list[Destination]:
    """Kamailio's walk: the first selectable destination at `index` or after, then on."""
    active = dset.active
    if not active:
        return []
    return _rotate(active, dset.active_from[index], limit)


def _mix(h: int, seed: int) -> int:
    """A 64-bit mix of (hash, destination seed): splitmix64's finaliser."""
    x = (h << 32) | seed
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _by_hash(dset: DispatcherSet, h: int, limit: int, options: SelectOptions) -> list[Destination]:
    active = dset.active
    if not active:
        return []
    dests = dset.destinations
    index = h % len(dests)
    if options.kamailio_compat or dests[index].selectable:
        return _rotate(active, dset.active_from[index], limit)
    # The key's slot is down: rendezvous hashing over the active destinations.
    best_pos = 0
    best = -1
    for pos, d in enumerate(active):
        score = _mix(h, d.seed)
        if score > best:
            best, best_pos = score, pos
    return _rotate(active, best_pos, limit)


def _unhashable(dset: DispatcherSet, msg: SipMessage, limit: int, options: SelectOptions) -> list[Destination]:
    if options.kamailio_compat:
        return []
    return _round_robin(dset, msg, limit, options)


def _hash_callid(dset: DispatcherSet, msg: SipMessage, limit: int, options: SelectOptions) -> list[Destination]:
    try:
        call_id = msg.call_id
    except ParseError:
        return _unhashable(dset, msg, limit, options)
    return _by_hash(dset, kamailio_hash(call_id), limit, options)


def _uri_hasher(read: Callable[[SipMessage], bytes]) -> Algorithm:
    def hash_uri(dset: DispatcherSet, msg: SipMessage, limit: int, options: SelectOptions) -> list[Destination]:
        try:
            key1, key2 = uri_keys(read(msg), options.hash_user_only)
        except ParseError:
            return _unhashable(dset, msg, limit, options)
        return _by_hash(dset, kamailio_hash(key1, key2), limit, options)

    return hash_uri


def _round_robin(dset: DispatcherSet, msg: SipMessage, limit: int, options: SelectOptions) -> list[Destination]:
    active = dset.active
    if not active:
        return []
    pos = dset.active_from[dset.rr_next % len(dset.destinations)]
    dset.rr_next = active[pos].index + 1  # the pointer moves past the one actually chosen
    return _rotate(active, pos, limit)


def _hash_auth_user(dset: DispatcherSet, msg: SipMessage, limit: int, options: SelectOptions) -> list[Destination]:
    user = auth_username(msg)
    if user is None:
        return _round_robin(dset, msg, limit, options)  # as Kamailio, in both modes
    return _by_hash(dset, kamailio_hash(user), limit, options)


def _random(dset: DispatcherSet, msg: SipMessage, limit: int, options: SelectOptions) -> list[Destination]:
    active = dset.active
    if not active:
        return []
    if options.kamailio_compat:
        return _rotate(active, dset.active_from[random.randrange(len(dset.destinations))], limit)
    return _rotate(active, random.randrange(len(active)), limit)


def _hash_template(dset: DispatcherSet, msg: SipMessage, limit: int, options: SelectOptions) -> list[Destination]:
    template = options.hash_template
    if template is None:
        raise ValueError("algorithm 7 needs SelectOptions.hash_template")
    key = template.expand(msg)
    if not key:
        return _unhashable(dset, msg, limit, options)
    return _by_hash(dset, kamailio_hash(key), limit, options)


def _priority(dset: DispatcherSet, msg: SipMessage, limit: int, options: SelectOptions) -> list[Destination]:
    return _rotate(dset.active, 0, limit)


def _weight(dset: DispatcherSet, msg: SipMessage, limit: int, options: SelectOptions) -> list[Destination]:
    if options.kamailio_compat:
        table = dset.cached("alg9-kamailio", _kamailio_weight_table, fixed=True)
        return _from_index(dset, table.take() if table else 0, limit)
    table = dset.cached("alg9", _weight_table)
    return _rotate(dset.active, table.take() if table else 0, limit)


def _call_load(dset: DispatcherSet, msg: SipMessage, limit: int, options: SelectOptions) -> list[Destination]:
    if msg.method != "INVITE":
        return _priority(dset, msg, limit, options)  # only an INVITE starts a call
    chosen = dset.least_loaded()
    if chosen is None:
        return []
    out = [chosen]
    for d in _rotate(dset.active, dset.active_from[chosen.index], 0)[1:]:
        if limit and len(out) >= limit:
            break
        if d.has_capacity:
            out.append(d)
    return out


def _relative_weight(dset: DispatcherSet, msg: SipMessage, limit: int, options: SelectOptions) -> list[Destination]:
    if options.kamailio_compat:
        table = dset.cached("alg11-kamailio", _kamailio_rweight_table)
        return _from_index(dset, table.take() if table else 0, limit)
    table = dset.cached("alg11", _rweight_table)
    return _rotate(dset.active, table.take() if table else 0, limit)


def _parallel(dset: DispatcherSet, msg: SipMessage, limit: int, options: SelectOptions) -> list[Destination]:
    active = dset.active
    if not active:
        return []
    if not options.kamailio_compat:
        return _rotate(active, 0, limit)
    # Kamailio: the first active destination, then every later one whatever its state
    # (but an unresolved one cannot be sent to at all).
    out = [d for d in dset.destinations[active[0].index :] if d.address is not None]
    return out[:limit] if limit else out


def _latency(dset: DispatcherSet, msg: SipMessage, limit: int, options: SelectOptions) -> list[Destination]:
    active = dset.active
    if not active:
        return []
    # Round-robin rotation from the pointer, then a stable sort by adjusted priority:
    # among equals the rotation order stands, so equals take turns.
    start = dset.active_from[dset.rr_next % len(dset.destinations)]
    rotated = _rotate(active, start, 0)

    def adjusted(d: Destination) -> int:
        prio = d.priority
        latency = int(d.latency_est_ms or 0)
        if prio > 0 and latency > prio:
            return max(prio - latency // prio, 1)
        return prio

    rotated.sort(key=adjusted, reverse=True)
    dset.rr_next = rotated[0].index + 1
    return rotated[:limit] if limit else rotated


def _round_robin_or_priority(
    dset: DispatcherSet, msg: SipMessage, limit: int, options: SelectOptions
) -> list[Destination]:
    if dset.rr_serial:
        return _round_robin(dset, msg, limit, options)
    return _priority(dset, msg, limit, options)


def _priority_weight(dset: DispatcherSet, msg: SipMessage, limit: int, options: SelectOptions) -> list[Destination]:
    if not dset.active:
        return []
    tiers: _Tiers = dset.cached("alg15", _Tiers)
    out = _rotate(tiers.tier, tiers.table.take(), 0)
    out.extend(tiers.rest)
    return out[:limit] if limit else out


_ALGORITHMS: dict[int, Algorithm] = {
    ALG_HASH_CALLID: _hash_callid,
    ALG_HASH_FROM_URI: _uri_hasher(lambda m: m.from_addr.uri_raw),
    ALG_HASH_TO_URI: _uri_hasher(lambda m: m.to_addr.uri_raw),
    ALG_HASH_RURI: _uri_hasher(lambda m: m.ruri),
    ALG_ROUND_ROBIN: _round_robin,
    ALG_HASH_AUTH_USER: _hash_auth_user,
    ALG_RANDOM: _random,
    ALG_HASH_TEMPLATE: _hash_template,
    ALG_PRIORITY: _priority,
    ALG_WEIGHT: _weight,
    ALG_CALL_LOAD: _call_load,
    ALG_RELATIVE_WEIGHT: _relative_weight,
    ALG_PARALLEL: _parallel,
    ALG_LATENCY: _latency,
    ALG_ROUND_ROBIN_OR_PRIORITY: _round_robin_or_priority,
    ALG_PRIORITY_WEIGHT: _priority_weight,
}

SUPPORTED = frozenset(_ALGORITHMS)


def check_options(algorithm: int, options: SelectOptions | None = None) -> None:
    """Raise ValueError when `select` could not run `algorithm` with `options`: an
    unknown number, or algorithm 7 without a hash template. For configuration checks."""
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"algorithm {algorithm} is not supported (supported: {sorted(SUPPORTED)})")
    if algorithm == ALG_HASH_TEMPLATE and (options is None or options.hash_template is None):
        raise ValueError("algorithm 7 hashes a template: a hash template (e.g. \"$fU@$ci\") must be configured")


def select(
    dset: DispatcherSet,
    algorithm: int,
    msg: SipMessage,
    limit: int = 0,
    options: SelectOptions | None = None,
) -> list[Destination]:
    """Destinations to try, in order: the chosen one first, then the failover list.

    Empty when none is selectable (or, alg 10, all are at their maxload). ValueError for
    an algorithm number not in `SUPPORTED`, or algorithm 7 without a hash template.
    """
    try:
        run = _ALGORITHMS[algorithm]
    except KeyError:
        raise ValueError(f"algorithm {algorithm} is not supported (supported: {sorted(SUPPORTED)})") from None
    if not dset.destinations:
        return []
    return run(dset, msg, limit, options if options is not None else DEFAULT_OPTIONS)
