"""tech_prefix: a per-destination technical prefix on the Request-URI user.

Each destination of dispatcher.list may carry two attrs, applied to the Request-URI user
in this order, as drouting's ``strip`` + ``pri_prefix`` and lcr's ``strip`` + ``prefix``
do:

    strip=N      remove the first N characters (a "+" counts as one); N at least the
                 user's length removes all of it
    prefix=P     then put P in front

``strip=2;prefix=011`` turns ``0044123`` into ``01144123``. A destination with neither
gets the user unchanged, and so does a Request-URI without a user part. Bad attrs are
warned about once when the list is loaded: a ``strip`` that is not a whole number is
ignored (the prefix still applies); a ``prefix`` a URI user cannot hold, or a ``strip``
that leaves nothing and no prefix, leaves the attempt unchanged, counted in
``plugin_errors``.

Why a hook on each attempt (`gdispatch_prepare_attempt`) and not once per request: every
attempt starts from the request as it arrived, so after a failover the next destination
gets only its own prefix, never the previous one's on top (Kamailio loses such rewrites on
``ds_next_dst``, kamailio#3388, and scripts that rewrite once stack the prefixes). That is
what makes one gateway IP with several prices work:

    # Bronze, Silver and Gold routes of one carrier: same address, told apart by prefix
    1 sip:203.0.113.10:5060 0 30 duid=gold;prefix=1001
    1 sip:203.0.113.10:5060 0 20 duid=silver;prefix=1002
    1 sip:203.0.113.10:5060 0 10 duid=bronze;strip=2;prefix=1003

with algorithm 8 (priority) sends ``1001<number>`` first and, if Gold answers 503,
``1002<number>`` (not ``10021001<number>``), then Bronze the number without its first
two characters after ``1003``.

Enable it in gdispatch.toml: ``[plugins] enabled = ["tech_prefix"]``. It has no settings
of its own. It runs last among the `gdispatch_prepare_attempt` plugins (``trylast``), so
number normalisation (e.g. the ``dialplan`` plugin) happens before the prefix is added.
"""

from __future__ import annotations

import logging

from gdispatch.hookspecs import hookimpl
from gdispatch.message_api import is_valid_user

log = logging.getLogger("gdispatch.plugins.tech_prefix")


def parse_strip(value: str | None) -> int:
    """The `strip` attr as a count of characters (0 when absent). ValueError when bad."""
    if value is None or value == "":
        return 0
    if not value.isdigit():
        raise ValueError(f"strip={value!r}: expected a whole number of characters")
    return int(value)


def rewrite(user: str, strip: int, prefix: str) -> str:
    """drouting/lcr semantics: strip `strip` leading characters, then prepend `prefix`."""
    return prefix + user[strip:]


@hookimpl(trylast=True)
def gdispatch_prepare_attempt(attempt) -> None:
    attrs = attempt.attrs
    prefix = attrs.get("prefix", "")
    strip_text = attrs.get("strip")
    if not prefix and not strip_text:
        return  # the usual case: nothing to do for this destination
    user = attempt.ruri_user
    if user is None:
        return  # sip:host without a user part: nothing to prefix
    try:
        strip = parse_strip(strip_text)
    except ValueError:
        strip = 0  # reported once when the list was loaded (below), not on every call
    new = rewrite(user, strip, prefix)
    if not new:
        # Everything stripped and no prefix: a SIP URI cannot have an empty user part.
        raise ValueError(f"{attempt.destination.uri}: strip={strip} leaves nothing of the user {user!r}")
    attempt.ruri_user = new  # checked by the message API: an invalid prefix raises EditError


@hookimpl
def gdispatch_list_loaded(dispatcher_list, reason) -> None:
    """Check every destination's prefix/strip attrs when a list is loaded, so that a typo
    is reported once instead of failing every call to that destination."""
    for dest in dispatcher_list.destinations():
        attrs = dest.attr_map
        try:
            parse_strip(attrs.get("strip"))
        except ValueError as e:
            log.warning("%s (%s): %s; the strip attr is ignored", dest.uri, dest.where, e)
        prefix = attrs.get("prefix", "")
        if prefix and not is_valid_user(prefix):
            log.warning("%s (%s): prefix=%r has characters a Request-URI user cannot hold unescaped; "
                        "calls to it will be sent without the prefix", dest.uri, dest.where, prefix)
