"""dialplan: number translation rules on the Request-URI user, like Kamailio's dialplan module.

Rules are read from gdispatch.toml, in order; the first rule whose `match` finds the
Request-URI user rewrites it and the others are not tried (Kamailio's dp_translate also
applies one rule):

    [plugins]
    enabled = ["dialplan", "tech_prefix"]

    [[plugins.dialplan.rule]]
    match = "^00"                   # a Python regular expression, searched in the user
    replace = "+"                   # what the matched text becomes (\\1 or \\g<name>: groups)

    [[plugins.dialplan.rule]]
    match = "^0([1-9][0-9]{8})$"    # national number -> E.164
    replace = "+44\\1"
    sets = [1, 2]                   # only for destinations of these sets (default: all)

Only the matched part is replaced (``re.sub`` with count=1), so ``^00`` → ``+`` turns
``0044123`` into ``+44123``; anchor the whole user (``^...$``) to rewrite it entirely.

When: on each attempt (`gdispatch_prepare_attempt`), first among the plugins (``tryfirst``),
so that `tech_prefix` adds the destination's prefix to the translated number. Each
attempt starts from the request as it arrived, so every attempt is translated from the
original number: the same rule gives the same result for every destination, unless the
rule is restricted to some `sets`. A user no rule matches is sent as it is.

A bad rule (a regular expression that does not compile, a reference to a group the
expression does not have, an unknown key) is reported at start-up, in the log and in
``gdispatch rpc stats`` (plugin_errors: dialplan), and then no rule is applied at all:
half a dial plan would route calls in surprising ways.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from gdispatch.hookspecs import hookimpl

log = logging.getLogger("gdispatch.plugins.dialplan")

_KEYS = {"match", "replace", "sets"}
# \1..\99 and \g<name> / \g<1> in a replacement template
_GROUP_REF = re.compile(r"\\(?:(\d{1,2})|g<([^>]*)>)")


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern
    replace: str
    sets: frozenset[int] | None  # None: every set
    where: str  # "rule #2", for messages

    def applies_to(self, setid: int) -> bool:
        return self.sets is None or setid in self.sets


def parse_rules(settings: dict) -> list[Rule]:
    """The rules of a ``[plugins.dialplan]`` table. ValueError naming the bad rule."""
    unknown = sorted(set(settings) - {"rule"})
    if unknown:
        raise ValueError(f"[plugins.dialplan]: unknown key {unknown[0]!r} (rules go in [[plugins.dialplan.rule]])")
    raw = settings.get("rule", [])
    if not isinstance(raw, list):
        raise ValueError("[plugins.dialplan].rule: expected [[plugins.dialplan.rule]] tables")
    rules = []
    for i, r in enumerate(raw, 1):
        where = f"[[plugins.dialplan.rule]] #{i}"
        if not isinstance(r, dict):
            raise ValueError(f"{where}: expected a table with match and replace")
        bad = sorted(set(r) - _KEYS)
        if bad:
            raise ValueError(f"{where}: unknown key {bad[0]!r} (known: {', '.join(sorted(_KEYS))})")
        match, replace = r.get("match"), r.get("replace")
        if not isinstance(match, str) or not match:
            raise ValueError(f"{where}: match: expected a regular expression")
        if not isinstance(replace, str):
            raise ValueError(f"{where}: replace: expected a string (\"\" to delete the match)")
        try:
            pattern = re.compile(match)
        except re.error as e:
            raise ValueError(f"{where}: match {match!r}: {e}") from None
        for num, name in _GROUP_REF.findall(replace):
            ref = num or name
            if not (int(ref) <= pattern.groups if ref.isdigit() else ref in pattern.groupindex):
                raise ValueError(f"{where}: replace {replace!r}: {match!r} has no group {ref}")
        sets = r.get("sets")
        if sets is not None:
            if not isinstance(sets, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in sets):
                raise ValueError(f"{where}: sets: expected a list of set ids such as [1, 2]")
            sets = frozenset(sets)
        rules.append(Rule(pattern, replace, sets, where))
    return rules


def translate(rules: list[Rule], user: str, setid: int) -> str | None:
    """The user translated by the first rule that matches it, or None if none does."""
    for rule in rules:
        if rule.applies_to(setid) and rule.pattern.search(user):
            return rule.pattern.sub(rule.replace, user, count=1)
    return None


_rules: list[Rule] = []


@hookimpl
def gdispatch_startup(config) -> None:
    global _rules
    _rules = []  # a bad table leaves no rule at all (see above)
    _rules = parse_rules(config.plugin_settings.get("dialplan", {}))
    log.info("dialplan: %d rule(s)", len(_rules))


@hookimpl(tryfirst=True)
def gdispatch_prepare_attempt(attempt) -> None:
    user = attempt.ruri_user
    if not _rules or user is None:
        return
    new = translate(_rules, user, attempt.destination.setid)
    if new is not None and new != user:
        attempt.ruri_user = new  # an invalid result raises EditError: logged, counted, not sent
