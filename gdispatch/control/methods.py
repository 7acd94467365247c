"""The control commands: Kamailio's dispatcher RPC methods, by Kamailio's names and
arguments, and ours, as plain functions over the running application.

What lives here: the `ControlApi` protocol (all the methods need from the application),
the methods themselves (`call` runs one by name), the structure of ``dispatcher.list``,
and what PERSIST means to ``dispatcher.add``/``dispatcher.remove``. What does not:
JSON-RPC framing (jsonrpc.py), sockets (server.py, client.py), kamcmd's presentation
(client.py), the state machine of probing (gdispatch.probing.policy), editing the list
file (gdispatch.listedit), what a state string means and which destinations a target
names (states.py).

Faults are `RpcError(code, message, data)`. `message` is Kamailio's text where Kamailio
has one ("Invalid Parameters", "Unknown State Value", "State Update Failed", ...), so
scripts written against kamcmd keep matching; `data` says what exactly was wrong.

Methods (arguments in brackets are optional):

- ``dispatcher.list [short|full|extended|cluster]``
- ``dispatcher.reload``
- ``dispatcher.set_state STATE GROUP ADDRESS|idx=N|duid=NAME|all``
- ``dispatcher.set_duid_state STATE GROUP DUID|all``
- ``dispatcher.ping_active [0|1]``
- ``dispatcher.add GROUP ADDRESS [FLAGS [PRIORITY [ATTRS [DESCRIPTION [PERSIST]]]]]``
- ``dispatcher.remove GROUP ADDRESS [PERSIST]``
- ``dispatcher.hash NSLOTS VAL1 [VAL2]``
- ``tls.list``, ``tls.reload`` (Kamailio's tls module)
- ``cluster.list``: the nodes sharing ``[cluster] redis`` (gdispatch.ha), or this one
- ``core.version``, ``core.uptime``, ``stats``, ``system.listMethods``,
  ``system.methodHelp METHOD``

``dispatcher.list`` without a mode, ``short`` and ``full`` answer Kamailio 5.6's structure
field for field (``ds_rpc_print_set``): the same names in the same order, present when
Kamailio's are, in the same units, sets in the order Kamailio prints them (its AVL tree in
post-order). ``LATENCY`` is always there: gdispatch always measures its pings, as Kamailio
with ``ds_ping_latency_stats=1``. ``RUNTIME {DLGLOAD}`` is there when a route dispatches by
call load (algorithm 10), as Kamailio's when ``ds_hash_size`` is set, which its algorithm 10
needs. ``extended`` is gdispatch's own: ``full`` with ``ATTRS``, ``LATENCY`` and ``RUNTIME``
always, then ``IDX`` (the position in the set, what ``idx=N`` names), ``IUID`` (the id in
the pings' From tag), ``PROBING_COUNT`` (failed pings in a row) and ``DESCRIPTION``.
``cluster`` is gdispatch's too: the list as without a mode, each ``DEST`` with ``NODES``,
every live node's letters, latency estimate and active calls for it (``[cluster] redis``;
without it, this node's alone).

Where gdispatch differs from Kamailio, on purpose:

- ``dispatcher.add`` takes two more optional arguments: DESCRIPTION (the text kamctl
  keeps in its database column; here the ``# ...`` comment of the list line) and PERSIST
  (1: also write the destination to the list file, so a reload keeps it; default 0, in
  memory only as in Kamailio). ``dispatcher.remove`` takes PERSIST too. The destination
  is checked like a list-file line first (URI, flags, attrs, duplicates), where Kamailio
  adds whatever it can parse. Neither refuses to run within ``ds_reload_delta`` of the
  last change ("Ongoing reload"). A remove of what is not there answers Ok, as
  Kamailio's, and changes nothing (Kamailio rebuilds its list all the same: its sets
  move, its equal priorities turn round).
- ``dispatcher.set_state`` by address updates every destination of the set with that URI
  (Kamailio: only the first); ``idx=N`` names one destination by its position (IDX of
  ``dispatcher.list extended``), ``duid=NAME`` the destinations with that duid (as
  ``dispatcher.set_duid_state``). On a set or destination that does not exist it is a
  fault ("State Update Failed") also with ``all``; an address without a scheme gets
  ``sip:`` as in the list file. It writes the state bits 1, 2, 4 and 8 and keeps 16 (no
  DNS) and 32 (no ping), which are configuration; Kamailio clears those too.
- State strings: Kamailio's RPC reads only the first character (``0``-``3`` or
  ``a``/``i``/``d``/``t``) and a ``p`` after it. gdispatch reads the whole string:
  a digit 0-3 with an optional ``p`` as Kamailio does, or letters combined as in
  Kamailio's script functions (``a`` clears, ``i``, ``d``, ``t``, ``p`` add), and it
  accepts the two letters ``dispatcher.list`` shows (``AP``, ``DX``, ``IP``, ``AN``: a
  trailing ``x`` or ``n`` means "not probing"). Anything else is "Unknown State Value"
  where Kamailio silently takes the first letter.
- ``dispatcher.ping_active`` accepts only 0 and 1.
- ``dispatcher.list`` refuses a mode other than short, full, extended and cluster (Kamailio
  lists as without one). Its values are gdispatch's: latency measured to the
  microsecond (Kamailio: whole milliseconds), the state of every destination of a URI
  (Kamailio applies a ping's answer to the first of them only), IPADDR empty while a
  name is not resolved (Kamailio does not load such a line).
- ``dispatcher.reload`` of a bad file is "Reload Failed" with every problem in the
  fault's data; Kamailio (``ds_load_mode`` 0) loads the good lines and answers Ok, as
  gdispatch with ``load_mode = "skip"``.
- A destination without an address to send to (its name does not resolve, no listen
  address can reach it, a transport gdispatch does not speak) stays in the list, shown
  ``IX`` (``DX`` if disabled), with ``REASON`` in ``full`` mode; ``dispatcher.reload``
  answers its "Ok" line, then one ``not usable: set N URI: why`` line for each. Kamailio
  leaves such a line out of the list and answers "Ok" alone.
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
from gdispatch.control.listing import cluster_structure, kamailio_set_order, list_structure
from gdispatch.control.states import INVALID_PARAMETERS, chosen_destinations, parse_state, with_scheme
from gdispatch.dispatcher.destination import (
    FLAGS_STATE,
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
    def call_load_routing(self) -> bool:
        """Whether a route dispatches by call load (algorithm 10). Kamailio's algorithm 10
        needs ``ds_hash_size``, and with it ``dispatcher.list`` shows ``RUNTIME {DLGLOAD}``."""
        ...

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
        "Reload Failed", data=["file:line: what", ...])) or an RpcError."""
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

    def tls_connections(self) -> list[dict]:
        """Every worker's TLS connections (gdispatch.net.Transports.tls_connections)."""
        ...

    def reload_tls(self) -> str:
        """Read the [tls] files again: '' without TLS, else what happened."""
        ...

    def stats(self) -> dict:
        """Counters and gauges for the ``stats`` method, as JSON-ready values."""
        ...

    def cluster_view(self) -> dict:
        """The nodes sharing ``[cluster] redis`` and their last heartbeats
        (gdispatch.ha.node.Node.describe); this node alone without Redis."""
        ...

    def node_views(self) -> tuple[str, dict[str, dict[str, str]], str]:
        """``dispatcher.list cluster``: this node's name, every live node's view of its
        destinations (gdispatch.ha.node.Node.views) and why the others' could not be read.
        May wait on Redis (in a thread, about a second at most)."""
        ...


