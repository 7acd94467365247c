"""Editing a ``dispatcher.list`` file in place: what ``kamctl dispatcher show|add|rm``
do to Kamailio's database table, done to the file (``gdispatch list show|add|rm``, and
``dispatcher.add``/``dispatcher.remove`` with PERSIST=1).

Rules of every edit:

- Only the lines added or removed change. Every comment, blank line and other line is
  kept byte for byte, with its line ending (the one exception: a last line without a
  line ending gets one when a line is added after it).
- A new line is written by `listfile.format_line` (``setid uri flags priority [attrs]
  [# description]``), right after the last line of the same set, or at the end when the
  set is new; it uses the file's line ending.
- The result must load (`listfile.parse_list`, strict) before it replaces the file;
  otherwise nothing is written and `ListEditError` lists the problems. A file that did not
  load before the edit therefore has to be fixed first.
- Atomic: the new text goes to a temporary file in the same directory, is fsync'ed,
  gets the old file's mode (and owner, when permitted), and is renamed over the old one;
  the directory is fsync'ed. A symlink is followed: its target is what gets replaced.
- Two editors at once (two ``gdispatch list add``, or one and the running proxy) take
  turns: each holds an exclusive flock(2) on the file while it reads, checks and
  replaces it, and starts again if the file was replaced while it waited.

Parsing and formatting lines is listfile.py's; this module only splices lines.
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gdispatch.dispatcher.destination import Destination
from gdispatch.dispatcher.listfile import ListError, format_line, parse_line, parse_list

_BOM = b"\xef\xbb\xbf"


class ListEditError(Exception):
    """The edit of the list file was not made; the message says why (one problem a
    line). Not to be confused with `gdispatch.message_api.EditError`, a plugin's edit of
    a SIP message refused."""


@dataclass
class Row:
    """One destination line of the file, for `show`."""

    lineno: int
    dest: Destination


# -- reading --------------------------------------------------------------------------------


def _decode_line(raw: bytes, first: bool, where: str) -> str:
    if first and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ListEditError(f"{where}: not UTF-8 text ({e.reason})") from None


def _lines(content: bytes) -> list[bytes]:
    return content.splitlines(keepends=True)


def _parse(raw: bytes, i: int, path: str) -> Destination | None:
    """Line i (0-based) as a destination; None for comments, blank and bad lines."""
    where = f"{path}:{i + 1}"
    try:
        return parse_line(_decode_line(raw, i == 0, where), where)
    except ValueError:
        return None


def show(path: str) -> tuple[list[Row], list[str]]:
    """The destinations of the file in file order, and the problems of its bad lines
    ("file:line: what"). Raises ListEditError when the file cannot be read."""
    content = _read(path)
    rows = []
    problems = []
    for i, raw in enumerate(_lines(content)):
        where = f"{path}:{i + 1}"
        try:
            dest = parse_line(_decode_line(raw, i == 0, where), where)
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        if dest is not None:
            rows.append(Row(i + 1, dest))
    try:
        parse_list(_text(content), path)
    except ListError as e:  # also what no single line shows: duplicates
        problems += [p for p in e.problems if p not in problems]
    return rows, problems


def format_table(rows: list[Row]) -> str:
    """Rows as an aligned table with a header line (like ``kamctl dispatcher show``)."""
    table = [("LINE", "SETID", "DESTINATION", "FLAGS", "PRIORITY", "ATTRS", "DESCRIPTION")]
    for r in rows:
        d = r.dest
        table.append((str(r.lineno), str(d.setid), d.uri, str(d.file_flags), str(d.priority), d.attrs,
                      d.description))
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ListEditError(f"{path}: cannot read: {e.strerror or e}") from None


def _text(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ListEditError(f"not UTF-8 text: {e}") from None


# -- writing --------------------------------------------------------------------------------


@contextmanager
def _locked(path: str) -> Iterator[tuple[str, bytes, os.stat_result]]:
    """Hold an exclusive lock on the file; yields (real path, content, its stat)."""
    real = os.path.realpath(path)
    while True:
        try:
            f = open(real, "rb")
        except FileNotFoundError:
            raise ListEditError(f"{path}: no such file (create it first, e.g. touch {path})") from None
        except OSError as e:
            raise ListEditError(f"{path}: cannot open: {e.strerror or e}") from None
        with f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            st = os.fstat(f.fileno())
            try:
                now = os.stat(real)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                continue  # replaced by another editor while we waited: read the new one
            yield real, f.read(), st
            return


def write_atomic(real: str, data: bytes, st: os.stat_result | None = None) -> None:
    """Replace the file `real` with `data` so that a crash leaves the old file or the new
    one, never half of one: a temporary file in the same directory, fsync'ed, renamed over
    it, the directory fsync'ed. `st`: the file replaced, whose mode (and owner, when
    permitted) the new one takes; None for a new file (mode 0666 less the umask, as
    open(2) makes it)."""
    directory = os.path.dirname(real) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(real) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            if st is None:
                umask = os.umask(0o022)
                os.umask(umask)
                os.fchmod(f.fileno(), 0o666 & ~umask)
            else:
                os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode))
                try:
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
                except PermissionError:
                    pass  # not ours to give away; the file keeps our ownership
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, real)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)  # the rename itself survives a crash
    finally:
        os.close(dfd)


def _check(path: str, data: bytes) -> None:
    try:
        parse_list(_text(data), path)
    except ListError as e:
        raise ListEditError("\n".join([*e.problems, f"{path}: not changed: the file would not load after this edit"])) \
            from None


def _eol(lines: list[bytes]) -> bytes:
    for line in lines:
        if line.endswith(b"\r\n"):
            return b"\r\n"
        if line.endswith(b"\n"):
            return b"\n"
    return b"\n"


def new_line(setid: int, uri: str, flags: int = 0, priority: int = 0, attrs: str = "",
             description: str = "") -> str:
    """The list line for a destination, checked as the loader checks it. Raises
    ListEditError saying what is wrong."""
    for name, value in (("URI", uri), ("ATTRS", attrs)):
        if any(c in value for c in " \t\r\n") or (name == "URI" and "#" in value) or value.startswith("#"):
            raise ListEditError(f"{name} {value!r}: one word, without white space or '#'")
    if setid < 0 or flags < 0 or priority < 0:
        raise ListEditError("SETID, FLAGS and PRIORITY are whole numbers >= 0")
    text = f"{setid} {uri} {flags} {priority}" + (f" {attrs}" if attrs else "")
    try:
        dest = parse_line(text, "new line")
    except ValueError as e:
        raise ListEditError(str(e)) from None
    assert dest is not None
    dest.description = description
    try:
        return format_line(dest)
    except ValueError as e:
        raise ListEditError(str(e)) from None


def add_destination(path: str, setid: int, uri: str, flags: int = 0, priority: int = 0, attrs: str = "",
                    description: str = "") -> tuple[int, str]:
    """Add one destination line; returns (its line number, the line). Raises ListEditError."""
    line = new_line(setid, uri, flags, priority, attrs, description)
    with _locked(path) as (real, content, st):
        lines = _lines(content)
        eol = _eol(lines)
        at = len(lines)
        for i, raw in enumerate(lines):
            d = _parse(raw, i, path)
            if d is not None and d.setid == setid:
                at = i + 1
        if at > 0 and not lines[at - 1].endswith((b"\n", b"\r")):
            lines[at - 1] += eol
        lines.insert(at, line.encode() + eol)
        data = b"".join(lines)
        _check(path, data)
        write_atomic(real, data, st)
    return at + 1, line


def _same_uri(a: str, b: str) -> bool:
    def norm(u: str) -> str:
        return (u if u.lower().startswith(("sip:", "sips:")) else "sip:" + u).lower()

    return norm(a) == norm(b)


def remove_destination(path: str, setid: int, uri: str) -> list[tuple[int, str]]:
    """Remove every line of set `setid` with this URI (compared without regard to case;
    ``sip:`` assumed when missing); returns [(line number, line)] removed. Raises
    ListEditError when there is none, or when the result would not load."""
    with _locked(path) as (real, content, st):
        lines = _lines(content)
        kept = []
        removed = []
        for i, raw in enumerate(lines):
            d = _parse(raw, i, path)
            if d is not None and d.setid == setid and _same_uri(d.uri, uri):
                removed.append((i + 1, _decode_line(raw, i == 0, path).rstrip("\r\n")))
                continue
            kept.append(raw)
        if not removed:
            raise ListEditError(f"{path}: no destination {uri} in set {setid}")
        if removed[0][0] == 1 and content.startswith(_BOM) and kept:
            kept[0] = _BOM + kept[0]  # the byte-order mark belongs to the file, not the line
        data = b"".join(kept)
        _check(path, data)
        write_atomic(real, data, st)
    return removed
