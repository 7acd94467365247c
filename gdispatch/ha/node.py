"""`Node`: this gdispatch among the nodes sharing ``[cluster] redis``, between the App
and the store (gdispatch.ha.store).

What is shared (within a second, usually two store intervals):
- the state an operator sets (``dispatcher.set_state``, ``set_duid_state``, the status
  page): the state bits, by destination;
- ``dispatcher.ping_active``;
- the list: a node that swaps in a list (reload, ``dispatcher.add``/``remove``, a file
  change) shares its text, and the others swap in that same text (without writing it to
  their file). The last list set anywhere wins; a node starting takes the shared list
  over its own file, whose text it shares only when none is shared yet. A list that does
  not load on a node (a ``socket=`` it does not listen on) leaves that node's list as it
  was, and is logged.
- the call loads (algorithm 10): each node's active calls per destination. With one
  worker, a ``maxload`` destination takes the calls of the slots leased to this node
  (gdispatch.ha.leases), exact across the nodes; with several workers, or while Redis
  does not answer the leases, a node adds the others' calls (as of its last round, at
  most about two intervals old) to its own when it checks `maxload`.

What stays local: destination health (each node probes from its own address and marks
what it sees: a gateway one node cannot reach may be reachable from the other, and a
failure of one node's path must not take the destination out of the other's), the
transactions in flight, the dialog keys (a file each node is given). So that an
operator sees where a destination is down, each node also publishes its view (letters,
latency estimate, active calls per destination: `view`) with its heartbeat, and
``dispatcher.list cluster`` shows every live node's (`views`); ``cluster.list`` shows a
summary of each (how many destinations per letters, active calls).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from gdispatch import logsafe
from gdispatch.dispatcher.destination import FLAGS_STATE, Destination
from gdispatch.ha import shared
from gdispatch.ha.leases import Leases
from gdispatch.ha.store import NodeSeen, Round, Store, client

if TYPE_CHECKING:
    from gdispatch.settings import Ha

log = logging.getLogger("gdispatch")


def node_name(ha: Ha) -> str:
    return ha.node or socket.gethostname()


class Node:
    """This node's part: publishes what the operator changes here, applies what the
    others changed, and keeps their call loads on the destinations (`load_nodes`)."""

    def __init__(self, app: Any, ha: Ha):
        """`app`: the gdispatch.app.App (`current_list`, `ping_active`,
        `apply_shared_list`, `state_changed`)."""
        self.app = app
        self.name = node_name(ha)
        self.stamps: dict[str, str] = {}  # field -> the stamp of what this node holds
        self.applying = False  # a value from another node is being applied: do not share it back
        self.nodes: dict[str, NodeSeen] = {}
        self.elsewhere: dict[str, int] = {}  # destination field -> the other nodes' active calls
        self.refused: set[str] = set()  # list stamps that did not load here (logged once)
        self.store: Store | None = None
        # The call slots of maxload destinations (gdispatch.ha.leases), with one worker:
        # with several, the workers check maxload on their own calls and the others'.
        self.leases: Leases | None = None
        if ha.redis:
            if getattr(app.config, "workers", 1) == 1:
                self.leases = Leases(client(ha.redis), self.name,
                                     lambda: self.app.current_list().destinations(), self._leases_lost)
            self.store = Store(client(ha.redis), self.name, info=self._info, loads=self.loads,
                               snapshot=self.snapshot, on_values=self.on_values, on_round=self.on_round,
                               url=_redact(ha.redis), view=self.view)

    def start(self) -> None:
        if self.store is not None:
            self.store.start()
        if self.leases is not None:
            self.leases.start()

    def stop(self) -> None:
        if self.store is not None:
            self.store.stop()
        if self.leases is not None:
            self.leases.stop()

    def _leases_lost(self) -> None:
        """Redis does not answer the leases: the other nodes' calls as last heard of."""
        for d in self.app.current_list().destinations():
            d.load_nodes = self.elsewhere.get(shared.dest_field(d), 0)

    # ------------------------------------------------------------- from this node

    def _put(self, name: str, value: str) -> None:
        if self.applying or self.store is None:
            return
        st = shared.stamp(time.time(), self.name)
        self.stamps[name] = st
        self.store.put(name, st, value)

    def operator_state(self, dest: Destination) -> None:
        """The operator set `dest`'s state here."""
        self._put(shared.state_field(dest), str(dest.flags & FLAGS_STATE))

    def ping_active(self, value: bool) -> None:
        self._put(shared.PING, "1" if value else "0")

    def list_swapped(self, text: str) -> None:
        """A list was swapped in here (reload, add, remove, another node's)."""
        self._loads_onto(self.app.current_list().destinations())  # new objects: the counts carry over
        self._put(shared.LIST, text)

    def _loads_onto(self, dests: Any) -> None:
        """The other nodes' calls, or the slots not leased here, onto `dests`."""
        dests = list(dests)
        leased = self.leases is not None and self.leases.connected
        for d in dests:
            if not (leased and d.maxload):
                d.load_nodes = self.elsewhere.get(shared.dest_field(d), 0)
        if self.leases is not None:
            self.leases.apply(dests)

    def _info(self) -> dict:
        letters: dict[str, int] = {}
        calls = 0
        for d in self.app.current_list().destinations():
            f = d.state_letters()
            letters[f] = letters.get(f, 0) + 1
            calls += d.load + d.load_elsewhere
        return {"pid": os.getpid(), "started": self.app.started_at, "dests": letters, "calls": calls}

    def view(self) -> dict[str, str]:
        """This node's view of each destination: field -> "LETTERS|EST|CALLS" (the
        letters of ``dispatcher.list``, the latency estimate in ms, active calls)."""
        out = {}
        for d in self.app.current_list().destinations():
            est = d.probe.latency.estimate if d.probe is not None else 0.0
            out[shared.dest_field(d)] = f"{d.state_letters()}|{est:.3f}|{d.load + d.load_elsewhere}"
        return out

    def views(self) -> tuple[dict[str, dict[str, str]], str]:
        """Every live node's view (node -> `view`), this node's from its own state, the
        others' read from Redis now; and why they could not be read ("" when they were).
        A node whose heartbeat expired is left out."""
        out = {self.name: self.view()}
        others = [n for n, seen in sorted(self.nodes.items()) if seen.alive and n != self.name]
        if self.store is None or not others:
            return out, ""
        try:
            got = self.store.read_views(others)
        except Exception as e:  # redis-py's errors, OSError: this node's view alone
            return out, str(e)
        out.update({n: v for n, v in got.items() if v})
        return out, ""

    def loads(self) -> dict[str, int]:
        """This node's active calls per destination (every worker's)."""
        return {shared.dest_field(d): d.load + d.load_elsewhere
                for d in self.app.current_list().destinations() if d.load + d.load_elsewhere}

    def snapshot(self) -> dict[str, tuple[str, str]]:
        """Everything this node holds, for a Redis that lost it: the list and
        ``ping_active`` (`shared.UNSET` when never set), the states an operator set."""
        dlist = self.app.current_list()
        out = {shared.LIST: (self.stamps.get(shared.LIST) or shared.UNSET, dlist.text),
               shared.PING: (self.stamps.get(shared.PING) or shared.UNSET, "1" if self.app.ping_active else "0")}
        for d in dlist.destinations():
            f = shared.state_field(d)
            if f in self.stamps:
                out[f] = (self.stamps[f], str(d.flags & FLAGS_STATE))
        return out

    # ------------------------------------------------------------- from the others

    def on_values(self, values: dict[str, tuple[str, str]]) -> None:
        """The shared values: apply those newer than what this node holds."""
        win = shared.winners(self.stamps, values)
        if not win:
            return
        self.applying = True
        try:
            if shared.LIST in win:
                self._apply_list(*win.pop(shared.LIST))
            if shared.PING in win:
                st, v = win.pop(shared.PING)
                self.stamps[shared.PING] = st
                if bool(self.app.ping_active) != (v == "1"):
                    self.app.ping_active = v == "1"
                    log.info("dispatcher.ping_active %s from node %s", v, _by(st), extra=logsafe.KEEP)
            by_field = {shared.state_field(d): d for d in self.app.current_list().destinations()}
            changed = []
            for f, (st, v) in win.items():
                dest = by_field.get(f)
                if dest is None or not v.isdigit():
                    continue
                self.stamps[f] = st
                old = dest.flags
                new = (old & ~FLAGS_STATE) | (int(v) & FLAGS_STATE)
                if new != old:
                    dest.flags = new
                    changed.append((dest, old, st))
            for dest, old, st in changed:
                dset = self.app.current_list().get(dest.setid)
                if dset is not None:
                    dset.state_changed()
                self.app.state_changed(dest, old, f"set on node {_by(st)}")
        finally:
            self.applying = False

    def _apply_list(self, st: str, text: str) -> None:
        self.stamps[shared.LIST] = st
        if text == self.app.current_list().text or st in self.refused:
            return
        try:
            self.app.apply_shared_list(text, f"list of node {_by(st)}")
        except Exception as e:  # ListError, ValueError: the running list stays
            self.refused.add(st)
            log.error("the list shared by node %s does not load here (%s); this node keeps its own",
                      _by(st), e, extra=logsafe.KEEP)

    def on_round(self, r: Round) -> None:
        """The others' call loads onto the destinations (algorithm 10 adds them)."""
        self.nodes = r.nodes
        others = shared.sum_loads({n: v for n, v in r.loads.items()
                                   if n != self.name and (n not in r.nodes or r.nodes[n].alive)})
        self.elsewhere = others
        self._loads_onto(self.app.current_list().destinations())

    # ------------------------------------------------------------- cluster.list

    def describe(self) -> dict:
        """``cluster.list``: the nodes, their last heartbeat, which serve."""
        now = time.time()
        store = self.store
        rows = []
        if store is None or not self.nodes:
            mine = self._info()
            rows.append({"NODE": self.name, "SELF": 1, "ALIVE": 1, "LAST_HEARTBEAT": round(now, 3),
                         "AGE": 0.0, "DESTINATIONS": mine["dests"], "CALLS": mine["calls"]})
        else:
            for n, seen in sorted(self.nodes.items()):
                rows.append({"NODE": n, "SELF": int(n == self.name), "ALIVE": int(seen.alive or n == self.name),
                             "LAST_HEARTBEAT": round(seen.last_heartbeat, 3),
                             "AGE": round(max(now - seen.last_heartbeat, 0.0), 3) if seen.last_heartbeat else None,
                             # as of its last heartbeat: destinations per letters, active calls
                             "DESTINATIONS": dict(seen.info.get("dests") or {}), "CALLS": seen.info.get("calls", 0)})
        out: dict[str, Any] = {"NODE": self.name, "NODES": rows}
        if store is None:
            out["REDIS"] = "not configured"
        else:
            out["REDIS"] = store.url
            out["CONNECTED"] = int(store.connected)
            out["LOADS_ELSEWHERE"] = dict(self.elsewhere)
            if self.leases is not None:
                out["SLOTS"] = self.leases.describe()
                out["SLOTS_CONNECTED"] = int(self.leases.connected)
                out["SLOT_WAITS"] = self.leases.waited
            if store.error:
                out["ERROR"] = store.error
        return out


def _by(st: str) -> str:
    return st.partition("|")[2] or "?"


def _redact(url: str) -> str:
    """`url` without its password."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{host}"