# Kamailio's fault texts.

# The state bits an RPC writes; 16 (no DNS) and 32 (no ping) are configuration.
STATE_BITS = FLAGS_STATE



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
    """Kamailio's fault text, and what was wrong, once, in the data."""
    return RpcError(500, "Reload Failed", problems or ["the list file did not load"])


# -- dispatcher.list -------------------------------------------------------------------------


@_method("dispatcher.list", "Return the content of dispatcher sets (extended: with gdispatch's own fields)",
         Param("MODE", str, False))
def dispatcher_list(api: ControlApi, mode: str = "") -> dict[str, Any]:
    m = mode.lower()  # case-insensitive, as in Kamailio
    if m not in ("", "short", "full", "extended", "cluster"):
        raise _invalid(f"MODE: expected short, full, extended or cluster, got {mode!r}")
    dlist = api.current_list()
    if dlist is None or not dlist.sets:
        raise RpcError(500, "No Destination Sets")
    if m == "cluster":
        node, views, error = api.node_views()
        return cluster_structure(dlist, views, node, error, api.call_load_routing)
    return list_structure(dlist, m or "normal", api.call_load_routing)


# -- reload, add, remove -------------------------------------------------------------------------


@_method("dispatcher.reload", "Reload dispatcher destination sets")
def dispatcher_reload(api: ControlApi) -> str:
    api.reload()
    done = "Ok. Dispatcher successfully reloaded."
    unusable = sorted((d for d in api.current_list().destinations() if not d.usable), key=lambda d: d.setid)
    if not unusable:
        return done
    # Kamailio leaves such a line out of the list, silently in its answer; gdispatch keeps
    # it (retried) and says so, after the answer scripts match.
    return "\n".join([done, *(f"not usable: set {d.setid} {d.uri}: {d.unusable or 'no address'}" for d in unusable)])


def _zero_or_one(value: int, name: str) -> bool:
    if value not in (0, 1):
        raise _invalid(f"{name}: expected 0 or 1, got {value}")
    return bool(value)


