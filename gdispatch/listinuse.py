"""Which dispatcher list is in use, and how it changes: the list file read again
(`reload`, on SIGHUP, `dispatcher.reload`, a change on disk), a list edited by the RPC
(`replace_list`), the list another node of the pair swapped in (`apply_shared_list`,
gdispatch.ha), the primary's list in a worker (`take_list`); each keeps the state of the
destinations that stay (gdispatch.dispatcher.reload.carry_state) and the states the
operator set (gdispatch.dispatcher.statefile). A reload also reads the dialog keys and
the TLS certificates again.

`ListInUse` is a part of gdispatch.app.App, written apart: it works on the App's
proxy, prober, resolver, cluster role and plugins, which the App builds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gdispatch import logsafe, sdnotify
from gdispatch.cluster.channel import apply_states
from gdispatch.dispatcher.listfile import ListError, load_list, parse_list
from gdispatch.dispatcher.reload import ReloadSummary, carry_state
from gdispatch.proxy.routing import missing_sets
from gdispatch.recordroute import KeyFileError, default_key_path, load_keys
from gdispatch.watch import file_digest

log = logging.getLogger("gdispatch")


class ListInUse:
    """The App's list-changing half (see the module's docstring)."""

    # What the App gives (gdispatch.app.App builds them).
    config: Any
    cluster: Any
    keyring: Any
    proxy: Any
    transports: Any
    plugins: Any
    sockets: Any
    operator_states: Any
    changes: Any
    ha: Any
    _list_digest: str | None

    _proxy: Callable[[], Any]
    _transports: Callable[[], Any]
    _dns: Callable[[], Any]
    _prober: Callable[[], Any]
    _took_list: Callable[[Any, str], None]
    _reachable: Callable[[Any, str], str]

    def read_list(self, text: str | None = None, *, mode: str | None = None) -> Any:
        """A dispatcher list as this process reads one: `text` (None: the list file),
        with the configuration's load_mode (or `mode`), order of equal priorities and
        listen addresses. Raises ListError."""
        config = self.config
        mode = mode or config.load_mode
        if text is None:
            return load_list(config.list_file, mode=mode, kamailio_order=config.kamailio_order, sockets=self.sockets)
        return parse_list(text, config.list_file, mode=mode, kamailio_order=config.kamailio_order,
                          sockets=self.sockets)

    def take_list(self, text: str, reason: str, states: dict) -> None:
        """A worker: swap in the list the primary swapped in, with the primary's states."""
        new = self.read_list(text)
        self._install(new, reason, states)
        self.plugins.call("gdispatch_list_loaded", dispatcher_list=new, reason=reason)

    @property
    def key_path(self) -> str:
        return self.config.security.key_file or default_key_path()

    def reload_keys(self) -> str:
        """Read the key file again (a key added or retired, gdispatch.recordroute); on an
        error the running keys stay. Returns what happened, for the reload's answer."""
        try:
            ring = load_keys(self.key_path)
        except KeyFileError as e:
            log.error("%s; the running dialog keys stay", e, extra=logsafe.KEEP)
            return f"dialog keys not reloaded: {e}"
        if self.keyring is not None and ring.keys == self.keyring.keys:
            return ""
        self.keyring = ring
        if self.proxy is not None:
            self._proxy().keyring = ring
        self.cluster.keys_changed(ring.keys)
        msg = f"dialog keys reloaded: {len(ring.keys)} key(s), new dialogs signed with {ring.signing_id.decode()}"
        log.info("%s", msg, extra=logsafe.KEEP)
        return msg

    def reload_tls(self) -> str:
        """Read the `[tls]` certificates and keys again (gdispatch.net.tls): new
        connections take them, established ones keep theirs; on an error the running
        ones stay. Returns what happened, for the reload's answer ('' without TLS)."""
        contexts = self.transports.tls if self.transports is not None else None
        if contexts is None:
            return ""
        self.cluster.tls_reloaded()
        return contexts.reload_logged(self._transports().stats)

    def reload(self, reason: str = "reload requested") -> str:
        """Load the list file again and swap it in, keeping each unchanged destination's
        state, and the dialog keys. Raises ListError (the running list stays) when the
        list does not load."""
        config = self.config
        sdnotify.reloading()
        keys = "; ".join(x for x in (self.reload_keys(), self.reload_tls()) if x)
        try:
            try:
                new = self.read_list()
            except ListError as e:
                for p in e.problems:
                    log.error("%s", p, extra=logsafe.KEEP)
                log.error("%s: the list was not reloaded; the running one stays", config.list_file)
                self.changes.reload(reason, "; ".join(e.problems[:3]) or "the list did not load", ok=False)
                raise
            for problem in new.problems:
                log.warning("%s (line skipped: [dispatcher].load_mode = \"skip\")", problem, extra=logsafe.KEEP)
            missing = missing_sets(config.routes, new)
            if missing:
                for p in missing:
                    log.error("%s", p, extra=logsafe.KEEP)
                log.error("%s: the list was not reloaded; the running one stays", config.list_file)
                self.changes.reload(reason, "; ".join(missing[:3]), ok=False)
                raise ListError(missing)
            self._list_digest = file_digest(config.list_file)
            summary = self._swap_in(new, reason, from_file=True)
            return f"{summary}; {keys}" if keys else summary
        finally:
            sdnotify.ready()

    def _install(self, new, reason: str, states: dict | None = None, *, from_file: bool = False) -> ReloadSummary:
        """Put `new` in the place of the running list, each unchanged destination keeping
        its state (or taking the primary's `states`); the others take the state the
        operator set, if any. `from_file`: `new` is the list file, just loaded."""
        config = self.config
        proxy = self._proxy()
        self._dns().resolve_all(new, self._reachable)
        summary = carry_state(proxy.dlist, new, keep_state=config.reload_keeps_state)
        if config.reload_keeps_state:
            proxy.calls.rebind(summary.replaced)
            from_the_file = {id(d) for d in summary.added + summary.file_changed}
            self.operator_states.restore(new.destinations(), lambda d: id(d) in from_the_file, prune=from_file)
        else:
            self.operator_states.restore(new.destinations(), lambda d: True, prune=from_file)
        if states is not None:
            apply_states(new, states)  # the primary's states win
        proxy.set_list(new)
        self._took_list(new, reason)
        return summary

    def _swap_in(self, new, reason: str, *, from_file: bool) -> str:
        config = self.config
        summary = self._install(new, reason, from_file=from_file)
        if self.ha is not None:
            self.ha.list_swapped(new.text)
        # After the cluster heard of the new list (in _install): the initial states
        # attach() reports name its destinations, which the workers must have by then.
        self._prober().attach(new)
        self.plugins.call("gdispatch_list_loaded", dispatcher_list=new, reason=reason)
        msg = f"{config.list_file} reloaded ({reason}): {summary.describe()}"
        self.changes.reload(reason, summary.describe(), from_file=from_file)
        log.info("%s", msg, extra=logsafe.KEEP)
        return msg

    def replace_list(self, text: str, reason: str) -> None:
        new = self.read_list(text, mode="strict")
        self._swap_in(new, reason, from_file=False)

    def apply_shared_list(self, text: str, reason: str) -> None:
        """The list another node swapped in (gdispatch.ha): swapped in here too, not
        written to the file. Raises ListError (the running list stays)."""
        config = self.config
        new = self.read_list(text)
        missing = missing_sets(config.routes, new)
        if missing:
            raise ListError(missing)
        self._swap_in(new, reason, from_file=False)

    def _file_changed(self) -> None:
        digest = file_digest(self.config.list_file)
        if digest is None or digest == self._list_digest:
            return
        try:
            self.reload("the file changed")
        except ListError:
            self._list_digest = digest  # tried; the next good write recovers

