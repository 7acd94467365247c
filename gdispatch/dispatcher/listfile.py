"""Reading ``dispatcher.list`` files in Kamailio's format.

Grammar (one destination per line; blank lines and lines starting with ``#`` are
comments)::

    setid destination [flags [priority [attrs]]]

``setid`` and ``priority`` are decimal, ``flags`` decimal or ``0x`` hex, ``destination`` a
SIP URI (a missing ``sip:`` scheme is added, as Kamailio does) that ends at white space or
``#``, ``attrs`` one white-space-free ``name=value;...`` token (names case-insensitive).
Unlike Kamailio there is no 1,024-byte line limit, and every problem is reported with
``file:line``.

Parsing is pure: it turns text into a `DispatcherList` or raises `ListError` with every
problem found. Name resolution is left to the caller.
"""

from __future__ import annotations

import re

from gdispatch.dispatcher.destination import Destination, DispatcherList, DispatcherSet
from gdispatch.sip import ParseError, parse_uri

_DIGITS = re.compile(r"\d+")


class ListError(ValueError):
    """The list file cannot be loaded; `problems` holds one "file:line: what" per issue."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def parse_attrs(token: str) -> dict[str, str]:
    """``a=1;B=two;flag`` → {"a": "1", "b": "two", "flag": ""} (names lowercased)."""
    out: dict[str, str] = {}
    for part in token.split(";"):
        part = part.strip()
        if not part:
            continue
        name, _, value = part.partition("=")
        out[name.strip().lower()] = value.strip()
    return out


def parse_line(text: str, where: str) -> Destination | None:
    """One line → a Destination, None for a comment or blank line; ValueError otherwise."""
    line = text.strip(" \t\r\n")
    if not line or line.startswith("#"):
        return None
    m = _DIGITS.match(line)
    if not m:
        raise ValueError("a line must start with a set id (a decimal number)")
    setid = int(m.group())
    rest = line[m.end():].lstrip(" \t")
    if not rest or rest.startswith("#"):
        raise ValueError("set id without a destination")
    # The destination ends at white space or '#'.
    end = len(rest)
    for i, ch in enumerate(rest):
        if ch in " \t#":
            end = i
            break
    uri = rest[:end]
    rest = rest[end:]
    fields = [] if rest.lstrip(" \t").startswith("#") else rest.split()
    if not uri.lower().startswith(("sip:", "sips:")):
        uri = "sip:" + uri  # as Kamailio does ("uri without sip scheme - fixing it")
    try:
        sip_uri = parse_uri(uri)
    except ParseError as e:
        raise ValueError(f"bad destination URI {uri!r}: {e.reason}") from None
    if sip_uri.scheme not in ("sip", "sips"):
        raise ValueError(f"bad destination URI {uri!r}: scheme must be sip or sips")
    flags = 0
    priority = 0
    attrs = ""
    if fields:
        tok = fields[0]
        try:
            flags = int(tok[2:], 16) if tok.startswith("0x") else int(tok, 10)
        except ValueError:
            raise ValueError(f"bad flags {tok!r}: expected a decimal or 0x-hex number") from None
        if flags < 0:
            raise ValueError(f"bad flags {tok!r}: must not be negative")
    if len(fields) > 1:
        tok = fields[1]
        if not tok.isdigit():
            raise ValueError(f"bad priority {tok!r}: expected a decimal number")
        priority = int(tok)
    if len(fields) > 2:
        attrs = fields[2]
    return Destination(
        setid=setid, uri=uri, sip_uri=sip_uri, flags=flags, priority=priority,
        attrs=attrs, attr_map=parse_attrs(attrs), where=where,
    )


def parse_list(text: str, filename: str = "dispatcher.list") -> DispatcherList:
    """Parse a whole file; raises ListError listing every bad line."""
    problems: list[str] = []
    by_set: dict[int, list[Destination]] = {}
    seen: dict[tuple[int, str, str], str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        where = f"{filename}:{n}"
        try:
            d = parse_line(raw, where)
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        if d is None:
            continue
        key = (d.setid, d.uri, d.attr_map.get("duid", "") + "|" + d.attr_map.get("socket", ""))
        if key in seen:
            problems.append(f"{where}: duplicate destination {d.uri} in set {d.setid} "
                            f"(first at {seen[key]}); give each a distinct duid= attr")
            continue
        seen[key] = where
        by_set.setdefault(d.setid, []).append(d)
    if problems:
        raise ListError(problems)
    sets = {}
    for setid, dests in by_set.items():
        # Higher priority first; equal priorities keep file order (stable sort).
        dests.sort(key=lambda d: -d.priority)
        sets[setid] = DispatcherSet(setid, dests)
    return DispatcherList(sets, filename)


def load_list(path: str) -> DispatcherList:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ListError([f"{path}: cannot read: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise ListError([f"{path}: not UTF-8 text: {e}"]) from None
    return parse_list(text, path)
