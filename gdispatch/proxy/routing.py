"""Where a new request goes, decided without I/O (RFC 3261 §16.3-16.5).

`route_request` makes the checks of §16.3 (Max-Forwards, loops), reads the Route set
(§16.4: strict or loose routing, our own entries at its top) and returns what to do as a
decision object: `Refuse` (answer it here), `AnswerOptions` (an OPTIONS for the proxy
itself, §11), `InDialog` (a request inside a dialog we record-routed: its next hop and the
edits loose routing makes, §16.6 step 6) or `Dispatch` (a new request for one of the
`[[route]]` tables). `RouteMatcher` chooses that route: the plugins' `gdispatch_choose_route`
when a plugin implements it, else the built-in tables (gdispatch.builtin), with the sets
the request's source belongs to (Kamailio's `ds_is_from_list`). `missing_sets` says which
tables name a set the list does not have: the proxy refuses such a list at start and on
reload.

The proxy (gdispatch.proxy.core) carries the decision out: it resolves the next hop,
checks the dialog's signature against it, and sends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple, Union

from gdispatch.config import Listen, Route
from gdispatch.dispatcher.destination import DispatcherList
from gdispatch.message_api import RequestView, RouteChoice
from gdispatch.net import Source
from gdispatch.recordroute import PARAM as SIGNATURE_PARAM
from gdispatch.sip import ParseError, SipMessage, SipUri, parse_name_addr

from .identity import Identity


class Refuse(NamedTuple):
    """Answer the request here, without forwarding it (RFC 3261 §16.3)."""

    status: int
    reason: str
    headers: tuple[bytes, ...] = ()


class AnswerOptions(NamedTuple):
    """An OPTIONS for the proxy itself (RFC 3261 §11): answer 200 with our capabilities."""


class RefuseInDialog(NamedTuple):
    """A request inside a dialog that is not ours to follow (gdispatch.recordroute)."""

    why: str


class InDialog(NamedTuple):
    """A request inside a dialog we record-routed: loose-route it to `target` (RFC 3261
    §16.4, §16.6 step 6) without the first `popped` Route values, or with the edits a
    strict router needs (`new_ruri`, `remove`, `add_headers`). `token`: the signature
    of our Route entry. `socket`: the listen address the last of our entries names,
    which the request leaves from (`Identity.socket_of`)."""

    target: SipUri
    token: bytes
    popped: int
    new_ruri: bytes | None = None
    add_headers: tuple[bytes, ...] = ()
    remove: tuple[str, ...] = ()
    socket: Listen | None = None


class Dispatch(NamedTuple):
    """A new request for `route`: dispatch it over the route's set, without the first
    `popped` Route values (ours, RFC 3261 §16.4)."""

    route: Route
    popped: int


Decision = Union[Refuse, AnswerOptions, RefuseInDialog, InDialog, Dispatch]

FORBIDDEN = Refuse(403, "Relaying Forbidden")


def route_request(msg: SipMessage, ruri: SipUri, source: Source, identity: Identity, is_ours,
                  matcher: RouteMatcher, *, draining: bool, no_route_reply: int) -> Decision:
    """What to do with new request `msg` (its Request-URI parsed as `ruri`) from `source`.
    `is_ours(token)`: whether a signature was made with one of our keys; `matcher` chooses
    the route of an out-of-dialog request, asked only when one is needed."""
    method = msg.method
    mf = msg.max_forwards
    if mf is not None and mf <= 0:
        # RFC 3261 §16.3 step 3; an OPTIONS with Max-Forwards 0 asks about us (§11).
        return AnswerOptions() if method == "OPTIONS" else Refuse(483, "Too Many Hops")
    if identity.is_loop(msg):
        return Refuse(482, "Loop Detected")
    routes = msg.values("route")
    # RFC 3261 §16.4: a strict router put our Record-Route URI in the Request-URI.
    strict = bool(routes) and "lr" in ruri.params and identity.is_local_uri(ruri)
    popped, token, last_signed = (0, None, None) if strict else identity.own_entries(routes)
    if msg.to_tag is not None:
        socket = (identity.socket_named(ruri) if strict
                  else identity.socket_of(last_signed) if last_signed else None)
        return _in_dialog(msg, ruri, routes, popped, token, strict, is_ours, socket)
    if popped < len(routes) or strict:
        return FORBIDDEN
    local = identity.is_local_uri(ruri)
    if local and method == "OPTIONS" and ruri.user is None:
        return AnswerOptions()
    route = matcher.match(msg, ruri, source)
    if route is None or not (local or route.domains or route.relay):
        # No open relay: a request for a domain that is neither ours nor named by a
        # route is refused.
        return Refuse(no_route_reply, "No Route") if local else FORBIDDEN
    if route.reply:
        return Refuse(route.reply, route.reply_reason or "Rejected")
    if draining:
        return Refuse(503, "Shutting Down", (b"Retry-After: 5",))
    return Dispatch(route, popped)


def _in_dialog(msg: SipMessage, ruri: SipUri, routes: list[bytes], popped: int, token: bytes | None,
               strict: bool, is_ours, socket: Listen | None) -> Refuse | RefuseInDialog | InDialog:
    """Loose routing of a request inside a dialog (RFC 3261 §16.4, §16.6 step 6), for the
    dialogs this proxy record-routed only."""
    new_ruri = None
    add_headers: list[bytes] = []
    remove: tuple[str, ...] = ()
    try:
        if strict:
            # Our URI is the Request-URI: the last Route is the real target (§16.4).
            signature = ruri.params.get(SIGNATURE_PARAM)
            token = signature.encode() if signature else None
            last = parse_name_addr(routes[-1])
            new_ruri = last.uri_raw
            remove = ("route",)
            add_headers = [b"Route: " + r for r in routes[:-1]]
            target = last.uri
            popped = 0
        elif popped == 0:
            return Refuse(404, "Not Here")
        elif popped < len(routes):
            following = parse_name_addr(routes[popped])
            target = following.uri
            if "lr" not in target.params:
                # The next hop is a strict router (§16.6 step 6): it gets the route as
                # Request-URI and the Request-URI goes to the end of the route set.
                new_ruri = following.uri_raw
                remove = ("route",)
                add_headers = [b"Route: " + r for r in routes[popped + 1:]] + [b"Route: <" + msg.ruri + b">"]
                popped = 0
        else:
            target = ruri
    except ParseError:
        return Refuse(400, "Bad Route")
    if token is None or (not is_ip(target.host) and not is_ours(token)):
        # Refused before a host name in it is looked up: a forged request must not make
        # the proxy query DNS for names an attacker chose. (An IP address is checked with
        # the whole signature, gdispatch.recordroute.check.)
        return RefuseInDialog("no signature of ours in the Route entry")
    return InDialog(target, token, popped, new_ruri, tuple(add_headers), remove, socket)


_IP_HOSTS: dict[str, bool] = {}  # host -> is_ip(host), bounded: hosts repeat call after call


def is_ip(host: str) -> bool:
    """Whether `host` (as SipUri gives it: IPv6 without brackets) is an IP address."""
    known = _IP_HOSTS.get(host)
    if known is not None:
        return known
    if ":" in host:
        known = True
    else:
        parts = host.split(".")
        known = len(parts) == 4 and all(p.isdigit() for p in parts)
    if len(_IP_HOSTS) < 1024:
        _IP_HOSTS[host] = known
    return known


def ack_target(msg: SipMessage, ruri: SipUri, identity: Identity
               ) -> tuple[int, bytes | None, SipUri | None, Listen | None]:
    """For the ACK of a 2xx, routed statelessly (RFC 3261 §16.11): how many Route values at
    the top are ours, the signature among them, where it goes next (None when a Route
    value there does not parse), and the listen address it leaves from (as `InDialog`)."""
    routes = msg.values("route")
    popped, token, last_signed = identity.own_entries(routes)
    socket = identity.socket_of(last_signed) if last_signed else None
    if popped == 0 or popped == len(routes):
        return popped, token, ruri, socket
    try:
        return popped, token, parse_name_addr(routes[popped]).uri, socket
    except ParseError:
        return popped, token, None, socket


class RouteMatcher:
    """Which route a new out-of-dialog request follows: a plugin's choice, or the first
    `[[route]]` table whose conditions hold (gdispatch.builtin)."""

    def __init__(self, routes, plugins, builtin) -> None:
        self.plugins = plugins
        self.builtin = builtin
        self._needs_source_sets = any(r.from_set is not None for r in routes)
        self._dlist: DispatcherList | None = None
        self._source_index: dict[str, list[tuple[int | None, int]]] | None = None

    def set_list(self, dispatcher_list: DispatcherList) -> None:
        self._dlist = dispatcher_list
        self._source_index = None

    def source_sets(self, source: Source) -> frozenset[int]:
        """The sets having a destination at the request's source address (like Kamailio's
        `ds_is_from_list` in its default mode: IP and port, any transport; a destination
        written without a port matches any port)."""
        index = self._source_index
        if index is None:
            index = {}
            for d in self._dlist.destinations() if self._dlist is not None else ():
                if d.address is not None:
                    index.setdefault(d.address[0], []).append((d.sip_uri.port, d.setid))
            self._source_index = index
        ip, port = source.addr
        entries = index.get(ip)
        if not entries:
            return frozenset()
        return frozenset(setid for p, setid in entries if p is None or p == port)

    def match(self, msg: SipMessage, ruri: SipUri, source: Source) -> Route | None:
        plugins = self.plugins
        if plugins.user_implemented("gdispatch_choose_route"):
            view = RequestView(msg, (source.transport, source.addr[0], source.addr[1]))
            choice = plugins.call_first("gdispatch_choose_route", request=view,
                                        source_sets=self.source_sets(source))
            return as_route(choice) if isinstance(choice, RouteChoice) else choice
        sets = self.source_sets(source) if self._needs_source_sets else frozenset()
        return self.builtin.route_for(msg.method, ruri.user, ruri.host, sets)


def as_route(choice: RouteChoice) -> Route:
    """A plugin's RouteChoice as the route the proxy follows."""
    if choice.reply_code:
        return Route(methods=frozenset(), reply=choice.reply_code, reply_reason=choice.reply_reason,
                     name=choice.name or "plugin", relay=True)
    route = Route(methods=frozenset(), set=choice.set, algorithm=choice.algorithm, limit=choice.limit,
                  mode=choice.mode, name=choice.name or "plugin", relay=True)
    if choice.failover_codes is not None:
        route = dataclasses.replace(route, failover_codes=frozenset(choice.failover_codes))
    return route


def missing_sets(routes: Sequence[Route], dlist: DispatcherList) -> list[str]:
    """One line per `[[route]]` table whose `set` (unless it answers with `reply`) or
    `from_set` is not a set of `dlist`: a typo that would send every matching call to
    `no_destination_reply`, or make the table never match. Kamailio's script would only
    find out when ``ds_select_dst`` fails for a call. An empty list is left alone: Kamailio
    loads an empty file too (every call then gets `no_destination_reply`), and a route
    cannot mistake one set for another there."""
    if not dlist.sets:
        return []
    listed = ", ".join(str(s) for s in sorted(dlist.sets))
    problems = []
    for i, r in enumerate(routes, 1):
        where = f"[[route]] #{i}" + (f" ({r.name})" if r.name else "")
        if not r.reply and r.set not in dlist.sets:
            problems.append(f"{where}: set {r.set} is not in {dlist.source or 'the list'} (its sets: {listed}); "
                            f"give a set it has (set = N in [[route]], or --set N)")
        if r.from_set is not None and r.from_set not in dlist.sets:
            problems.append(f"{where}: from_set {r.from_set} is not in {dlist.source or 'the list'} "
                            f"(its sets: {listed})")
    return problems
