"""Destination states set by the operator, kept across restarts: the state file.

Kamailio keeps what ``dispatcher.set_state`` sets in memory only: a gateway put in
maintenance (``DX``) is back in service after a restart. OpenSIPS keeps it
(``modparam("dispatcher", "persistent_state", 1)``, the state column of its table), and
so does gdispatch, in a small JSON file: ``[dispatcher] persistent_state`` (default
true) and ``state_file`` (`default_path`).

What is kept, and what is not:

- A state the operator set with ``dispatcher.set_state`` or ``set_duid_state`` (the bits
  1, 2, 4, 8: ``DX`` for maintenance, ``IX`` by hand, ``AX`` for a line the file
  disables) when its letter (active, inactive, disabled, trying) differs from the one its
  line of the list file gives. The probing bit alone is no reason to keep a record: in
  the default probing mode the prober sets it on every destination it pings. So putting
  a destination back to the file's letter (``ap`` or ``a`` on a line with flags 0)
  removes the record: there is nothing left to keep.
- Not what probing found (``TP``, ``IP`` after lost pings, ``AP`` after a reply): after a
  restart probing starts over, from the operator's state where there is one.
- A record names its destination by set, URI, ``duid`` and ``socket`` (what tells two
  lines apart, as a reload does: gdispatch.dispatcher.reload.identity), and remembers the flags column
  of its line (``list_flags``). A list edit that keeps the three keeps the state; one
  that changes the line's flags wins, as it does on a reload (gdispatch.dispatcher.reload):
  the record is dropped. So is the record of a destination that is no longer in the list
  file when the file is loaded.
- Records apply when the list file is loaded (start, reload) and when the running list is
  changed by hand (``dispatcher.add``), to the destinations whose flags come from the
  file: one that keeps its state across a reload keeps it, whatever the record says.

The file, written atomically (gdispatch.listedit.write_atomic) when a record changes::

    {
      "about": "gdispatch: destination states set by the operator ...",
      "version": 1,
      "states": [
        {"set": 1, "uri": "sip:10.0.0.1:5060", "duid": "mg1", "state": "DX",
         "flags": 4, "list_flags": 0, "since": "2026-03-01T10:00:00Z",
         "by": "rpc dispatcher.set_state dx"}
      ]
    }

``flags`` is what is applied (Kamailio's bits, as in the list's third column);
``state`` repeats it in ``dispatcher.list``'s letters, for the reader only. Deleting a
record (or the file) while the proxy is stopped forgets that state.

A file that does not parse is set aside (``FILE.bad``, nothing lost) and the proxy starts
from the list's flags, with a warning (`open_states`); one that cannot be read is left
alone and nothing is kept that run. Here: the records and their rules without I/O
(`OperatorStates`, `Restored`), reading and writing the file (`open_states`,
`read_states`, `write_states`), and `StateKeeper`, which a process holds: it reads the
file at start, applies the records to each list it loads, notes each state the operator
sets and writes the file soon after (gdispatch.app says when).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from gdispatch.dispatcher.destination import (
    FLAG_PROBING,
    FLAGS_ALL,
    FLAGS_STATE,
    Destination,
    state_letters,
)
from gdispatch.dispatcher.reload import identity
from gdispatch.listedit import write_atomic

SUFFIX = ".state"
VERSION = 1
ABOUT = ("gdispatch: destination states set by the operator (dispatcher.set_state, set_duid_state), "
         "applied when dispatcher.list is loaded; 'flags' is applied, 'state' is for reading. "
         "Written by gdispatch; edit only while it is stopped.")

Key = tuple[int, str, str, str]  # (set id, URI, duid, socket attr): reload.identity


class StateFileError(ValueError):
    """A state file that cannot be used, worded for the operator (``path: what``)."""


def key_of(dest: Destination) -> Key:
    return identity(dest)


def default_path(list_file: str, env: Mapping[str, str] | None = None) -> str:
    """Where the state file is when the configuration names none: in systemd's
    ``$STATE_DIRECTORY`` (StateDirectory=) under the list file's name, else beside the
    list file: ``dispatcher.list.state``."""
    env = os.environ if env is None else env
    name = os.path.basename(list_file) + SUFFIX
    given = env.get("STATE_DIRECTORY", "")
    if given:
        return os.path.join(given.split(":")[0], name)
    return os.path.join(os.path.dirname(os.path.abspath(list_file)), name)


@dataclass(frozen=True)
class Record:
    """The state the operator set on one destination."""

    flags: int  # the state bits set (FLAGS_STATE)
    list_flags: int  # the flags column of the destination's line then
    since: str = ""  # when, ISO 8601 UTC
    by: str = ""  # the command


@dataclass
class Restored:
    """What `OperatorStates.restore` did: the destinations it gave their operator's state,
    and the records it dropped, each with why."""

    applied: list[tuple[Destination, Record]] = field(default_factory=list)
    dropped: list[tuple[Key, Record, str]] = field(default_factory=list)

    def report(self, path: str) -> list[str]:
        """One line for the log per state restored or forgotten (`path`: the state file)."""
        lines = [f"destination {d.label} is {state_letters(d.flags)} as the operator set it "
                 f"({rec.by or 'by hand'} at {rec.since or 'an unknown time'}; {path})" for d, rec in self.applied]
        lines += [f"the state {state_letters(rec.flags)} the operator set on {uri} (set {setid}"
                  f"{f', duid {duid}' if duid else ''}{f', socket {socket}' if socket else ''}) is "
                  f"forgotten: {why}" for (setid, uri, duid, socket), rec, why in self.dropped]
        return lines


class OperatorStates:
    """The records of the state file, by (set, URI, duid, socket)."""

    def __init__(self, records: dict[Key, Record] | None = None):
        self.records: dict[Key, Record] = dict(records or {})

    def note(self, dest: Destination, by: str, when: str) -> bool:
        """The operator set `dest.flags`: keep that state, or forget the record when its
        letter is that of the destination's line. Returns whether the records changed."""
        key = key_of(dest)
        bits = dest.flags & FLAGS_STATE
        letter = FLAGS_STATE & ~FLAG_PROBING
        if bits & letter == dest.file_flags & letter:
            return self.records.pop(key, None) is not None
        old = self.records.get(key)
        if old is not None and (old.flags, old.list_flags) == (bits, dest.file_flags):
            return False
        self.records[key] = Record(bits, dest.file_flags, when, by)
        return True

    def restore(self, dests: Iterable[Destination], fresh: Callable[[Destination], bool], *,
                prune: bool) -> Restored:
        """Give each destination of `dests` (a whole list) for which `fresh` holds (its
        flags come from the file) the state recorded for it. A record whose line's flags
        changed is dropped; with `prune` (the list file was loaded) so is one that names
        no destination of `dests`."""
        out = Restored()
        found: set[Key] = set()
        for d in dests:
            key = key_of(d)
            rec = self.records.get(key)
            if rec is None:
                continue
            if d.file_flags != rec.list_flags:
                del self.records[key]
                out.dropped.append((key, rec, f"the list file now gives it flags {d.file_flags} "
                                              f"(it gave {rec.list_flags}): the file wins"))
                continue
            found.add(key)
            if fresh(d):
                new = (d.flags & ~FLAGS_STATE) | rec.flags
                if new != d.flags:
                    d.flags = new
                    out.applied.append((d, rec))
        if prune:
            for key in [k for k in self.records if k not in found]:
                out.dropped.append((key, self.records.pop(key), "no longer in the list file"))
        return out

    # -- the file's text -------------------------------------------------------------------

    def to_text(self) -> str:
        states = [
            {"set": key[0], "uri": key[1], "duid": key[2], **({"socket": key[3]} if key[3] else {}),
             "state": state_letters(rec.flags), "flags": rec.flags, "list_flags": rec.list_flags,
             "since": rec.since, "by": rec.by}
            for key, rec in sorted(self.records.items())
        ]
        return json.dumps({"about": ABOUT, "version": VERSION, "states": states}, indent=2) + "\n"

    @classmethod
    def from_text(cls, text: str, path: str = "<states>") -> OperatorStates:
        """Parse a state file; raises StateFileError naming what is wrong."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:  # RecursionError: arrays nested past the stack
            raise StateFileError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("states"), list):
            raise StateFileError(f"{path}: expected an object with a list \"states\"")
        version = data.get("version", VERSION)
        if version != VERSION:
            raise StateFileError(f"{path}: version {version!r} (this gdispatch reads version {VERSION})")
        records: dict[Key, Record] = {}
        for i, entry in enumerate(data["states"]):
            where = f"{path}: states[{i}]"
            if not isinstance(entry, dict):
                raise StateFileError(f"{where}: expected an object")
            setid = _whole(entry, "set", where, "a set id (a whole number >= 0)", 0, None)
            flags = _whole(entry, "flags", where, f"state bits 0-{FLAGS_STATE} (1 inactive, 2 trying, 4 disabled, "
                                                  "8 probing)", 0, FLAGS_STATE)
            list_flags = _whole(entry, "list_flags", where, f"flags 0-{FLAGS_ALL}", 0, FLAGS_ALL)
            uri, duid, socket = entry.get("uri"), entry.get("duid", ""), entry.get("socket", "")
            since, by = entry.get("since", ""), entry.get("by", "")
            if not isinstance(uri, str) or not uri:
                raise StateFileError(f"{where}: \"uri\": expected the destination's URI, got {uri!r}")
            if not isinstance(duid, str) or not isinstance(socket, str):
                raise StateFileError(f"{where}: \"duid\" and \"socket\": expected strings, got {duid!r}, {socket!r}")
            if not isinstance(since, str) or not isinstance(by, str):
                raise StateFileError(f"{where}: \"since\" and \"by\" are strings")
            key = (setid, uri, duid, socket)
            if key in records:
                raise StateFileError(f"{where}: set {setid}, {uri}, duid {duid!r}, socket {socket!r} appears twice")
            records[key] = Record(flags, list_flags, since, by)
        return cls(records)


def _whole(entry: dict, key: str, where: str, what: str, low: int, high: int | None) -> int:
    v = entry.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < low or (high is not None and v > high):
        raise StateFileError(f"{where}: \"{key}\": expected {what}, got {v!r}")
    return v


# -- the file ------------------------------------------------------------------------------


def read_states(path: str) -> OperatorStates:
    """The records of the state file; none when there is no file. Raises StateFileError
    for a file that does not parse, OSError for one that cannot be read."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return OperatorStates()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StateFileError(f"{path}: not UTF-8 text: {e}") from None
    return OperatorStates.from_text(text, path)


