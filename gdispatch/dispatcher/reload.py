"""Carrying runtime state from the running list to a newly loaded one.

Kamailio rebuilds every destination from the file on reload, so a gateway an operator
set to DX comes back AX, probing counters start again and call-load counts are lost
(kamailio PR#3534, #2353). OpenSIPS users asked for the opposite too: when the file itself
changes a destination's state, the file should win (OpenSIPS PR#2363). gdispatch does
both:

- A destination is "the same" in the old and new list when its set, URI, ``duid`` and
  ``socket`` are the same (`identity`).
- The same destination with the same flags in the file keeps its runtime state: flags
  (AP/IP/DX... as probing or the operator left them), probe counters and latency
  statistics, call load.
- The same destination whose flags changed in the file takes the file's flags (the
  operator edited them on purpose) but keeps its statistics and call load.
- A new destination starts from its file flags; a removed one is simply not in the new
  list: transactions and dialogs already using it finish with it.

`carry_state(old, new, keep_state=False)` gives Kamailio's reset-everything behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gdispatch.dispatcher.destination import Destination, DispatcherList


def identity(d: Destination) -> tuple[int, str, str, str]:
    return (d.setid, d.uri, d.duid, d.socket)


@dataclass
class ReloadSummary:
    kept: list[Destination] = field(default_factory=list)
    file_changed: list[Destination] = field(default_factory=list)
    added: list[Destination] = field(default_factory=list)
    removed: list[Destination] = field(default_factory=list)
    # old destination → the new one that replaces it (for call-load bookkeeping)
    replaced: dict[int, Destination] = field(default_factory=dict)

    def describe(self) -> str:
        return (f"{len(self.kept) + len(self.file_changed)} kept ({len(self.file_changed)} with new file flags), "
                f"{len(self.added)} added, {len(self.removed)} removed")


def carry_state(old: DispatcherList | None, new: DispatcherList, *, keep_state: bool = True) -> ReloadSummary:
    summary = ReloadSummary()
    previous = {identity(d): d for d in old.destinations()} if old is not None else {}
    for d in new.destinations():
        o = previous.pop(identity(d), None)
        if o is None:
            summary.added.append(d)
            continue
        summary.replaced[id(o)] = d
        if not keep_state:
            summary.kept.append(d)
            continue
        d.load = o.load
        d.probe = o.probe
        d.latency_est_ms = o.latency_est_ms
        if d.address is None and o.address is not None and d.sip_uri.host == o.sip_uri.host:
            d.address = o.address
        if d.file_flags == o.file_flags:
            d.flags = o.flags
            summary.kept.append(d)
        else:
            summary.file_changed.append(d)
    summary.removed = list(previous.values())
    return summary
