"""Reading ``gdispatch.toml``: validation, the command line's overrides.

The schema and every default are in gdispatch.settings (and the example
``gdispatch.toml``); they are imported here under the same names, for the rest of the
program. Errors name the key and say what was expected (`ConfigError`). Nothing else
parses TOML.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import replace
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on older Pythons
    import tomli as tomllib

from gdispatch.sections import (
    _capture,
    _check_keys,
    _flood,
    _ha,
    _http,
    _number,
    _probing,
    _security,
    _str_list,
    _tcp,
    _tls,
)
from gdispatch.settings import (
    DEFAULT_FAILOVER_CODES as DEFAULT_FAILOVER_CODES,
)
from gdispatch.settings import (
    TLS_METHODS as TLS_METHODS,
)
from gdispatch.settings import (  # the schema, read from here by the rest of the program too
    TRANSPORTS as TRANSPORTS,
)
from gdispatch.settings import (
    Config as Config,
)
from gdispatch.settings import (
    ConfigError as ConfigError,
)
from gdispatch.settings import (
    Flood as Flood,
)
from gdispatch.settings import (
    Listen as Listen,
)
from gdispatch.settings import (
    Overload as Overload,
)
from gdispatch.settings import (
    Probing as Probing,
)
from gdispatch.settings import (
    Route as Route,
)
from gdispatch.settings import (
    Security as Security,
)
from gdispatch.settings import (
    Tcp as Tcp,
)
from gdispatch.settings import (
    Timers as Timers,
)
from gdispatch.settings import (
    Tls as Tls,
)
from gdispatch.settings import (
    TlsProfile as TlsProfile,
)
from gdispatch.settings import (
    parse_codes as parse_codes,
)

# `[server] advertise`: a host name or an IP address (IPv6 in brackets), and a port.
_ADVERTISE = re.compile(r"(?:[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
_NAMED = re.compile(r'(?P<address>\S+)\s+name\s+"(?P<name>[^"]*)"\s*\Z')
# What a socket name may be: one word, as it is written in an attr (`sockname=s1`).
_SOCKET_NAME = re.compile(r"[A-Za-z0-9_.\-]+\Z")


def parse_listen(text: Any, key: str = "listen") -> Listen:
    """``udp:127.0.0.1:5060``, ``tcp:[::1]:5060``; with a name, Kamailio's way
    (``udp:127.0.0.2:5060 name "carrier"``) or as a table (``{ address =
    "udp:127.0.0.2:5060", name = "carrier" }``)."""
    if isinstance(text, dict):
        table = _check_keys(text, {"address", "name"}, f"{key}: {text!r}")
        address, name = table.get("address"), table.get("name", "")
        if not isinstance(address, str) or not isinstance(name, str):
            raise ConfigError(f"{key}: {text!r}: expected {{ address = \"PROTO:IP:PORT\", name = \"NAME\" }}")
        return _named(parse_listen(address, key), name, key, text)
    if not isinstance(text, str):
        raise ConfigError(f"{key}: {text!r}: expected \"PROTO:IP:PORT\" or {{ address = ..., name = ... }}")
    named = _NAMED.match(text.strip())
    if named is not None:
        return _named(parse_listen(named["address"], key), named["name"], key, text)
    proto, sep, rest = text.partition(":")
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


def _named(listen: Listen, name: str, key: str, text: Any) -> Listen:
    if not _SOCKET_NAME.match(name):
        raise ConfigError(f"{key}: {text!r}: a socket name is one word of letters, digits, '_', '.' or '-'")
    return replace(listen, name=name)


def _check_listens(listens: tuple[Listen, ...], key: str) -> None:
    """Each address and each name once: a destination's `socket` or `sockname` must
    name one socket."""
    seen: dict[str, Listen] = {}
    names: set[str] = set()
    for listen in listens:
        if str(listen) in seen:
            raise ConfigError(f"{key}: {listen} is given twice")
        seen[str(listen)] = listen
        if listen.name:
            if listen.name in names:
                raise ConfigError(f"{key}: the name {listen.name!r} is given to two addresses")
            names.add(listen.name)


def check_default_socket(cfg: Config) -> None:
    """`[dispatcher].default_socket` and `default_sockname` must name a listen address,
    as Kamailio refuses to start when ds_default_socket is not one of its sockets."""
    from gdispatch.dispatcher.sockets import SocketTable

    table = SocketTable(cfg.listen)
    try:
        table.default(cfg.default_socket, cfg.default_sockname)
    except ValueError as e:
        key = "default_sockname" if cfg.default_sockname else "default_socket"
        raise ConfigError(f"[dispatcher].{key}: {getattr(cfg, key)!r}: {e}") from None


_ROUTE_KEYS = {"name", "methods", "user_prefix", "user_regex", "domains", "from_set", "set", "algorithm",
               "failover_codes", "limit", "mode", "hash_template", "no_destination_reply", "reply", "reply_reason"}


def _route(t: Any, where: str) -> Route:
    t = _check_keys(t, _ROUTE_KEYS, where)
    if "name" in t:
        where = f"{where} ({t['name']})"
    methods = _str_list(t, "methods", where, '["INVITE"] ([] = any)') if "methods" in t else ["INVITE"]
    from gdispatch.dispatcher.algorithms import SUPPORTED

    alg = _number(t, "algorithm", where, 4, integer=True, minimum=0, exclusive=False)
    if alg not in SUPPORTED:
        raise ConfigError(f"{where}.algorithm: {alg} is not supported (supported: {sorted(SUPPORTED)})")
    reply = _number(t, "reply", where, 0, integer=True, minimum=0, exclusive=False)
    if reply and not 300 <= reply <= 699:
        raise ConfigError(f"{where}.reply: expected a final response code 300-699, got {reply}")
    ndr = _number(t, "no_destination_reply", where, 503, integer=True, minimum=300, exclusive=False)
    if ndr > 699:
        raise ConfigError(f"{where}.no_destination_reply: expected a final response code 300-699, got {ndr}")
    regex = None
    if "user_regex" in t:
        try:
            regex = re.compile(str(t["user_regex"]))
        except re.error as e:
            raise ConfigError(f"{where}.user_regex: not a valid regular expression: {e}") from None
    mode = str(t.get("mode", "dst"))
    if mode not in ("dst", "domain"):
        raise ConfigError(f"{where}.mode: expected \"dst\" (destination is the next hop) or \"domain\" "
                          f"(it also becomes the Request-URI host), got {mode!r}")
    from_set = t.get("from_set")
    if from_set is not None and (isinstance(from_set, bool) or not isinstance(from_set, int) or from_set < 0):
        raise ConfigError(f"{where}.from_set: expected a set id (an integer >= 0)")
    template = str(t.get("hash_template", ""))
    if alg == 7 and not template:
        raise ConfigError(f"{where}.hash_template: algorithm 7 hashes a template of request fields; "
                          f"give one, e.g. \"$fU@$ci\"")
    if template:
        from gdispatch.dispatcher.algorithms import compile_template

        try:
            compile_template(template)
        except ValueError as e:
            raise ConfigError(f"{where}.hash_template: {e}") from None
    return Route(
        methods=frozenset(m.upper() for m in methods),
        user_prefix=tuple(_str_list(t, "user_prefix", where, '["00", "+44"]')),
        user_regex=regex,
        domains=frozenset(d.lower() for d in _str_list(t, "domains", where, '["pbx1.example.com"]')),
        from_set=from_set,
        set=_number(t, "set", where, 1, integer=True, minimum=0, exclusive=False),
        algorithm=alg,
        failover_codes=parse_codes(t.get("failover_codes", list(DEFAULT_FAILOVER_CODES)), f"{where}.failover_codes"),
        limit=_number(t, "limit", where, 0, integer=True, minimum=0, exclusive=False),
        mode=mode,
        hash_template=template,
        no_destination_reply=ndr,
        reply=reply,
        reply_reason=str(t.get("reply_reason", "")),
        name=str(t.get("name", "")),
    )


def from_dict(data: dict, source: str = "") -> Config:
    data = _check_keys(data, {"server", "dispatcher", "timers", "dns", "probing", "plugins", "control", "route",
                              "overload", "security", "flood", "tcp", "tls", "http", "capture", "cluster"},
                       "config")
    server = _check_keys(data.get("server", {}), {"listen", "domains", "log_level", "log_format", "workers",
                                                  "advertise", "no_route_reply", "drain_time", "server_header",
                                                  "user_agent_header"}, "[server]")
    for key in ("server_header", "user_agent_header"):
        v = server.get(key, getattr(Config, key))
        if not isinstance(v, str) or any(not 32 <= ord(c) < 127 for c in v):
            raise ConfigError(f"[server].{key}: expected a string of printable ASCII (\"\" for none), got {v!r}")
    listen_v = server.get("listen", [str(x) for x in Config.listen])
    if isinstance(listen_v, str):
        listen_v = [listen_v]
    if not isinstance(listen_v, list) or not listen_v:
        raise ConfigError("[server].listen: expected a non-empty list such as [\"udp:127.0.0.1:5060\"]")
    listen = tuple(parse_listen(x, "[server].listen") for x in listen_v)
    _check_listens(listen, "[server].listen")
    domains = server.get("domains", [])
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        raise ConfigError("[server].domains: expected a list of domain names or addresses")
    level = str(server.get("log_level", "info")).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"[server].log_level: expected debug, info, warning or error, got {level!r}")
    log_format = server.get("log_format", Config.log_format)
    if log_format not in ("text", "json"):
        raise ConfigError(f"[server].log_format: expected \"text\" or \"json\", got {log_format!r}")
    disp = _check_keys(data.get("dispatcher", {}), {"list_file", "load_mode", "kamailio_order", "kamailio_compat",
                                                    "hash_user_only", "call_expire", "call_init_expire",
                                                    "reload_keeps_state", "watch", "persistent_state",
                                                    "state_file", "default_socket", "default_sockname"},
                       "[dispatcher]")
    load_mode = str(disp.get("load_mode", "strict"))
    if load_mode not in ("strict", "skip"):
        raise ConfigError(f"[dispatcher].load_mode: expected \"strict\" or \"skip\", got {load_mode!r}")
    # Config's keyword arguments by kind: switches and strings, then durations and lists.
    flags: dict[str, Any] = {}
    for key in ("kamailio_order", "kamailio_compat", "hash_user_only", "reload_keeps_state", "watch",
                "persistent_state"):
        v = disp.get(key, getattr(Config, key))
        if not isinstance(v, bool):
            raise ConfigError(f"[dispatcher].{key}: expected true or false, got {v!r}")
        flags[key] = v
    seconds: dict[str, Any] = {k: float(_number(disp, k, "[dispatcher]", getattr(Config, k)))
               for k in ("call_expire", "call_init_expire")}
    seconds["drain_time"] = float(_number(server, "drain_time", "[server]", Config.drain_time, minimum=0,
                                          exclusive=False))
    ctl = _check_keys(data.get("control", {}), {"socket", "tcp", "token"}, "[control]")
    for key in ("socket", "tcp", "token"):
        v = ctl.get(key, "")
        if not isinstance(v, str):
            raise ConfigError(f"[control].{key}: expected a string")
        flags[f"control_{key}"] = v
    for key in ("default_socket", "default_sockname"):
        v = disp.get(key, "")
        if not isinstance(v, str):
            raise ConfigError(f"[dispatcher].{key}: expected a string such as "
                              + ('"udp:192.0.2.1:5060"' if key == "default_socket" else '"carrier"'))
        flags[key] = v
    if flags["control_tcp"] and not flags["control_token"]:
        raise ConfigError("[control].tcp: a TCP control listener needs [control].token (a shared secret)")
    dns = _check_keys(data.get("dns", {}), {"nameservers", "refresh_interval", "retry_interval"}, "[dns]")
    seconds["dns_refresh"] = float(_number(dns, "refresh_interval", "[dns]", Config.dns_refresh))
    seconds["dns_retry"] = float(_number(dns, "retry_interval", "[dns]", Config.dns_retry))
    from gdispatch.dns import parse_nameserver

    nameservers = []
    for ns in _str_list(dns, "nameservers", "[dns]", '["127.0.0.53:53"]'):
        try:
            nameservers.append(parse_nameserver(ns))
        except ValueError as e:
            raise ConfigError(f"[dns].nameservers: {ns!r}: {e}") from None
    seconds["dns_nameservers"] = tuple(nameservers)
    list_file = disp.get("list_file", "dispatcher.list")
    if not isinstance(list_file, str) or not list_file:
        raise ConfigError("[dispatcher].list_file: expected a file path")
    if source and not os.path.isabs(list_file):
        list_file = os.path.join(os.path.dirname(os.path.abspath(source)), list_file)
    state_file = disp.get("state_file", "")
    if not isinstance(state_file, str):
        raise ConfigError("[dispatcher].state_file: expected a file path (\"\" for the default place)")
    if state_file and source and not os.path.isabs(state_file):
        state_file = os.path.join(os.path.dirname(os.path.abspath(source)), state_file)
    tt = _check_keys(data.get("timers", {}), {"t1", "t2", "t4", "fr_timer", "fr_inv_timer", "wt_timer"},
                     "[timers]")
    d = Timers()
    timers = Timers(**{k: float(_number(tt, k, "[timers]", getattr(d, k))) for k in
                       ("t1", "t2", "t4", "fr_timer", "fr_inv_timer")},
                    wt_timer=float(_number(tt, "wt_timer", "[timers]", d.wt_timer, exclusive=False)))
    if timers.t2 < timers.t1:
        raise ConfigError("[timers].t2: must not be smaller than t1")
    routes_v = data.get("route", None)
    routes: tuple[Route, ...]
    if routes_v is None:
        routes = (Route(),)
    elif not isinstance(routes_v, list):
        raise ConfigError("[[route]]: expected an array of tables ([[route]] sections)")
    else:
        routes = tuple(_route(r, f"[[route]] #{i + 1}") for i, r in enumerate(routes_v))
    nrr = _number(server, "no_route_reply", "[server]", 404, integer=True, minimum=300, exclusive=False)
    probing = _probing(data.get("probing", {}))
    ov = _check_keys(data.get("overload", {}), {"max_backlog", "max_calls_in_setup", "hold", "retry_after"},
                     "[overload]")
    d_ov = Overload()
    overload = Overload(
        max_backlog=float(_number(ov, "max_backlog", "[overload]", d_ov.max_backlog, exclusive=False)),
        max_calls_in_setup=_number(ov, "max_calls_in_setup", "[overload]", d_ov.max_calls_in_setup, integer=True,
                                   exclusive=False),
        hold=float(_number(ov, "hold", "[overload]", d_ov.hold, exclusive=False)),
        retry_after=_number(ov, "retry_after", "[overload]", d_ov.retry_after, integer=True, exclusive=False),
    )
    security = _security(data.get("security", {}), source)
    flood = _flood(data.get("flood", {}))
    tcp = _tcp(data.get("tcp", {}))
    tls = _tls(data.get("tls", {}), source)
    http = _http(data.get("http", {}))
    capture = _capture(data.get("capture", {}))
    ha = _ha(data.get("cluster", {}))
    advertise = server.get("advertise", "")
    if not isinstance(advertise, str) or (advertise and not _ADVERTISE.fullmatch(advertise)):
        raise ConfigError(f"[server].advertise: expected HOST or HOST:PORT (the shared address the nodes "
                          f"move between them), got {advertise!r}")
    if any(x.transport == "tls" for x in listen) and not tls.server.certificate:
        raise ConfigError("[server].listen: a tls: listen address needs [tls].certificate (and its private_key)")
    pl = data.get("plugins", {})
    if not isinstance(pl, dict):
        raise ConfigError("[plugins]: expected a table")
    own = {"enabled", "hooks_dir"}
    # A sub-table [plugins.<name>] holds plugin <name>'s settings; every other key is ours.
    plugin_settings = {k: v for k, v in pl.items() if isinstance(v, dict) and k not in own}
    pl = _check_keys({k: v for k, v in pl.items() if k not in plugin_settings}, own, "[plugins]")
    plugins = tuple(_str_list(pl, "enabled", "[plugins]", '["tech_prefix"]'))
    hooks_dir = str(pl.get("hooks_dir", "hooks"))
    if source and not os.path.isabs(hooks_dir):
        hooks_dir = os.path.join(os.path.dirname(os.path.abspath(source)), hooks_dir)
    cfg = Config(
        listen=listen, domains=tuple(x.lower() for x in domains), log_level=level, log_format=log_format,
        workers=_number(server, "workers", "[server]", 1, integer=True, minimum=1, exclusive=False),
        list_file=list_file, load_mode=load_mode, state_file=state_file, **flags, **seconds,
        timers=timers, probing=probing, overload=overload, security=security, flood=flood, tcp=tcp, tls=tls,
        http=http, capture=capture, ha=ha, advertise=advertise,
        server_header=server.get("server_header", Config.server_header),
        user_agent_header=server.get("user_agent_header", Config.user_agent_header),
        plugins=plugins, hooks_dir=hooks_dir,
        plugin_settings=plugin_settings,
        routes=routes, no_route_reply=nrr, source=source,
    )
    check_default_socket(cfg)
    return cfg


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
        _check_listens(changes["listen"], "--listen")
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
    cfg = replace(cfg, **changes)
    if listen:
        try:
            check_default_socket(cfg)
        except ConfigError as e:
            raise ConfigError(f"--listen: {e}") from None
    return cfg