def open_states(path: str) -> tuple[OperatorStates | None, str]:
    """The records to start from, and a warning for the log ("" when all is well). A file
    that does not parse is set aside (`set_aside`): no records, kept from now on. One
    that cannot be read, or set aside, is left alone: None, nothing is kept this run."""
    try:
        return read_states(path), ""
    except StateFileError as e:
        aside = set_aside(path)
        if not aside:
            return None, (f"{e}; the operator's states are not restored, and not kept this run "
                          f"(the file cannot be set aside)")
        return OperatorStates(), f"{e}; the operator's states are not restored; the file is kept as {aside}"
    except OSError as e:
        return None, (f"{path}: cannot read the operator's states ({e.strerror or e}); they are not restored, "
                      f"and not kept this run")


def set_aside(path: str) -> str:
    """Rename a state file that does not parse to ``FILE.bad`` (replacing an older one),
    so that the next write does not destroy what an operator may want to read. Returns
    the new name, or "" when the rename failed."""
    aside = path + ".bad"
    try:
        os.replace(path, aside)
    except OSError:
        return ""
    return aside


def write_states(path: str, states: OperatorStates) -> None:
    """Write the records, atomically; the directory is made when missing. Raises OSError."""
    real = os.path.realpath(path)  # a symlink stays one: its target is replaced
    os.makedirs(os.path.dirname(real), exist_ok=True)
    try:
        st: os.stat_result | None = os.stat(real)
    except FileNotFoundError:
        st = None
    write_atomic(real, states.to_text().encode("utf-8"), st)


