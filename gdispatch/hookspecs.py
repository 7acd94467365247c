"""The plugin contract: every hook gdispatch calls, with when, what it receives and what it
may return. Plugins implement any of these with ``@gdispatch.hookimpl`` (a module in the
``hooks/`` folder named in ``[plugins] enabled``, or an installed package registered under
the ``gdispatch`` entry-point group).

Hooks run in the proxy's process and greenlets: they must not block (use gevent-friendly
I/O) and should be quick. An exception in a hook is logged with the plugin's name and
counted; the proxy carries on.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("gdispatch")
hookimpl = pluggy.HookimplMarker("gdispatch")


@hookspec
def gdispatch_startup(config) -> None:
    """Called once when the proxy has loaded its list and is about to serve.

    `config` is the `gdispatch.config.Config` in force. Return value ignored.
    """


@hookspec
def gdispatch_shutdown() -> None:
    """Called once when the proxy stops (SIGTERM/SIGINT). Return value ignored."""


@hookspec
def gdispatch_destination_state_changed(destination, old_state, new_state, reason) -> None:
    """Called on every state change of a destination, and once per destination with
    `old_state` None for its initial state at start and after a reload.

    `destination`: the `gdispatch.dispatcher.destination.Destination` (read `setid`,
    `uri`, `attr_map`, `duid`; do not change it). `old_state` / `new_state`: Kamailio's
    two letters ("AP", "IP", "DX"...). `reason`: why, for humans ("ping timeout",
    "ping reply 503 Service Unavailable", "no response within fr_timer", "initial
    state", "set_state by RPC"...). Return value ignored.
    """
