"""The plugin contract: every hook gdispatch calls, with when, what it receives and what it
may return. Plugins implement any of these with ``@gdispatch.hookimpl`` (a file named in
``[plugins] enabled``, from ``hooks_dir`` or shipped with gdispatch in gdispatch/hooks/, or
an installed package registered under the ``gdispatch`` entry-point group).

Hooks run in the proxy's process and greenlets: they must not block (use gevent-friendly
I/O) and should be quick. An exception in a hook is logged with the plugin's name and
counted; the proxy carries on.

With several workers (``--workers N``) every worker process loads the plugins: the hooks
about calls, `gdispatch_list_loaded`, `gdispatch_startup` and `gdispatch_shutdown` run in
each (a plugin's module state is per worker), while `gdispatch_destination_state_changed`
runs once, in the primary, where probing keeps the one state of each destination.

Order: plugins are called in the order of ``[plugins] enabled``, then installed packages,
then the built-in behaviour (last); ``@hookimpl(tryfirst=True)`` / ``trylast=True`` move an
implementation to the front or the back, as in pytest. A plugin's settings are its
``[plugins.<name>]`` table of gdispatch.toml: ``config.plugin_settings.get(<name>, {})``,
read in `gdispatch_startup`. ``gdispatch plugins --config FILE`` lists what is loaded.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("gdispatch")
hookimpl = pluggy.HookimplMarker("gdispatch")


@hookspec(firstresult=True)
def gdispatch_choose_route(request, source_sets):
    """Choose what to do with a new request (out of a dialog, for one of our domains or
    a domain a route names). Called before the `[[route]]` tables, which are the built-in
    implementation (it runs last).

    `request`: a `gdispatch.message_api.RequestView`. `source_sets`: a frozenset of the
    set ids having a destination at the request's source address.

    Return a `gdispatch.message_api.RouteChoice` (set, algorithm, limit, failover codes,
    mode) or `RouteChoice.reply(code, reason)` to answer locally; None to let the next
    plugin (and finally the route tables) decide. The first non-None answer wins.
    """


@hookspec
def gdispatch_prepare_attempt(attempt) -> None:
    """Called for every attempt of a dispatched request, just before it is sent: the first
    one, each one after a failover, and each branch of a parallel fork.

    `attempt`: a `gdispatch.message_api.Attempt`, a fresh view of the request as it
    arrived (edits of an earlier attempt are not there), with `attempt.destination` and
    its `attempt.attrs`, and `attempt.number` (1, 2, ...). Edit it: `ruri_user`,
    `ruri_host`, `add_header(name, value)`, `remove_header(name)`. Every plugin is
    called, in order (see above); later plugins see earlier plugins' Request-URI edits.
    A refused edit raises `EditError`; a plugin that raises is logged and counted, the
    edits it made before stay, and the next plugin is called. Return value ignored.
    """


@hookspec(firstresult=True)
def gdispatch_after_failure(request, destination, status, attempt_number, route):
    """Called when an attempt failed: a final response >= 300 (`status`), or 408 when
    the destination did not answer in time, or 503 for a transport error. `route` is the
    route being followed (`route.set`, `route.failover_codes`...).

    Return a `gdispatch.message_api.FailureAction`: `FailureAction.next()` to try the
    next destination, `FailureAction.stop()` to send the caller the best response so far,
    `FailureAction.reply(code, reason)` to answer with that, or
    `FailureAction.switch(set, algorithm)` to continue with another set. None lets the
    next plugin decide; the built-in policy (last) fails over on the route's
    `failover_codes`.
    """


@hookspec
def gdispatch_response(request, response_status, destination) -> None:
    """Called for each response to a dispatched request on its way back to the caller
    (provisional and final, once per response). `destination` is the one that answered.
    Observe only; return value ignored.
    """


@hookspec
def gdispatch_list_loaded(dispatcher_list, reason) -> None:
    """Called when a dispatcher list was loaded: at start (`reason` "start") and after
    each reload. Return value ignored.
    """


@hookspec
def gdispatch_startup(config) -> None:
    """Called once when the proxy has loaded its list and is about to serve.

    `config` is the `gdispatch.config.Config` in force; a plugin's own settings are
    `config.plugin_settings.get("<plugin name>", {})` (its ``[plugins.<name>]`` table).
    Return value ignored.
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
