"""The control commands: Kamailio's dispatcher RPC methods, by Kamailio's names and
arguments, and ours, as plain functions over the running application.

What lives here: the `ControlApi` protocol (all the methods need from the application),
the methods themselves (`call` runs one by name), the structure of ``dispatcher.list``,
and what PERSIST means to ``dispatcher.add``/``dispatcher.remove``. What does not:
JSON-RPC framing (jsonrpc.py), sockets (server.py, client.py), kamcmd's presentation
(client.py), the state machine of probing (gdispatch.probing.policy), editing the list
file (gdispatch.listedit).

Faults are `RpcError(code, message, data)`. `message` is Kamailio's text where Kamailio
has one ("Invalid Parameters", "Unknown State Value", "State Update Failed", ...), so
scripts written against kamcmd keep matching; `data` says what exactly was wrong.

Methods (arguments in brackets are optional):

- ``dispatcher.list [short|full]``
- ``dispatcher.reload``
- ``dispatcher.set_state STATE GROUP ADDRESS|all``
- ``dispatcher.set_duid_state STATE GROUP DUID|all``
- ``dispatcher.ping_active [0|1]``
- ``dispatcher.add GROUP ADDRESS [FLAGS [PRIORITY [ATTRS [DESCRIPTION [PERSIST]]]]]``
- ``dispatcher.remove GROUP ADDRESS [PERSIST]``
- ``dispatcher.hash NSLOTS VAL1 [VAL2]``
- ``core.version``, ``core.uptime``, ``stats``, ``system.listMethods``,
  ``system.methodHelp METHOD``

Where gdispatch differs from Kamailio, on purpose:

- ``dispatcher.add`` takes two more optional arguments: DESCRIPTION (the text kamctl
  keeps in its database column; here the ``# ...`` comment of the list line) and PERSIST
  (1: also write the destination to the list file, so a reload keeps it; default 0, in
  memory only as in Kamailio). ``dispatcher.remove`` takes PERSIST too. The destination
  is checked like a list-file line first (URI, flags, attrs, duplicates), where Kamailio
  adds whatever it can parse.
- ``dispatcher.remove`` of a destination that is not there is a fault ("Removing
  dispatcher dst failed"); Kamailio answers "Ok".
- ``dispatcher.set_state`` on a set or address that does not exist is a fault ("State
  Update Failed") also with ``all``; it updates every destination of the set with that
  URI (Kamailio: only the first); an address without a scheme gets ``sip:`` as in the
  list file. It writes the state bits 1, 2, 4 and 8 and keeps 16 (no DNS) and 32 (no
  ping), which are configuration; Kamailio clears those too.
- State strings: Kamailio's RPC reads only the first character (``0``-``3`` or
  ``a``/``i``/``d``/``t``) and a ``p`` after it. gdispatch reads the whole string:
  a digit 0-3 with an optional ``p`` as Kamailio does, or letters combined as in
  Kamailio's script functions (``a`` clears, ``i``, ``d``, ``t``, ``p`` add), and it
  accepts the two letters ``dispatcher.list`` shows (``AP``, ``DX``, ``IP``, ``AN``: a
  trailing ``x`` or ``n`` means "not probing"). Anything else is "Unknown State Value"
  where Kamailio silently takes the first letter.
- ``dispatcher.ping_active`` accepts only 0 and 1.
- ``dispatcher.list`` lists sets by ascending id (Kamailio: its tree's post-order),
  refuses a mode other than short/full, prints ``LATENCY`` for destinations that have
  probe statistics and ``RUNTIME`` always, and adds ``DESCRIPTION`` (a name Kamailio does
  not use) after Kamailio's fields when the destination has one.
- Extra arguments are a fault; Kamailio ignores them.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gdispatch import listedit
from gdispatch.control.jsonrpc import INVALID_REQUEST, METHOD_NOT_FOUND, RpcError
from gdispatch.dispatcher.destination import (
    FLAG_DISABLED,
    FLAG_INACTIVE,
    FLAG_PROBING,
    FLAG_TRYING,
    Destination,
    DispatcherList,
)
from gdispatch.dispatcher.hashing import as_signed, kamailio_hash
from gdispatch.dispatcher.listfile import ListError, format_line, parse_line
from gdispatch.dispatcher.sockets import SocketTable


class ControlApi(Protocol):
    """What the RPC methods need from the running application.

    The methods run in the control server's greenlets, one request at a time per
    connection; they must not block the hub for long (reading the list file is fine).
    """

    #: The gdispatch version, e.g. "0.1.0" (``core.version``).
    version: str
    #: When the process started, as time.time() (``core.uptime``).
    started_at: float
    #: Whether keepalive pings are sent (``dispatcher.ping_active``). Settable: False
    #: pauses every ping, True resumes them; the states stay as they are meanwhile.
    ping_active: bool

    @property
    def sockets(self) -> SocketTable | None:
        """The listen addresses a destination's socket attrs must name
        (gdispatch.dispatcher.sockets); None: not checked."""
        ...

    def current_list(self) -> DispatcherList:
        """The list in use, whose destinations carry their live state. The methods read
        it and ``set_state`` assigns `Destination.flags` on its destinations."""
        ...

    @property
    def list_file(self) -> str:
        """The list file's path, which PERSIST=1 edits (gdispatch.listedit)."""
        ...

    def reload(self, reason: str = ...) -> object:
        """Load the list file again and swap it in, keeping the state of the
        destinations that stay; `reason` is for the log and the hooks. On a bad file,
        keep the current list and raise ListError (`call` turns it into RpcError(500,
        "Reload Failed: <file:line: what>", data=[every problem])) or that RpcError."""
        ...

    def replace_list(self, text: str, reason: str) -> None:
        """Swap in the running list changed by hand (``dispatcher.add``/``remove``
        without PERSIST), given as list-file text, keeping the state of the destinations
        that stay as a reload does. Like Kamailio, such a change lasts until the next
        reload of the file."""
        ...

    def state_changed(self, dest: Destination, old_flags: int, reason: str) -> None:
        """Called after an RPC changed `dest.flags` (from `old_flags`), so the
        application logs it and fires its hooks. `reason` names the command, e.g.
        "rpc dispatcher.set_state dx"."""
        ...

    def stats(self) -> dict:
        """Counters and gauges for the ``stats`` method, as JSON-ready values."""
        ...


