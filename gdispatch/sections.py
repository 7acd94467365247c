"""Reading the tables of ``gdispatch.toml`` that stand alone (`[probing]`, `[flood]`,
`[security]`, `[tcp]`, `[tls]`, `[http]`, `[capture]`) into their dataclasses of
gdispatch.settings, and the checks every table shares (`_check_keys`, `_number`,
`_str_list`): each error names the key and what was expected. The file itself, the
`[server]` and `[dispatcher]` tables, the routes and the overrides of the command line
are gdispatch.config's.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import replace
from typing import Any

from gdispatch.settings import (
    TLS_METHODS,
    Capture,
    ConfigError,
    Flood,
    Ha,
    Http,
    Probing,
    Security,
    Tcp,
    Tls,
    TlsProfile,
    parse_codes,
)


def _number(table: dict, key: str, where: str, default: float, *, integer: bool = False, minimum: float = 0,
            exclusive: bool = True) -> Any:
    v = table.get(key, default)
    # TOML has inf and nan; no setting means either (nan passes every comparison below).
    ok = isinstance(v, int) if integer else isinstance(v, (int, float)) and math.isfinite(v)
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


def _str_list(t: dict, key: str, where: str, example: str) -> list[str]:
    v = t.get(key, [])
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise ConfigError(f"{where}.{key}: expected a list of strings such as {example}")
    return v


def _probing(t: Any) -> Probing:
    where = "[probing]"
    t = _check_keys(t, {"interval", "timeout", "method", "from_uri", "probing_threshold", "inactive_threshold",
                        "mode", "reply_codes", "latency_alpha", "mark", "mark_codes", "retry_down"}, where)
    d = Probing()
    interval = float(_number(t, "interval", where, d.interval, minimum=0, exclusive=False))
    timeout = float(_number(t, "timeout", where, d.timeout))
    mode = _number(t, "mode", where, d.mode, integer=True, minimum=0, exclusive=False)
    if mode > 3:
        raise ConfigError(f"{where}.mode: expected 0, 1, 2 or 3 (Kamailio's ds_probing_mode), got {mode}")
    alpha = float(_number(t, "latency_alpha", where, d.latency_alpha))
    if alpha >= 1:
        raise ConfigError(f"{where}.latency_alpha: expected a number between 0 and 1, got {alpha}")
    mark = str(t.get("mark", d.mark))
    if mark not in ("threshold", "inactive", "off"):
        raise ConfigError(f"{where}.mark: expected \"threshold\", \"inactive\" or \"off\", got {mark!r}")
    from gdispatch.probing.policy import parse_reply_codes

    try:
        reply_codes = parse_reply_codes(_str_list(t, "reply_codes", where, '["code=405", "class=4"]'))
    except ValueError as e:
        raise ConfigError(f"{where}.reply_codes: {e}") from None
    mark_codes = parse_codes(t.get("mark_codes", []), f"{where}.mark_codes") if t.get("mark_codes") else frozenset()
    retry_down = t.get("retry_down", d.retry_down)
    if not isinstance(retry_down, bool):
        raise ConfigError(f"{where}.retry_down: expected true or false, got {retry_down!r}")
    method = str(t.get("method", d.method))
    if not method.isalpha():
        raise ConfigError(f"{where}.method: expected a SIP method name, got {method!r}")
    return Probing(
        interval=interval, timeout=timeout, method=method.upper(), from_uri=str(t.get("from_uri", d.from_uri)),
        probing_threshold=_number(t, "probing_threshold", where, d.probing_threshold, integer=True),
        inactive_threshold=_number(t, "inactive_threshold", where, d.inactive_threshold, integer=True),
        mode=mode, reply_codes=reply_codes, latency_alpha=alpha, mark=mark, mark_codes=mark_codes,
        retry_down=retry_down,
    )


def _flood(t: Any) -> Flood:
    where = "[flood]"
    t = _check_keys(t, {"kernel_filter", "source_rate", "ban_time", "trusted"}, where)
    d = Flood()
    kernel_filter = t.get("kernel_filter", d.kernel_filter)
    if not isinstance(kernel_filter, bool):
        raise ConfigError(f"{where}.kernel_filter: expected true or false, got {kernel_filter!r}")
    trusted = []
    for net in _str_list(t, "trusted", where, '["10.0.0.0/8", "192.0.2.7"]'):
        try:
            trusted.append(str(ipaddress.ip_network(net, strict=False)))
        except ValueError:
            raise ConfigError(f"{where}.trusted: {net!r} is not an address or a network like 10.0.0.0/8") from None
    return Flood(
        kernel_filter=kernel_filter,
        source_rate=_number(t, "source_rate", where, d.source_rate, integer=True, minimum=0, exclusive=False),
        ban_time=float(_number(t, "ban_time", where, d.ban_time)),
        trusted=tuple(trusted),
    )


def _security(t: Any, source: str) -> Security:
    where = "[security]"
    t = _check_keys(t, {"key_file", "dialog_next_hop"}, where)
    key_file = t.get("key_file", "")
    if not isinstance(key_file, str):
        raise ConfigError(f"{where}.key_file: expected a file path (\"\" for the default place)")
    if key_file and source and not os.path.isabs(key_file):
        key_file = os.path.join(os.path.dirname(os.path.abspath(source)), key_file)
    rule = t.get("dialog_next_hop", Security.dialog_next_hop)
    if rule not in ("destination", "any"):
        raise ConfigError(f"{where}.dialog_next_hop: expected \"destination\" (a request inside a dialog goes "
                          f"only to the dialog's destination) or \"any\", got {rule!r}")
    return Security(key_file=key_file, dialog_next_hop=rule)


def _tcp(t: Any) -> Tcp:
    where = "[tcp]"
    t = _check_keys(t, {"max_connections", "max_connections_per_source", "idle_timeout", "message_timeout"}, where)
    d = Tcp()
    total = _number(t, "max_connections", where, d.max_connections, integer=True)
    per_source = _number(t, "max_connections_per_source", where, min(d.max_connections_per_source, total),
                         integer=True)
    if per_source > total:
        raise ConfigError(f"{where}.max_connections_per_source: {per_source} is more than max_connections "
                          f"({total}); one address cannot hold more than all of them")
    return Tcp(max_connections=total, max_connections_per_source=per_source,
               idle_timeout=float(_number(t, "idle_timeout", where, d.idle_timeout)),
               message_timeout=float(_number(t, "message_timeout", where, d.message_timeout)))


_TLS_FILES = ("certificate", "private_key", "ca_list")
_TLS_KEYS = {*_TLS_FILES, "verify_certificate", "require_certificate", "method", "cipher_list"}


def _tls_profile(t: dict, where: str, source: str, default: TlsProfile, *, client: bool) -> TlsProfile:
    keys = _TLS_KEYS | ({"server_name", "sets"} if client else set())
    t = _check_keys(t, keys, where)
    values: dict[str, Any] = {}
    for key in _TLS_FILES:
        # A profile's own certificate goes with its own key, never the default's.
        inherited = "" if key == "private_key" and "certificate" in t else getattr(default, key)
        v = t.get(key, inherited)
        if not isinstance(v, str):
            raise ConfigError(f"{where}.{key}: expected a file path")
        if v and source and not os.path.isabs(v):
            v = os.path.join(os.path.dirname(os.path.abspath(source)), v)
        values[key] = v
    for key in ("verify_certificate", "require_certificate"):
        v = t.get(key, getattr(default, key))
        if not isinstance(v, bool):
            raise ConfigError(f"{where}.{key}: expected true or false, got {v!r}")
        values[key] = v
    method = t.get("method", default.method)
    if method not in TLS_METHODS:
        raise ConfigError(f"{where}.method: expected one of {', '.join(TLS_METHODS)} (TLS 1.0 and 1.1 are "
                          f"not offered: RFC 8996), got {method!r}")
    values["method"] = method
    for key in ("cipher_list", "server_name"):
        v = t.get(key, getattr(default, key))
        if not isinstance(v, str):
            raise ConfigError(f"{where}.{key}: expected a string")
        values[key] = v
    sets = t.get("sets", [])
    if not isinstance(sets, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in sets):
        raise ConfigError(f"{where}.sets: expected a list of destination set ids such as [2, 3]")
    values["sets"] = tuple(sets)
    if values["private_key"] and not values["certificate"]:
        raise ConfigError(f"{where}.private_key: given without a certificate")
    return replace(default, **values)


def _tls(t: Any, source: str) -> Tls:
    """`[tls]` (the server side), `[tls.client]` and its named profiles `[tls.client.NAME]`."""
    where = "[tls]"
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: expected a table")
    d = Tls()
    client_t = t.get("client", {})
    if not isinstance(client_t, dict):
        raise ConfigError(f"{where}.client: expected a table")
    server_t = _check_keys({k: v for k, v in t.items() if k not in ("client", "handshake_timeout")},
                           _TLS_KEYS, where)
    server = _tls_profile(server_t, where, source, d.server, client=False)
    if server.require_certificate and not server.verify_certificate:
        server = replace(server, verify_certificate=True)  # a certificate required is one verified
    named = {k: v for k, v in client_t.items() if isinstance(v, dict)}
    client = _tls_profile({k: v for k, v in client_t.items() if k not in named}, "[tls.client]", source,
                          d.client, client=True)
    if client.sets:
        raise ConfigError("[tls.client].sets: the default client profile serves every set; give sets to a "
                          "named profile ([tls.client.NAME])")
    profiles = []
    served: dict[int, str] = {}
    for name, table in named.items():
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise ConfigError(f"[tls.client.{name}]: a profile name is one word of letters, digits, '_', '.' or '-'")
        profile = replace(_tls_profile(table, f"[tls.client.{name}]", source, client, client=True), name=name)
        for setid in profile.sets:
            if setid in served:
                raise ConfigError(f"[tls.client.{name}].sets: set {setid} is already served by "
                                  f"[tls.client.{served[setid]}]")
            served[setid] = name
        profiles.append(profile)
    timeout = float(_number(t, "handshake_timeout", where, d.handshake_timeout))
    return Tls(server=server, client=client, profiles=tuple(profiles), handshake_timeout=timeout)


def _http(t: Any) -> Http:
    """`[http]`: listen = "IP:PORT" (off when absent), token."""
    where = "[http]"
    t = _check_keys(t, {"listen", "token"}, where)
    listen, token = t.get("listen", ""), t.get("token", "")
    if not isinstance(listen, str) or not isinstance(token, str):
        raise ConfigError(f"{where}: listen and token are strings (listen = \"127.0.0.1:9090\")")
    if listen:
        host, _, port = listen.rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ConfigError(f"{where}.listen: {listen!r}: expected IP:PORT such as \"127.0.0.1:9090\"") from None
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{where}.listen: {listen!r}: expected a port number 1-65535")
    return Http(listen=listen, token=token)


def _ha(t: Any) -> Ha:
    """`[cluster]`: redis = "redis://..." (a single node when absent), node."""
    where = "[cluster]"
    t = _check_keys(t, {"redis", "node"}, where)
    redis, node = t.get("redis", ""), t.get("node", "")
    if not isinstance(redis, str) or (redis and not re.match(r"(rediss?|unix)://", redis)):
        raise ConfigError(f"{where}.redis: expected a URL such as \"redis://10.0.0.9:6379/0\" "
                          f"(rediss:// over TLS), got {redis!r}")
    if not isinstance(node, str) or (node and not re.fullmatch(r"[A-Za-z0-9_.\-]+", node)):
        raise ConfigError(f"{where}.node: expected one word of letters, digits, '_', '.' or '-', got {node!r}")
    return Ha(redis=redis, node=node)


def _capture(t: Any) -> Capture:
    """`[capture]`: hep = "udp:IP:PORT" (off when absent), capture_id."""
    where = "[capture]"
    t = _check_keys(t, {"hep", "capture_id"}, where)
    hep = t.get("hep", "")
    if not isinstance(hep, str) or (hep and not re.fullmatch(r"udp:(\[[0-9A-Fa-f:.]+\]|[0-9.]+):[0-9]{1,5}", hep)):
        raise ConfigError(f"{where}.hep: expected \"udp:IP:PORT\" (a Homer collector), got {hep!r}")
    if hep:
        host, _, port = hep[4:].rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))  # an address: no name to resolve on the SIP path
        except ValueError:
            raise ConfigError(f"{where}.hep: {hep!r}: {host!r} is not an IP address") from None
        if not 0 < int(port) < 65536:
            raise ConfigError(f"{where}.hep: {hep!r}: expected a port number 1-65535")
    capture_id = _number(t, "capture_id", where, Capture.capture_id, integer=True, minimum=0, exclusive=False)
    if capture_id > 0xFFFFFFFF:  # a uint32 chunk (gdispatch.hep)
        raise ConfigError(f"{where}.capture_id: expected an integer from 0 to 4294967295, got {capture_id!r}")
    return Capture(hep=hep, capture_id=capture_id)
