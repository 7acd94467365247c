"""The INVITEs each destination was sent, and how they ended: `CallCounters`.

The `stats` RPC (CALLS_SENT, CALLS_ANSWERED, CALLS_FAILED of each destination), the status
page and the metrics read them. The counts are kept by the destination's identity
(gdispatch.dispatcher.reload.identity), so a reload that keeps a destination keeps its
counts; with several workers each worker counts its own and the primary adds the others'
reports in (`summed`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gdispatch.dispatcher.destination import Destination
from gdispatch.dispatcher.reload import identity

SENT, ANSWERED, FAILED = 0, 1, 2  # the places in a destination's counts


class CallCounters:
    """[sent, answered 2xx, failed (final >= 300 or no answer)] INVITEs per destination."""

    def __init__(self) -> None:
        self.table: dict[tuple, list[int]] = {}  # identity(destination) -> its counts

    def of(self, dest: Destination) -> list[int]:
        """The counts of `dest`, to add to (index SENT, ANSWERED or FAILED)."""
        key = identity(dest)
        c = self.table.get(key)
        if c is None:
            c = self.table[key] = [0, 0, 0]
        return c

    def summed(self, dest: Destination, others: Iterable[Mapping[tuple, Iterable[int]]] = ()) -> dict[str, int]:
        """The counts of `dest` with the `table`s of the other workers added in, under
        the names the RPC and the status page give them."""
        key = identity(dest)
        sent = answered = failed = 0
        for table in (self.table, *others):
            s, a, f = table.get(key, (0, 0, 0))
            sent, answered, failed = sent + s, answered + a, failed + f
        return {"CALLS_SENT": sent, "CALLS_ANSWERED": answered, "CALLS_FAILED": failed}
