"""orig_headers: tell the destination who really called, in X-Orig-IP/Port/Proto headers.

A switch behind a load balancer sees every call coming from the balancer. Some (Yeti
switch, for one) ask the balancer to add the caller's source address and transport to
each initial request:

    X-Orig-IP: 203.0.113.5
    X-Orig-Port: 5060
    X-Orig-Proto: 1

This plugin adds them to every attempt of every dispatched request
(`gdispatch_prepare_attempt`), from where the request came in (`attempt.source`: the
address and transport gdispatch received it from, not what its Via claims). Any
X-Orig-IP, X-Orig-Port or X-Orig-Proto the caller sent is removed first: otherwise a
caller could claim to be someone else.

    [plugins]
    enabled = ["orig_headers"]

    [plugins.orig_headers]
    proto = "number"      # "number": 1 UDP, 2 TCP, 3 TLS (Yeti's values, the default);
                          # "name": UDP, TCP, TLS
    sets = [1]            # only towards destinations of these sets (default: all)

SIP header names are case-insensitive: X-ORIG-IP in a switch's manual is this header.
A bad table is reported at start-up (log and ``gdispatch rpc stats`` plugin_errors) and the
defaults apply.
"""

from __future__ import annotations

from gdispatch.hookspecs import hookimpl

NAMES = ("X-Orig-IP", "X-Orig-Port", "X-Orig-Proto")
PROTO_NUMBERS = {"udp": "1", "tcp": "2", "tls": "3"}

_proto_as_number = True
_sets: frozenset[int] | None = None  # None: every set


def parse_settings(settings: dict) -> tuple[bool, frozenset[int] | None]:
    """(proto as a number?, sets or None) from ``[plugins.orig_headers]``. ValueError when bad."""
    unknown = sorted(set(settings) - {"proto", "sets"})
    if unknown:
        raise ValueError(f"[plugins.orig_headers]: unknown key {unknown[0]!r} (known: proto, sets)")
    proto = settings.get("proto", "number")
    if proto not in ("number", "name"):
        raise ValueError(f"[plugins.orig_headers].proto: expected \"number\" or \"name\", got {proto!r}")
    sets = settings.get("sets")
    if sets is not None:
        if not isinstance(sets, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in sets):
            raise ValueError("[plugins.orig_headers].sets: expected a list of set ids such as [1, 2]")
        sets = frozenset(sets)
    return proto == "number", sets


def header_values(source: tuple[str, str, int], proto_as_number: bool = True) -> list[tuple[str, str]]:
    """The three headers for a request received from `source` (transport, ip, port)."""
    transport, ip, port = source
    proto = PROTO_NUMBERS.get(transport, transport) if proto_as_number else transport.upper()
    return list(zip(NAMES, (ip, str(port), proto)))


@hookimpl
def gdispatch_startup(config) -> None:
    global _proto_as_number, _sets
    _proto_as_number, _sets = parse_settings(config.plugin_settings.get("orig_headers", {}))


@hookimpl
def gdispatch_prepare_attempt(attempt) -> None:
    if attempt.source is None or (_sets is not None and attempt.destination.setid not in _sets):
        return
    for name in NAMES:
        attempt.remove_header(name)  # what the caller sent is not to be trusted
    for name, value in header_values(attempt.source, _proto_as_number):
        attempt.add_header(name, value)
