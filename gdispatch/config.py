"""The ``gdispatch.toml`` configuration: schema, defaults, validation, CLI overrides.

Every key has an explicit default written here and in the example ``gdispatch.toml``.
Errors name the key and say what was expected (`ConfigError`). The result is a tree of
small frozen dataclasses the rest of the program reads; nothing else parses TOML.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on older Pythons
    import tomli as tomllib

TRANSPORTS = ("udp", "tcp")
DEFAULT_FAILOVER_CODES = ("408", "5xx")


class ConfigError(ValueError):
    """A configuration problem, worded for the operator."""


def parse_codes(values: Any, key: str) -> frozenset[int]:
    """["408", "5xx", 603] → the set of codes. "5xx" means 500-599."""
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{key}.failover_codes: expected a list such as [\"408\", \"5xx\"]")
    codes: set[int] = set()
    for v in values:
        s = str(v).strip().lower()
        if len(s) == 3 and s[0] in "3456" and s[1:] == "xx":
            base = int(s[0]) * 100
            codes.update(range(base, base + 100))
        elif s.isdigit() and 300 <= int(s) <= 699:
            codes.add(int(s))
        else:
            raise ConfigError(f"{key}.failover_codes: {v!r}: expected a final code 300-699 or a class like \"5xx\"")
    return frozenset(codes)


@dataclass(frozen=True)
class Listen:
    transport: str  # "udp" | "tcp"
    host: str  # IP address, no brackets
    port: int

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        h = f"[{self.host}]" if self.family_v6 else self.host
        return f"{self.transport}:{h}:{self.port}"


@dataclass(frozen=True)
class Timers:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    fr_timer: float = 2.0
    fr_inv_timer: float = 120.0


@dataclass(frozen=True)
class Route:
    methods: frozenset[str] = frozenset({"INVITE"})
    set: int = 1
    algorithm: int = 4
    failover_codes: frozenset[int] = field(default_factory=lambda: parse_codes(DEFAULT_FAILOVER_CODES, "route"))
    limit: int = 0  # 0: try every destination of the set
    reply: int = 0  # non-zero: answer locally with this code instead of dispatching
    reply_reason: str = ""

    def matches(self, method: str) -> bool:
        return not self.methods or method in self.methods


@dataclass(frozen=True)
class Config:
    listen: tuple[Listen, ...] = (Listen("udp", "127.0.0.1", 5060), Listen("tcp", "127.0.0.1", 5060))
    domains: tuple[str, ...] = ()
    log_level: str = "info"
    workers: int = 1
    list_file: str = "dispatcher.list"
    timers: Timers = Timers()
    routes: tuple[Route, ...] = (Route(),)
    # Requests no route matches get this answer (404 "No Route").
    no_route_reply: int = 404
    source: str = ""


def parse_listen(text: str, key: str = "listen") -> Listen:
    """``udp:127.0.0.1:5060``, ``tcp:[::1]:5060``."""
    proto, sep, rest = str(text).partition(":")
    proto = proto.lower()
    if not sep or proto not in TRANSPORTS:
        raise ConfigError(f"{key}: {text!r}: expected PROTO:IP:PORT with PROTO one of {', '.join(TRANSPORTS)}")
    if rest.startswith("["):
        host, _, port_s = rest[1:].partition("]")
        port_s = port_s[1:] if port_s.startswith(":") else ""
    else:
        host, _, port_s = rest.rpartition(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{key}: {text!r}: {host!r} is not an IP address") from None
    if ip.is_unspecified:
        raise ConfigError(f"{key}: {text!r}: listen on a concrete address (it goes into Via and Record-Route)")
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ConfigError(f"{key}: {text!r}: expected a port number 1-65535")
    return Listen(proto, str(ip), int(port_s))


def _number(table: dict, key: str, where: str, default: float, *, integer: bool = False, minimum: float = 0,
            exclusive: bool = True) -> Any:
    v = table.get(key, default)
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or (v <= minimum if exclusive else v < minimum):
        what = "an integer" if integer else "a number of seconds"
        bound = f"> {minimum}" if exclusive else f">= {minimum}"
        raise ConfigError(f"{where}.{key}: expected {what} {bound}, got {v!r}")
    return v


def _check_keys(table: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return table


def _route(t: Any, where: str) -> Route:
    t = _check_keys(t, {"methods", "set", "algorithm", "failover_codes", "limit", "reply", "reply_reason"}, where)
    methods = t.get("methods", ["INVITE"])
    if not isinstance(methods, list) or not all(isinstance(m, str) and m for m in methods):
        raise ConfigError(f"{where}.methods: expected a list of method names such as [\"INVITE\"] ([] = any)")
    from gdispatch.dispatcher.algorithms import SUPPORTED

    alg = _number(t, "algorithm", where, 4, integer=True, minimum=0, exclusive=False)
    if alg not in SUPPORTED:
        raise ConfigError(f"{where}.algorithm: {alg} is not supported (supported: {sorted(SUPPORTED)})")
    reply = _number(t, "reply", where, 0, integer=True, minimum=0, exclusive=False)
    if reply and not 300 <= reply <= 699:
        raise ConfigError(f"{where}.reply: expected a final response code 300-699, got {reply}")
    return Route(
        methods=frozenset(m.upper() for m in methods),
        set=_number(t, "set", where, 1, integer=True, minimum=0, exclusive=False),
        algorithm=alg,
        failover_codes=parse_codes(t.get("failover_codes", list(DEFAULT_FAILOVER_CODES)), where),
        limit=_number(t, "limit", where, 0, integer=True, minimum=0, exclusive=False),
        reply=reply,
        reply_reason=str(t.get("reply_reason", "")),
    )


def from_dict(data: dict, source: str = "") -> Config:
    data = _check_keys(data, {"server", "dispatcher", "timers", "route"}, "config")
    server = _check_keys(data.get("server", {}), {"listen", "domains", "log_level", "workers", "no_route_reply"},
                         "[server]")
    listen_v = server.get("listen", [str(x) for x in Config.listen])
    if isinstance(listen_v, str):
        listen_v = [listen_v]
    if not isinstance(listen_v, list) or not listen_v:
        raise ConfigError("[server].listen: expected a non-empty list such as [\"udp:127.0.0.1:5060\"]")
    listen = tuple(parse_listen(x, "[server].listen") for x in listen_v)
    domains = server.get("domains", [])
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        raise ConfigError("[server].domains: expected a list of domain names or addresses")
    level = str(server.get("log_level", "info")).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"[server].log_level: expected debug, info, warning or error, got {level!r}")
    disp = _check_keys(data.get("dispatcher", {}), {"list_file"}, "[dispatcher]")
    list_file = disp.get("list_file", "dispatcher.list")
    if not isinstance(list_file, str) or not list_file:
        raise ConfigError("[dispatcher].list_file: expected a file path")
    if source and not os.path.isabs(list_file):
        list_file = os.path.join(os.path.dirname(os.path.abspath(source)), list_file)
    tt = _check_keys(data.get("timers", {}), {"t1", "t2", "t4", "fr_timer", "fr_inv_timer"}, "[timers]")
    d = Timers()
    timers = Timers(**{k: float(_number(tt, k, "[timers]", getattr(d, k))) for k in
                       ("t1", "t2", "t4", "fr_timer", "fr_inv_timer")})
    if timers.t2 < timers.t1:
        raise ConfigError("[timers].t2: must not be smaller than t1")
    routes_v = data.get("route", None)
    if routes_v is None:
        routes = (Route(),)
    elif not isinstance(routes_v, list):
        raise ConfigError("[[route]]: expected an array of tables ([[route]] sections)")
    else:
        routes = tuple(_route(r, f"[[route]] #{i + 1}") for i, r in enumerate(routes_v))
    nrr = _number(server, "no_route_reply", "[server]", 404, integer=True, minimum=300, exclusive=False)
    return Config(
        listen=listen, domains=tuple(x.lower() for x in domains), log_level=level,
        workers=_number(server, "workers", "[server]", 1, integer=True, minimum=1, exclusive=False),
        list_file=list_file, timers=timers, routes=routes, no_route_reply=nrr, source=source,
    )


def load(path: str | None) -> Config:
    """Read a TOML file (None: the built-in defaults)."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        return from_dict(data, path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def with_overrides(cfg: Config, *, listen: list[str] | None = None, list_file: str | None = None,
                   set_id: int | None = None, algorithm: int | None = None, workers: int | None = None) -> Config:
    """Apply command-line flags, which win over the file."""
    changes: dict[str, Any] = {}
    if listen:
        changes["listen"] = tuple(parse_listen(x, "--listen") for x in listen)
    if list_file:
        changes["list_file"] = list_file
    if workers is not None:
        if workers < 1:
            raise ConfigError("--workers: expected a number >= 1")
        changes["workers"] = workers
    if set_id is not None or algorithm is not None:
        from gdispatch.dispatcher.algorithms import SUPPORTED

        if algorithm is not None and algorithm not in SUPPORTED:
            raise ConfigError(f"--algorithm: {algorithm} is not supported (supported: {sorted(SUPPORTED)})")
        # The flags retarget every dispatching route (the first one when there are
        # several is the usual case: one INVITE route).
        routes = tuple(
            r if r.reply else replace(
                r,
                set=r.set if set_id is None else set_id,
                algorithm=r.algorithm if algorithm is None else algorithm,
            )
            for r in cfg.routes
        )
        changes["routes"] = routes
    return replace(cfg, **changes)
