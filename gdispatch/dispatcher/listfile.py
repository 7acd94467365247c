"""Reading and writing ``dispatcher.list`` files in Kamailio's format.

Grammar, as Kamailio reads it (one destination per line)::

    setid destination [flags [priority [attrs]]] [# description]

- Leading white space is skipped; an empty line or one whose first non-blank character is
  ``#`` is a comment.
- ``setid``: decimal digits, then white space.
- ``destination``: runs up to white space or ``#``. A missing ``sip:`` scheme is added, as
  Kamailio does ("uri without sip scheme - fixing it"). IPv6 hosts are written in
  brackets; ``;transport=`` and other URI parameters are kept in the URI.
- ``flags``: decimal, or hexadecimal with a lowercase ``0x`` prefix (``0x8``). Bits: 1
  inactive, 2 trying, 4 disabled, 8 probing, 16 no DNS resolution, 32 no ping.
- ``priority``: decimal digits. Higher goes first.
- ``attrs``: one token without white space, ``name=value;name=value``. Names are
  case-insensitive; ``#`` inside the token is literal (it is not a comment). The known
  attrs are checked (see `_ATTR_RULES`); any other attr is kept verbatim in
  `Destination.attrs` and `Destination.attr_map` for plugins, as Kamailio keeps it for
  the script.
- ``# description``: white space then ``#`` after the last column starts the
  destination's description, up to the end of the line (`Destination.description`).

The description. Kamailio's database table has a ``description`` column (``kamctl
dispatcher add 1 sip:mg1:5060 0 0 '' 'Media Gateway 1'``) but its file has none. This
module stores it as a trailing comment, written by `format_line` as::

    1 sip:mg1:5060 0 0 duid=mg1 # Media Gateway 1
    1 sip:mg2:5060 0 0 # Media Gateway 2

Kamailio 5.6.3, asked directly, loads both forms with the description ignored: after
attrs it skips the rest of the line, and after the flags or priority column a ``#``
ends the line ("no attrs given"). The other candidates were worse: a comment line above
the destination is ignored by Kamailio but cannot be told apart from an ordinary comment;
a ``desc=Media%20Gateway%201`` attr loads but lands in the attrs every script and
``dispatcher.list`` sees, needs escaping for spaces, and a quoted value with a space
(``desc="Media Gateway"``) makes Kamailio drop the destination. ``format_line`` always
writes the flags and priority columns, and a space before the ``#``: glued to the attrs
token (``duid=a#x``) the ``#`` would be part of the attrs in Kamailio.

Where gdispatch differs from Kamailio, on purpose: Kamailio silently does something odd
with each of the following; gdispatch reports an error naming ``file:line`` instead.

- A line not starting with a set id: Kamailio takes set id 0 and the token as the URI.
- A set id glued to the URI (``4sip:...``): Kamailio reads set 4.
- Flags that are not a number (``8abc``, ``0X8``, ``0xA``): Kamailio reads the leading
  digits and makes the rest the attrs (``0X8`` → flags 0, attrs ``X8``). Flags above 63
  (no such bit) are refused too. Kamailio 5.6 reads no hex at all (``0x8`` → flags 0,
  attrs ``x8``); `format_line` writes decimal so the files stay portable.
- A priority with a sign or letters (``-5``): Kamailio takes priority 0 and makes
  ``-5`` the attrs.
- Text after the attrs token not starting with ``#`` (``weight=50 duid=a``): Kamailio
  ignores it, silently dropping what was meant as attrs.
- Known attrs with unusable values (``weight=abc``, ``weight=150``, ``maxload=x``,
  ``rweight=0``, ``cc=2``): Kamailio uses 0, sometimes with a log line.
- The same destination twice in a set (same URI, ``duid`` and ``socket``): Kamailio loads
  both, and state changes by URI then hit the wrong one (kamailio#2527).
- A URI that does not parse, or not sip/sips.
- Lines longer than 1,024 bytes: Kamailio splits them into bogus extra lines; gdispatch
  has no limit.
- IPv6 destinations load (Kamailio skips them when ``dns_try_ipv6=0``).

Load mode, like Kamailio's ``ds_load_mode``: ``mode="strict"`` (the default) refuses
the whole file when any line is bad and raises `ListError` listing every problem;
``mode="skip"`` loads the good lines and returns the problems in
`DispatcherList.problems`, never dropping a line silently.

Order inside a set: priority descending. Kamailio puts destinations of equal priority in
REVERSE file order (its list is built ascending and copied backwards: the shipped example
orders set 1 as 7072, 7074, 7070). That order decides where a hash slot, a round-robin turn
and a priority tie land, so the proxy reproduces it by default (``[dispatcher]
kamailio_order = true``, passed here as ``kamailio_order=True``): a list moved from
Kamailio sends each call where Kamailio sent it. ``kamailio_order=False``, this
function's own default, keeps equal priorities in file order.

Sockets: given the proxy's listen addresses (`sockets`, a
gdispatch.dispatcher.sockets.SocketTable), a line whose ``socket``, ``sockname`` or
``ping_socket`` names none of them is a bad line, as Kamailio skips it ("unable to add
destination"), and each destination gets the sockets it leaves from. Without them (a
file checked offline) the attrs are only checked for their form.

Parsing is pure: text in, a `DispatcherList` out. Name resolution is left to the caller.
"""