# Kamailio's fault texts.
INVALID_PARAMETERS = "Invalid Parameters"

# The state bits an RPC writes; 16 (no DNS) and 32 (no ping) are configuration.
STATE_BITS = FLAG_INACTIVE | FLAG_TRYING | FLAG_DISABLED | FLAG_PROBING

# Kamailio's proto ids, for PROTOID of ``dispatcher.list full``.
_PROTO_IDS = {"udp": 1, "tcp": 2, "tls": 3, "sctp": 4, "ws": 5, "wss": 6}


# -- the method table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    kind: type  # int or str
    required: bool = True


@dataclass(frozen=True)
class Method:
    name: str
    func: Callable[..., Any]
    params: tuple[Param, ...]
    doc: str

    @property
    def usage(self) -> str:
        words = [self.name]
        optional = 0
        for p in self.params:
            if p.required:
                words.append(p.name)
            else:
                words.append("[" + p.name)
                optional += 1
        return " ".join(words) + "]" * optional


METHODS: dict[str, Method] = {}


def _method(name: str, doc: str, *params: Param):
    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        METHODS[name] = Method(name, func, params, doc)
        return func

    return register


def _invalid(detail: str) -> RpcError:
    return RpcError(500, INVALID_PARAMETERS, detail)


def _convert(param: Param, value: Any) -> Any:
    if param.kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            s = value.strip()
            try:
                return int(s, 16) if s[:2].lower() == "0x" else int(s, 10)
            except ValueError:
                pass
        raise _invalid(f"{param.name}: expected a whole number, got {value!r}")
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # kamcmd sends "5060" as a number; the method wants text
    raise _invalid(f"{param.name}: expected a string, got {value!r}")


