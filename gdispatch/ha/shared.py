"""What the nodes share, as values in two Redis hashes, and which value wins.

A value is named by a field: ``list`` (the dispatcher list's text), ``ping_active``
("0"/"1") and ``state|SET|INDEX|URI`` (the state bits an operator set on that
destination). Each carries a stamp: ``"%017.6f|NODE"`` of the wall clock when it was
set, so that comparing the strings orders them by time, then by node name; ``"0"`` is
the stamp of what a node holds without anyone having set it (its list file at start),
below every set value, and ``""`` (nothing known) is below ``"0"``. The greatest stamp
wins everywhere, in Redis (a Lua script writes a value only over an older one) as on
each node: last writer wins, and every node converges on the same values whatever the
order they hear them in.
"""

from __future__ import annotations

from gdispatch.dispatcher.destination import Destination

LIST = "list"
PING = "ping_active"
STATE = "state|"
UNSET = "0"  # the stamp of a value nobody set (a node's list file at start)


def stamp(now: float, node: str) -> str:
    """The stamp of a value set now on `node`: orders by time, then node name."""
    return f"{now:017.6f}|{node}"


def newer(a: str, b: str | None) -> bool:
    """Whether stamp `a` wins over `b` (None: nothing known)."""
    return b is None or a > b


def dest_field(dest: Destination) -> str:
    """How the nodes name a destination (the lists are the same on every node)."""
    return f"{dest.setid}|{dest.index}|{dest.uri}"


def state_field(dest: Destination) -> str:
    return STATE + dest_field(dest)


def sum_loads(others: dict[str, dict[str, int]]) -> dict[str, int]:
    """The active calls the other nodes count per destination field, summed."""
    out: dict[str, int] = {}
    for loads in others.values():
        for field, n in loads.items():
            out[field] = out.get(field, 0) + n
    return out


def winners(local: dict[str, str], remote: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """The remote values (field -> (stamp, value)) that win over what this node holds
    (`local`: field -> stamp)."""
    return {f: sv for f, sv in remote.items() if newer(sv[0], local.get(f))}