from __future__ import annotations

import re

from gdispatch.dispatcher.destination import (
    FLAGS_ALL,
    Destination,
    DispatcherList,
    DispatcherSet,
    parse_attrs,
    split_attrs,
)
from gdispatch.dispatcher.sockets import SocketTable
from gdispatch.sip import ParseError, parse_uri

__all__ = [
    "ListError",
    "format_line",
    "load_list",
    "parse_attrs",
    "parse_line",
    "parse_list",
]

MODES = ("strict", "skip")
_INT_MAX = 2**31 - 1  # Kamailio keeps set ids and priorities in a C int
_BLANK = " \t\r\n"
_HEX = re.compile(r"0x[0-9a-fA-F]+\Z")
_SOCKET = re.compile(
    r"(?:(?:udp|tcp|tls|sctp|ws|wss):)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?::[0-9]{1,5})?\Z", re.IGNORECASE
)


class ListError(ValueError):
    """The list file cannot be loaded; `problems` holds one "file:line: what" per issue."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# -- attrs --------------------------------------------------------------------------------


def _whole_number(low: int, high: int | None, meaning: str):
    def check(value: str) -> str | None:
        if value.isdigit() and int(value) >= low and (high is None or int(value) <= high):
            return None
        allowed = f"a whole number from {low} to {high}" if high is not None else f"a whole number >= {low}"
        return f"must be {allowed} ({meaning})"

    return check


def _non_empty(meaning: str):
    def check(value: str) -> str | None:
        return None if value else f"must not be empty ({meaning})"

    return check


def _socket(value: str) -> str | None:
    if _SOCKET.match(value):
        return None
    return "must be [proto:]host[:port], e.g. udp:192.0.2.1:5060 (a local listen address)"


def _sip_uri(value: str) -> str | None:
    try:
        uri = parse_uri(value)
    except ParseError:
        return "must be a SIP URI, e.g. sip:proxy.example.com"
    return None if uri.scheme in ("sip", "sips") else "must be a sip: or sips: URI"


# The attrs Kamailio itself interprets, and what each accepts. Anything else is opaque.
_ATTR_RULES = {
    "duid": _non_empty("the destination's unique id"),
    "weight": _whole_number(1, 100, "alg 9 percentage / alg 15 weight"),
    "rweight": _whole_number(1, 100, "alg 11 relative weight"),
    "maxload": _whole_number(0, None, "alg 10 call limit, 0 = unlimited"),
    "cc": _whole_number(0, 1, "congestion control off/on"),
    "latency": _whole_number(0, None, "initial latency estimate in ms"),
    "ocmin": _whole_number(0, 100, "overload control minimum rate"),
    "ocmax": _whole_number(0, 100, "overload control maximum rate"),
    "ocrate": _whole_number(0, 100, "overload control rate"),
    "socket": _socket,
    "ping_socket": _socket,
    "sockname": _non_empty("a listen socket name"),
    "ping_from": _sip_uri,
    "obproxy": _sip_uri,
}


def _check_attrs(token: str) -> tuple[dict[str, str], list[str]]:
    try:
        pairs = split_attrs(token)
    except ValueError as e:
        return {}, [f"bad attrs: {e}"]
    problems = []
    seen: set[str] = set()
    for name, value in pairs:
        if not name:
            problems.append(f"bad attrs {token!r}: an attr without a name ({'=' + value!r})")
            continue
        rule = _ATTR_RULES.get(name)
        if rule is None:
            continue
        if name in seen:
            problems.append(f"bad attrs {token!r}: {name} is given twice")
            continue
        seen.add(name)
        why = rule(value)
        if why:
            problems.append(f"bad attr {name}={value}: {why}")
    return dict(pairs), problems


# -- one line -----------------------------------------------------------------------------


def _skip_blank(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in _BLANK:
        i += 1
    return i


def _column(s: str, i: int, stops: str) -> int:
    """End of the column starting at i: the first character in `stops`, or the end."""
    n = len(s)
    while i < n and s[i] not in stops:
        i += 1
    return i


def parse_line(text: str, where: str, sockets: SocketTable | None = None) -> Destination | None:
    """One line → a Destination, None for a comment or blank line. Raises ValueError
    saying what is wrong (without the "file:line: " prefix). With `sockets`, its socket
    attrs must name listen addresses, and give it `send_socket` and `ping_socket`."""
    line = text
    i = _skip_blank(line, 0)
    if i == len(line) or line[i] == "#":
        return None
    # set id
    j = i
    while j < len(line) and line[j].isdigit() and line[j].isascii():
        j += 1
    if j == i:
        word = line[i:_column(line, i, _BLANK)]
        raise ValueError(f"a line must start with a set id (a decimal number), not {word!r}")
    if j < len(line) and line[j] not in _BLANK and line[j] != "#":
        raise ValueError(f"the set id {line[i:j]} must be followed by white space, then the destination")
    setid = int(line[i:j])
    if setid > _INT_MAX:
        raise ValueError(f"set id {setid} is too large (at most {_INT_MAX})")
    i = _skip_blank(line, j)
    if i == len(line) or line[i] == "#":
        raise ValueError(f"set id {setid} without a destination")
    # destination: up to white space or '#'
    j = _column(line, i, _BLANK + "#")
    uri = line[i:j]
    if not uri.lower().startswith(("sip:", "sips:")):
        uri = "sip:" + uri  # as Kamailio does ("uri without sip scheme - fixing it")
    try:
        sip_uri = parse_uri(uri)
    except ParseError:
        raise ValueError(f"bad destination URI {line[i:j]!r}: not a valid sip: or sips: URI") from None
    # flags, priority: each up to white space or '#'; attrs: up to white space only
    columns: list[str] = []
    description = ""
    i = _skip_blank(line, j)
    while i < len(line):
        if line[i] == "#":
            description = line[i + 1 :].strip(_BLANK)
            break
        if len(columns) == 3:
            rest = line[i:].rstrip(_BLANK)
            raise ValueError(
                f"unexpected text after the attrs: {rest!r} (attrs are one token without spaces; "
                "start a description with '#')"
            )
        j = _column(line, i, _BLANK if len(columns) == 2 else _BLANK + "#")
        columns.append(line[i:j])
        i = _skip_blank(line, j)
    flags = priority = 0
    attrs = ""
    if columns:
        tok = columns[0]
        if tok.isdigit() and tok.isascii():
            flags = int(tok)
        elif _HEX.match(tok):
            flags = int(tok[2:], 16)
        else:
            raise ValueError(f"bad flags {tok!r}: expected a decimal number or 0x-prefixed hex (e.g. 8 or 0x8)")
        if flags > FLAGS_ALL:
            raise ValueError(
                f"bad flags {tok!r}: {flags} has bits no flag uses (1 inactive, 2 trying, 4 disabled, "
                f"8 probing, 16 no DNS, 32 no ping; at most {FLAGS_ALL})"
            )
    if len(columns) > 1:
        tok = columns[1]
        if not (tok.isdigit() and tok.isascii()):
            raise ValueError(f"bad priority {tok!r}: expected a whole number >= 0 (higher goes first)")
        priority = int(tok)
        if priority > _INT_MAX:
            raise ValueError(f"bad priority {tok!r}: at most {_INT_MAX}")
    attr_map: dict[str, str] = {}
    if len(columns) > 2:
        attrs = columns[2]
        attr_map, problems = _check_attrs(attrs)
        if problems:
            raise ValueError("; ".join(problems))
    dest = Destination(
        setid=setid, uri=uri, sip_uri=sip_uri, flags=flags, priority=priority,
        attrs=attrs, attr_map=attr_map, where=where, description=description,
    )
    if sockets is not None:
        dest.send_socket, dest.ping_socket = sockets.for_destination(dest)
    return dest


def format_line(dest: Destination) -> str:
    """The destination as one list-file line that gdispatch and Kamailio both load:
    ``setid uri flags priority [attrs] [# description]``, flags as the file gave them
    (`file_flags`, not the runtime state), in decimal. `parse_line` reads it back to the
    same set id, URI, flags, priority, attrs and description. Raises ValueError for what
    no line can hold (white space or '#' in the URI, white space in the attrs, attrs
    starting with '#', a line break in the description)."""
    if not dest.uri or any(c in dest.uri for c in _BLANK + "#"):
        raise ValueError(f"URI {dest.uri!r} cannot be written: it holds white space or '#'")
    if any(c in dest.attrs for c in _BLANK) or dest.attrs.startswith("#"):
        raise ValueError(f"attrs {dest.attrs!r} cannot be written: one token, no white space, not starting with '#'")
    description = dest.description.strip(" \t")
    if "\n" in description or "\r" in description:
        raise ValueError("a description must fit on one line")
    parts = [str(dest.setid), dest.uri, str(dest.file_flags), str(dest.priority)]
    if dest.attrs:
        parts.append(dest.attrs)
    if description:
        parts.append("# " + description)
    return " ".join(parts)


# -- whole files --------------------------------------------------------------------------


def _same_destination_key(d: Destination) -> tuple[int, str, str, str]:
    return (d.setid, d.uri, d.duid, d.socket)


def parse_list(
    text: str,
    filename: str = "dispatcher.list",
    *,
    mode: str = "strict",
    kamailio_order: bool = False,
    sockets: SocketTable | None = None,
) -> DispatcherList:
    """Parse a whole file.

    `mode="strict"`: raise ListError listing every bad line. `mode="skip"`: leave the bad
    lines out and list them in the result's `problems`. `kamailio_order=True`: equal
    priorities in reverse file order, as Kamailio orders them (the proxy's default,
    `Config.kamailio_order`); False: in file order. `sockets`: the listen addresses the
    socket attrs must name (`parse_line`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    problems: list[str] = []
    by_set: dict[int, list[Destination]] = {}
    seen: dict[tuple[int, str, str, str], str] = {}
    duids: dict[tuple[int, str], str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        where = f"{filename}:{n}"
        try:
            d = parse_line(raw, where, sockets)
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        if d is None:
            continue
        key = _same_destination_key(d)
        if key in seen:
            problems.append(
                f"{where}: duplicate destination {d.uri} in set {d.setid}: same URI, duid and socket "
                f"as {seen[key]}; give each a distinct duid= attr"
            )
            continue
        seen[key] = where
        if d.duid:
            # set_duid_state and the logs name a destination by its duid: two records
            # of one set with the same duid could not be told apart.
            first = duids.setdefault((d.setid, d.duid.lower()), where)  # matched without case
            if first != where:
                problems.append(f"{where}: duplicate duid={d.duid} in set {d.setid}, also at {first}; "
                                f"a duid names one destination of its set")
                continue
        by_set.setdefault(d.setid, []).append(d)
    if problems and mode == "strict":
        raise ListError(problems)
    sets = {}
    for setid, dests in by_set.items():
        if kamailio_order:
            dests.reverse()
        dests.sort(key=lambda d: -d.priority)  # stable: ties keep the order they are in
        sets[setid] = DispatcherSet(setid, dests)
    return DispatcherList(sets, filename, problems, text)


def load_list(path: str, *, mode: str = "strict", kamailio_order: bool = False,
              sockets: SocketTable | None = None) -> DispatcherList:
    """Read and parse a list file (see `parse_list`); an unreadable file is a ListError."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as e:
        raise ListError([f"{path}: cannot read: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise ListError([f"{path}: not UTF-8 text: {e}"]) from None
    return parse_list(text, path, mode=mode, kamailio_order=kamailio_order, sockets=sockets)