def _bind(method: Method, params: Any) -> list[Any]:
    """JSON-RPC params (absent, positional or by name) → the method's arguments."""
    if params is None:
        params = []
    if isinstance(params, dict):
        by_name = {k.lower(): v for k, v in params.items()}
        names = {p.name.lower() for p in method.params}
        unknown = sorted(set(by_name) - names)
        if unknown:
            raise _invalid(f"unknown parameter {unknown[0]!r}; usage: {method.usage}")
        values = []
        for p in method.params:
            if p.name.lower() in by_name:
                values.append(by_name[p.name.lower()])
            else:
                break
        if len(values) != len(by_name):
            raise _invalid(f"parameters can only be left out from the end; usage: {method.usage}")
        params = values
    if not isinstance(params, list):
        raise RpcError(INVALID_REQUEST, "Invalid Request", "params must be an array or an object")
    required = sum(1 for p in method.params if p.required)
    if len(params) < required:
        raise _invalid(f"usage: {method.usage}")
    if len(params) > len(method.params):
        raise _invalid(f"too many parameters; usage: {method.usage}")
    return [_convert(p, v) for p, v in zip(method.params, params)]


def call(api: ControlApi, method: str, params: Any = None) -> Any:
    """Run one method; returns its JSON-ready result or raises RpcError."""
    m = METHODS.get(method) if isinstance(method, str) else None
    if m is None:
        raise RpcError(METHOD_NOT_FOUND, f"command {method} not found")
    args = _bind(m, params)
    try:
        return m.func(api, *args)
    except ListError as e:  # an application that let the loader's error through
        raise _reload_failed(e.problems) from None


def _reload_failed(problems: list[str]) -> RpcError:
    first = problems[0] if problems else "the list file did not load"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return RpcError(500, f"Reload Failed: {first}{more}", problems)


# -- dispatcher.list -------------------------------------------------------------------------


def _str_or_null(value: str) -> str | None:
    return value or None  # Kamailio's "<null string>"


def _int_attr(dest: Destination, name: str, default: int) -> int:
    v = dest.attr_map.get(name, "")
    return int(v) if v.isdigit() else default


def _dest_structure(dest: Destination, mode: str) -> dict[str, Any]:
    probe = getattr(dest, "probe", None)  # gdispatch.probing.policy.ProbeState, when probed
    d: dict[str, Any] = {
        "IDX": dest.index,
        "URI": dest.uri,
        "FLAGS": dest.state_letters(),
        "PRIORITY": dest.priority,
        "IUID": getattr(probe, "iuid", None),
    }
    if mode == "full":
        uri = dest.sip_uri
        addr = dest.address
        d.update({
            "HOST": f"[{uri.host}]" if uri.is_ipv6 else uri.host,
            "IPADDR": addr[0] if addr else "",
            "PORT": addr[1] if addr else (uri.port or 0),
            "PROTOID": _PROTO_IDS.get(uri.params.get("transport") or "", 3 if uri.scheme == "sips" else 0),
            "DNSTIME_SEC": 0,
            "DNSTIME_USEC": 0,
            "OCRATE": 0,
            "OCIDX": 0,
            "OCSEQ": 0,
            "OCTIME_SEC": 0,
            "OCTIME_USEC": 0,
        })
    if (mode == "normal" and dest.attrs) or mode == "full":
        m = dest.attr_map
        d["ATTRS"] = {
            "BODY": dest.attrs,
            "DUID": _str_or_null(dest.duid),
            "PROBING_COUNT": getattr(probe, "failures", 0),
            "MAXLOAD": dest.maxload,
            "WEIGHT": dest.weight,
            "RWEIGHT": dest.rweight,
            "SOCKET": _str_or_null(dest.socket),
            "SOCKNAME": _str_or_null(m.get("sockname", "")),
            "PING_SOCKET": _str_or_null(m.get("ping_socket", "")),
            "OBPROXY": _str_or_null(m.get("obproxy", "")),
            "OCMIN": _int_attr(dest, "ocmin", 0),
            "OCMAX": _int_attr(dest, "ocmax", 100),
        }
    if probe is not None:
        d["LATENCY"] = probe.latency.as_dict()
    d["RUNTIME"] = {"DLGLOAD": dest.load + dest.load_elsewhere}
    if mode != "short" and dest.description:
        d["DESCRIPTION"] = dest.description
    return d