def _list_text(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _running_lines(dlist: DispatcherList, keep: Callable[[Destination], bool] = lambda d: True) -> list[str]:
    """The running list as list-file lines, in the order Kamailio's ``dispatcher.add`` and
    ``remove`` rebuild theirs: sets in the order ``dispatcher.list`` prints them, each
    set's destinations in its order. Parsed again, the sets print in the same order as
    in Kamailio after the same command (and with ``kamailio_order`` the destinations
    too: Kamailio's rebuild reverses equal priorities, as that parse does)."""
    return [format_line(d) for setid in kamailio_set_order(list(dlist.sets))
            for d in dlist.sets[setid].destinations if keep(d)]


def _add(api: ControlApi, setid: int, uri: str, flags: int, priority: int, attrs: str, description: str,
         persist: bool) -> None:
    """Add a destination, already checked as one list-file line would be and not in the
    list yet: to the running list, or with `persist` to the list file, which is then
    reloaded so that the running list is what the file says. Raises ListEditError."""
    if persist:
        listedit.add_destination(api.list_file, setid, uri, flags, priority, attrs, description)
        api.reload("dispatcher.add")
        return
    lines = _running_lines(api.current_list())
    lines.append(listedit.new_line(setid, uri, flags, priority, attrs, description))
    api.replace_list(_list_text(lines), "dispatcher.add")


def _remove(api: ControlApi, setid: int, uri: str, persist: bool) -> None:
    """Remove every destination of set `setid` with this URI (compared without regard
    to case) from the running list, or with `persist` from the list file, then reloaded
    from it. None there is no error: Kamailio answers Ok, there is nothing to remove.
    Raises ListEditError."""
    def same(d: Destination) -> bool:
        return d.setid == setid and d.uri.lower() == uri.lower()

    dlist = api.current_list()
    if persist:
        rows, _ = listedit.show(api.list_file)
        if any(same(r.dest) for r in rows):
            listedit.remove_destination(api.list_file, setid, uri)
            api.reload("dispatcher.remove")
            return
    if any(same(d) for d in dlist.destinations()):
        api.replace_list(_list_text(_running_lines(dlist, lambda d: not same(d))), "dispatcher.remove")


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
            if dest.duid and other.duid.lower() == dest.duid.lower():
                raise RpcError(500, failed, f"duid={dest.duid} already names {other.uri} in set {group} "
                                            "(a duid names one destination of its set)")
    try:
        _add(api, group, dest.uri, flags, priority, attrs, description.strip(), keep)
    except listedit.ListEditError as e:
        raise RpcError(500, failed, str(e)) from None
    return "Ok. Dispatcher destination added."


@_method("dispatcher.remove", "Remove a destination address from memory (PERSIST=1: and from the list file)",
         Param("GROUP", int), Param("ADDRESS", str), Param("PERSIST", int, False))
def dispatcher_remove(api: ControlApi, group: int, address: str, persist: int = 0) -> str:
    keep = _zero_or_one(persist, "PERSIST")
    uri = with_scheme(address)
    failed = "Removing dispatcher dst failed"
    try:
        _remove(api, group, uri, keep)
    except listedit.ListEditError as e:
        raise RpcError(500, failed, str(e)) from None
    return "Ok. Dispatcher destination removed."


# -- states --------------------------------------------------------------------------------------

def _set_state(api: ControlApi, method: str, state: str, group: int, target: str, by_duid: bool) -> str:
    bits = parse_state(state)
    failed = "State Update Failed"
    dlist = api.current_list()
    dset = dlist.get(group) if dlist is not None else None
    if dset is None:
        raise RpcError(500, failed, f"no set {group}")
    chosen = chosen_destinations(dset, target, by_duid)
    if not chosen:
        what = f"with duid {target}" if by_duid else target
        raise RpcError(500, failed, f"no destination {what} in set {group}")
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


@_method("dispatcher.set_state", "Set the state of a destination by address (or idx=N, duid=NAME)",
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


@_method("tls.list", "List the TLS connections: peer, our address, cipher and certificate subject")
def tls_list(api: ControlApi) -> list[dict]:
    return api.tls_connections()


@_method("cluster.list", "List the nodes sharing [cluster] redis: last heartbeat, which serve")
def cluster_list(api: ControlApi) -> dict:
    return api.cluster_view()


@_method("tls.reload", "Read the TLS certificates, keys and CA lists again")
def tls_reload(api: ControlApi) -> str:
    done = api.reload_tls()
    if not done:
        raise RpcError(500, "TLS Not Enabled", "no tls: listen address")
    if done.startswith("tls not reloaded"):
        raise RpcError(500, "Error while fixing TLS configuration", done)
    return "Ok. TLS configuration reloaded."


@_method("system.listMethods", "Lists the RPC methods supported by the server")
def system_list_methods(api: ControlApi) -> list[str]:
    return sorted(METHODS)


@_method("system.methodHelp", "Returns the usage and help of a method", Param("METHOD", str))
def system_method_help(api: ControlApi, name: str) -> str:
    m = METHODS.get(name)
    if m is None:
        raise RpcError(METHOD_NOT_FOUND, f"command {name} not found")
    return f"{m.usage}\n{m.doc}"