log = logging.getLogger("gdispatch")


class StateKeeper:
    """The operator's states of one process (the primary's, with several workers): the
    records, read from `path` by `open`, applied by `restore`, added by `note`, written by
    a `spawn`-ed task once the command that changed them is over (one write for
    ``set_state ... all``). With `persistent_state` off it holds nothing and does nothing."""

    def __init__(self, path: str, spawn: Callable[[Callable[[], None]], object]):
        self.path = path
        self.states: OperatorStates | None = None
        self._spawn = spawn
        self._saving = False

    def open(self) -> None:
        """At start: what the operator set before the last stop."""
        self.states, problem = open_states(self.path)
        if problem:
            log.warning("%s", problem)
        if self.states is not None:
            log.info("destination states set by the operator are kept in %s", self.path)

    def restore(self, dests: Iterable[Destination], fresh: Callable[[Destination], bool], *, prune: bool) -> None:
        """Give the destinations whose flags come from the file (`fresh`) the state the
        operator set; `prune`: the list file was loaded (a record naming none of its
        destinations goes)."""
        if self.states is None:
            return
        done = self.states.restore(dests, fresh, prune=prune)
        for line in done.report(self.path)[:len(done.applied)]:
            log.info("%s", line)
        for line in done.report(self.path)[len(done.applied):]:
            log.warning("%s", line)
        if done.dropped:
            self.save_soon()

    def note(self, dest: Destination, by: str) -> None:
        """The operator set `dest`'s state (`by`: the command)."""
        if self.states is not None and self.states.note(dest, by, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())):
            self.save_soon()

    def save_soon(self) -> None:
        if not self._saving:
            self._saving = True
            self._spawn(self._save)

    def flush(self) -> None:
        """Write now what `save_soon` would write (at the stop: a state set just before it
        is on disk)."""
        self._save()

    def _save(self) -> None:
        if not self._saving or self.states is None:
            return
        self._saving = False
        try:
            write_states(self.path, self.states)
        except OSError as e:
            log.error("%s: cannot write the operator's states (%s); they hold until the process stops",
                      self.path, e.strerror or e)
