"""What the state commands read: a state string of ``dispatcher.set_state`` (Kamailio's
digits and script letters, and the two letters ``dispatcher.list`` shows) as the state
bits to write, and which destinations of a set a target names (an address, ``idx=N``,
``duid=NAME``, ``all``). Pure functions; the commands are gdispatch.control.methods'.
"""

from __future__ import annotations

from gdispatch.control.jsonrpc import RpcError
from gdispatch.dispatcher.destination import (
    FLAG_DISABLED,
    FLAG_INACTIVE,
    FLAG_PROBING,
    FLAG_TRYING,
    Destination,
    DispatcherSet,
)

INVALID_PARAMETERS = "Invalid Parameters"


def with_scheme(uri: str) -> str:
    """As the list file reads a destination: ``sip:`` added when it has no scheme."""
    return uri if uri.lower().startswith(("sip:", "sips:")) else "sip:" + uri


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


def chosen_destinations(dset: DispatcherSet, target: str, by_duid: bool) -> list[Destination]:
    """The destinations of `dset` that `target` names: ``all``; with `by_duid` a duid;
    else ``idx=N`` (the one at IDX N of ``dispatcher.list extended``), ``duid=NAME``, or
    an address (every destination with that URI).

    The two ``name=value`` forms tell apart destinations that share a URI (the same
    gateway in one set with different duid or attrs), which an address cannot. They are
    written like the attrs of a list line, need no quoting in a shell (a ``#2`` would
    start a shell comment and vanish), and cannot be a destination's address: a host
    name has no ``=``."""
    if target.lower() == "all":
        return list(dset.destinations)
    name, eq, value = target.partition("=")
    if by_duid or (eq and name.lower() == "duid"):
        duid = (target if by_duid else value).lower()
        return [d for d in dset.destinations if d.duid and d.duid.lower() == duid]
    if eq and name.lower() == "idx":
        if not (value.isascii() and value.isdigit()):
            raise RpcError(500, INVALID_PARAMETERS,
                           f"ADDRESS {target!r}: idx= takes the IDX that dispatcher.list extended shows (0, 1, ...)")
        idx = int(value)
        return [dset.destinations[idx]] if idx < len(dset.destinations) else []
    uri = with_scheme(target).lower()
    return [d for d in dset.destinations if d.uri.lower() == uri]