def list_structure(dlist: DispatcherList, mode: str = "normal") -> dict[str, Any]:
    """``dispatcher.list`` as Kamailio builds it: {NRSETS, RECORDS: [{SET: {ID,
    TARGETS: [{DEST: {...}}]}}]}; `mode` is "short", "normal" or "full"."""
    records = []
    for setid in sorted(dlist.sets):
        dset = dlist.sets[setid]
        targets = [{"DEST": _dest_structure(dest, mode)} for dest in dset.destinations]
        records.append({"SET": {"ID": setid, "TARGETS": targets}})
    return {"NRSETS": len(records), "RECORDS": records}


@_method("dispatcher.list", "Return the content of dispatcher sets", Param("MODE", str, False))
def dispatcher_list(api: ControlApi, mode: str = "") -> dict[str, Any]:
    m = mode.lower()
    if m not in ("", "short", "full"):
        raise _invalid(f"MODE: expected short or full, got {mode!r}")
    dlist = api.current_list()
    if dlist is None or not dlist.sets:
        raise RpcError(500, "No Destination Sets")
    return list_structure(dlist, m or "normal")


# -- reload, add, remove -------------------------------------------------------------------------


@_method("dispatcher.reload", "Reload dispatcher destination sets")
def dispatcher_reload(api: ControlApi) -> str:
    api.reload()
    return "Ok. Dispatcher successfully reloaded."


def _with_scheme(uri: str) -> str:
    """As the list file reads a destination: ``sip:`` added when it has no scheme."""
    return uri if uri.lower().startswith(("sip:", "sips:")) else "sip:" + uri


def _zero_or_one(value: int, name: str) -> bool:
    if value not in (0, 1):
        raise _invalid(f"{name}: expected 0 or 1, got {value}")
    return bool(value)


