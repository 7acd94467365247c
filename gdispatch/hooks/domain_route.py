"""domain_route: choose the destination set from the Request-URI domain, with wildcards.

"pbx1.example.com goes to ast1, pbx2.example.com to ast2": the `[[route]]` tables of
gdispatch.toml already do that with ``domains = [...]``. This plugin is the programmable
variant, as an example of `gdispatch_choose_route`: a table of domain → set, where a
name may be a wildcard suffix.

    [plugins]
    enabled = ["domain_route"]

    [plugins.domain_route]
    algorithm = 4                   # default algorithm (Kamailio's numbers; 4 round robin)
    methods = ["INVITE"]            # only these methods (default: any)

    [plugins.domain_route.domains]
    "pbx1.example.com" = 1                          # this name -> set 1
    "*.pbx.example.com" = { set = 2, algorithm = 8 }  # any name under pbx.example.com
    "*" = 3                                         # anything else (optional)

Matching is case-insensitive on the Request-URI host: an exact name first, then the
longest wildcard suffix (``*.pbx.example.com`` matches ``a.pbx.example.com`` and
``a.b.pbx.example.com``, not ``pbx.example.com`` itself), then ``"*"``. A domain given as
a table may also set `limit` (destinations to try), `failover_codes` (["408", "5xx"]) and
`mode` ("dst", or "domain" to also put the destination in the Request-URI host), with the
meanings of the same `[[route]]` keys. A request whose domain is in no entry goes on to
the next plugin and then the `[[route]]` tables. A domain listed here is dispatched even
if it is not in ``[server] domains``: listing it is the permission.

A bad table is reported at start-up (log and ``gdispatch rpc stats`` plugin_errors) and
then the plugin routes nothing; a set that the dispatcher.list does not have is warned
about when the list is loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gdispatch.config import ConfigError, parse_codes
from gdispatch.dispatcher.algorithms import SUPPORTED
from gdispatch.hookspecs import hookimpl
from gdispatch.message_api import RouteChoice

log = logging.getLogger("gdispatch.plugins.domain_route")

_ENTRY_KEYS = {"set", "algorithm", "limit", "failover_codes", "mode"}


@dataclass(frozen=True)
class Entry:
    pattern: str  # as written: "pbx1.example.com", "*.pbx.example.com", "*"
    set: int
    algorithm: int
    limit: int = 0
    failover_codes: frozenset[int] | None = None
    mode: str = "dst"

    def choice(self) -> RouteChoice:
        return RouteChoice(self.set, self.algorithm, limit=self.limit, failover_codes=self.failover_codes,
                           mode=self.mode, name=f"domain_route {self.pattern}")


@dataclass(frozen=True)
class Table:
    exact: dict[str, Entry]
    suffixes: dict[str, Entry]  # ".pbx.example.com" -> entry
    default: Entry | None
    methods: frozenset[str] | None  # None: any method

    def lookup(self, host: str) -> Entry | None:
        host = host.lower()
        found = self.exact.get(host)
        if found is not None:
            return found
        if self.suffixes:
            # The longest suffix first: "a.b.pbx.example.com" tries ".b.pbx.example.com",
            # then ".pbx.example.com", then ".example.com"...
            dot = host.find(".")
            while dot >= 0:
                found = self.suffixes.get(host[dot:])
                if found is not None:
                    return found
                dot = host.find(".", dot + 1)
        return self.default


def _int(v, what: str, low: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ValueError(f"{what}: expected a whole number >= {low}, got {v!r}")
    return v


def _algorithm(v, what: str) -> int:
    if _int(v, what, 0) not in SUPPORTED:
        raise ValueError(f"{what}: algorithm {v} is not supported (supported: {sorted(SUPPORTED)})")
    return v


def parse_table(settings: dict) -> Table:
    """The ``[plugins.domain_route]`` table. ValueError naming what is wrong."""
    where = "[plugins.domain_route]"
    unknown = sorted(set(settings) - {"algorithm", "methods", "domains"})
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: algorithm, domains, methods)")
    algorithm = _algorithm(settings.get("algorithm", 4), f"{where}.algorithm")
    methods = settings.get("methods")
    if methods is not None:
        if not isinstance(methods, list) or not all(isinstance(m, str) and m.isalpha() for m in methods):
            raise ValueError(f"{where}.methods: expected a list of method names such as [\"INVITE\"]")
        methods = frozenset(m.upper() for m in methods) or None
    domains = settings.get("domains", {})
    if not isinstance(domains, dict):
        raise ValueError(f"{where}.domains: expected a table of \"domain\" = set")
    exact: dict[str, Entry] = {}
    suffixes: dict[str, Entry] = {}
    default = None
    for pattern, value in domains.items():
        what = f"{where}.domains.{pattern!r}"
        name = pattern.strip().lower()
        if isinstance(value, dict):
            bad = sorted(set(value) - _ENTRY_KEYS)
            if bad:
                raise ValueError(f"{what}: unknown key {bad[0]!r} (known: {', '.join(sorted(_ENTRY_KEYS))})")
            if "set" not in value:
                raise ValueError(f"{what}: no set")
            codes = None
            if "failover_codes" in value:
                try:
                    codes = parse_codes(value["failover_codes"], f"{what}.failover_codes")
                except ConfigError as e:
                    raise ValueError(str(e)) from None
            mode = value.get("mode", "dst")
            if mode not in ("dst", "domain"):
                raise ValueError(f"{what}.mode: expected \"dst\" or \"domain\", got {mode!r}")
            entry = Entry(pattern, _int(value["set"], f"{what}.set", 0),
                          _algorithm(value.get("algorithm", algorithm), f"{what}.algorithm"),
                          _int(value.get("limit", 0), f"{what}.limit", 0), codes, mode)
        else:
            entry = Entry(pattern, _int(value, what, 0), algorithm)
        if name == "*":
            default = entry
        elif name.startswith("*."):
            rest = name[1:]  # ".pbx.example.com"
            if "*" in rest or rest == ".":
                raise ValueError(f"{what}: a wildcard is \"*.\" followed by a domain name")
            suffixes[rest] = entry
        elif not name or "*" in name:
            raise ValueError(f"{what}: expected a domain name, \"*.\" + a domain name, or \"*\"")
        else:
            exact[name] = entry
    return Table(exact, suffixes, default, methods)


_table: Table | None = None
_list = None  # the dispatcher list in force, to check the sets the table names


def _check_sets() -> None:
    if _table is None or _list is None:
        return
    entries = [*_table.exact.values(), *_table.suffixes.values(), *([_table.default] if _table.default else [])]
    for e in entries:
        if _list.get(e.set) is None:
            log.warning("domain_route: %s -> set %d, which %s does not have: such calls get "
                        "\"no destination\"", e.pattern, e.set, _list.source or "the list")


@hookimpl
def gdispatch_startup(config) -> None:
    global _table
    _table = None  # a bad table routes nothing (see above)
    _table = parse_table(config.plugin_settings.get("domain_route", {}))
    log.info("domain_route: %d name(s), %d wildcard(s)%s", len(_table.exact), len(_table.suffixes),
             ", a default" if _table.default else "")
    _check_sets()


@hookimpl
def gdispatch_list_loaded(dispatcher_list, reason) -> None:
    global _list
    _list = dispatcher_list
    _check_sets()


@hookimpl
def gdispatch_choose_route(request, source_sets):
    table = _table
    if table is None or (table.methods is not None and request.method not in table.methods):
        return None
    entry = table.lookup(request.ruri_host)
    return None if entry is None else entry.choice()