def _list_text(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _add(api: ControlApi, setid: int, uri: str, flags: int, priority: int, attrs: str, description: str,
         persist: bool) -> None:
    """Add a destination, already checked as one list-file line would be and not in the
    list yet: to the running list, or with `persist` to the list file, which is then
    reloaded so that the running list is what the file says. Raises ListEditError."""
    if persist:
        listedit.add_destination(api.list_file, setid, uri, flags, priority, attrs, description)
        api.reload("dispatcher.add")
        return
    lines = [format_line(d) for d in api.current_list().destinations()]
    lines.append(listedit.new_line(setid, uri, flags, priority, attrs, description))
    api.replace_list(_list_text(lines), "dispatcher.add")


def _remove(api: ControlApi, setid: int, uri: str, persist: bool) -> int:
    """Remove every destination of set `setid` with this URI (compared without regard
    to case) from the running list, or with `persist` from the list file, then reloaded
    from it. Returns how many the running list had. Raises ListEditError."""
    def same(d: Destination) -> bool:
        return d.setid == setid and d.uri.lower() == uri.lower()

    dlist = api.current_list()
    count = sum(1 for d in dlist.destinations() if same(d))
    if persist:
        listedit.remove_destination(api.list_file, setid, uri)
        api.reload("dispatcher.remove")
        return count
    api.replace_list(_list_text([format_line(d) for d in dlist.destinations() if not same(d)]), "dispatcher.remove")
    return count


@_method("dispatcher.add", "Add a destination address in memory (PERSIST=1: and in the list file)",
         Param("GROUP", int), Param("ADDRESS", str), Param("FLAGS", int, False), Param("PRIORITY", int, False),
         Param("ATTRS", str, False), Param("DESCRIPTION", str, False), Param("PERSIST", int, False))
def dispatcher_add(api: ControlApi, group: int, address: str, flags: int = 0, priority: int = 0, attrs: str = "",
                   description: str = "", persist: int = 0) -> str:
    keep = _zero_or_one(persist, "PERSIST")
    failed = "Adding dispatcher dst failed"
    for name, value in (("ADDRESS", address), ("ATTRS", attrs)):
        if any(c in value for c in " \t\r\n") or value.startswith("#") or (name == "ADDRESS" and "#" in value):
            raise RpcError(500, failed, f"{name} {value!r}: one word, without white space or '#'")
    if "\n" in description or "\r" in description:
        raise RpcError(500, failed, "DESCRIPTION must fit on one line")
    if group < 0 or flags < 0 or priority < 0:
        raise RpcError(500, failed, "GROUP, FLAGS and PRIORITY are whole numbers >= 0")
    line = f"{group} {address} {flags} {priority}" + (f" {attrs}" if attrs else "")
    try:
        dest = parse_line(line, "dispatcher.add", api.sockets)
    except ValueError as e:
        raise RpcError(500, failed, str(e)) from None
    assert dest is not None
    dlist = api.current_list()
    dset = dlist.get(group) if dlist is not None else None
    if dset is not None:
        for other in dset.destinations:
            if (other.uri.lower(), other.duid, other.socket) == (dest.uri.lower(), dest.duid, dest.socket):
                raise RpcError(500, failed, f"{dest.uri} is already in set {group} with the same duid and socket "
                                            "(give each a distinct duid= attr)")
    try:
        _add(api, group, dest.uri, flags, priority, attrs, description.strip(), keep)
    except listedit.ListEditError as e:
        raise RpcError(500, failed, str(e)) from None
    return "Ok. Dispatcher destination added."


@_method("dispatcher.remove", "Remove a destination address from memory (PERSIST=1: and from the list file)",
         Param("GROUP", int), Param("ADDRESS", str), Param("PERSIST", int, False))
def dispatcher_remove(api: ControlApi, group: int, address: str, persist: int = 0) -> str:
    keep = _zero_or_one(persist, "PERSIST")
    uri = _with_scheme(address)
    failed = "Removing dispatcher dst failed"
    try:
        removed = _remove(api, group, uri, keep)
    except listedit.ListEditError as e:
        raise RpcError(500, failed, str(e)) from None
    if removed <= 0:
        raise RpcError(500, failed, f"no destination {uri} in set {group}")
    return "Ok. Dispatcher destination removed."


# -- states --------------------------------------------------------------------------------------

_STATE_FORMS = ("a digit 0-3 (inactive, active, disabled, trying) optionally followed by p, "
                "or the letters a, i, d, t, p combined (e.g. ap, ip, dx)")
_DIGIT_STATES = {"0": FLAG_INACTIVE, "1": 0, "2": FLAG_DISABLED, "3": FLAG_TRYING}
_LETTER_STATES = {"i": FLAG_INACTIVE, "d": FLAG_DISABLED, "t": FLAG_TRYING, "p": FLAG_PROBING}


def parse_state(text: str) -> int:
    """A state string of ``dispatcher.set_state`` → the state bits (1, 2, 4, 8) to write.

    ``0``-``3`` = inactive, active, disabled, trying, then optionally ``p`` (probing;
    ignored after ``2``, as Kamailio does: a disabled destination is not pinged). Or
    letters, case-insensitive, combined like Kamailio's script functions: ``a`` clears
    what came before, ``i``, ``d``, ``t``, ``p`` add inactive, disabled, trying,
    probing; a final ``x`` or ``n`` (the second letter ``dispatcher.list`` shows) adds
    nothing. Raises RpcError "Invalid State Parameter" (empty) or "Unknown State Value".
    """
    s = text.strip().lower()
    if not s:
        raise RpcError(500, "Invalid State Parameter", "STATE is empty; " + _STATE_FORMS)
    unknown = RpcError(500, "Unknown State Value", f"{text!r}: expected " + _STATE_FORMS)
    if s[0] in _DIGIT_STATES:
        bits = _DIGIT_STATES[s[0]]
        rest = s[1:]
        if rest in ("", "x", "n"):
            return bits
        if rest == "p":
            return bits if s[0] == "2" else bits | FLAG_PROBING
        raise unknown
    if s[-1] in "xn" and len(s) > 1:
        s = s[:-1]
    bits = 0
    for c in s:
        if c == "a":
            bits = 0
        elif c in _LETTER_STATES:
            bits |= _LETTER_STATES[c]
        else:
            raise unknown
    return bits


def _set_state(api: ControlApi, method: str, state: str, group: int, target: str, by_duid: bool) -> str:
    bits = parse_state(state)
    failed = "State Update Failed"
    dlist = api.current_list()
    dset = dlist.get(group) if dlist is not None else None
    if dset is None:
        raise RpcError(500, failed, f"no set {group}")
    if target.lower() == "all":
        chosen = list(dset.destinations)
    elif by_duid:
        chosen = [d for d in dset.destinations if d.duid and d.duid.lower() == target.lower()]
        if not chosen:
            raise RpcError(500, failed, f"no destination with duid {target} in set {group}")
    else:
        uri = _with_scheme(target).lower()
        chosen = [d for d in dset.destinations if d.uri.lower() == uri]
        if not chosen:
            raise RpcError(500, failed, f"no destination {target} in set {group}")
    reason = f"rpc {method} {state}"
    changed = []
    for dest in chosen:
        old = dest.flags
        new = (old & ~STATE_BITS) | bits
        if new != old:
            dest.flags = new
            changed.append((dest, old))
    if changed:
        dset.state_changed()
    for dest, old in changed:
        api.state_changed(dest, old, reason)
    return "Ok. Dispatcher state updated."


@_method("dispatcher.set_state", "Set the state of a destination by address",
         Param("STATE", str), Param("GROUP", int), Param("ADDRESS", str))
def dispatcher_set_state(api: ControlApi, state: str, group: int, address: str) -> str:
    return _set_state(api, "dispatcher.set_state", state, group, address, by_duid=False)


@_method("dispatcher.set_duid_state", "Set the state of a destination by duid",
         Param("STATE", str), Param("GROUP", int), Param("DUID", str))
def dispatcher_set_duid_state(api: ControlApi, state: str, group: int, duid: str) -> str:
    return _set_state(api, "dispatcher.set_duid_state", state, group, duid, by_duid=True)


@_method("dispatcher.ping_active", "Manage setting on/off the pinging (keepalive) of destinations",
         Param("STATE", int, False))
def dispatcher_ping_active(api: ControlApi, state: int | None = None) -> dict[str, int]:
    old = int(bool(api.ping_active))
    if state is None:
        return {"OldPingState": old}
    api.ping_active = _zero_or_one(state, "STATE")
    return {"NewPingState": state, "OldPingState": old}


# -- hash, core, stats, system ---------------------------------------------------------------------


@_method("dispatcher.hash", "Compute the hash of the values",
         Param("NSLOTS", int), Param("VAL1", str), Param("VAL2", str, False))
def dispatcher_hash(api: ControlApi, nslots: int, val1: str, val2: str = "") -> dict[str, int]:
    h = kamailio_hash(val1.encode("utf-8", "surrogateescape"), val2.encode("utf-8", "surrogateescape"))
    return {"hashid": as_signed(h), "slot": h % nslots if nslots > 0 else 0}


@_method("core.version", "Returns the version string of the server")
def core_version(api: ControlApi) -> str:
    return f"gdispatch {api.version} ({platform.machine()}/{platform.system().lower()})"


@_method("core.uptime", "Returns uptime in seconds")
def core_uptime(api: ControlApi) -> dict[str, Any]:
    now = time.time()
    return {"now": time.ctime(now), "up_since": time.ctime(api.started_at), "uptime": int(now - api.started_at)}


@_method("stats", "Returns the proxy's counters and gauges")
def stats(api: ControlApi) -> Any:
    return api.stats()


@_method("system.listMethods", "Lists the RPC methods supported by the server")
def system_list_methods(api: ControlApi) -> list[str]:
    return sorted(METHODS)


@_method("system.methodHelp", "Returns the usage and help of a method", Param("METHOD", str))
def system_method_help(api: ControlApi, name: str) -> str:
    m = METHODS.get(name)
    if m is None:
        raise RpcError(METHOD_NOT_FOUND, f"command {name} not found")
    return f"{m.usage}\n{m.doc}"
