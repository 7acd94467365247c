"""The plugin manager: one pluggy `PluginManager` for the process, with gdispatch's hook
specifications, the plugins named in the configuration (files in ``hooks_dir``) and those
installed as packages under the ``gdispatch`` entry-point group.

`PluginHost.call(name, **kwargs)` calls a hook with fault isolation: an exception in a
plugin is logged with the plugin's name and counted in `errors`, and never reaches the
caller. A hook nobody implements costs one attribute lookup (checked once per hook).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from collections import Counter

import pluggy

from gdispatch import hookspecs

log = logging.getLogger("gdispatch.plugins")


class PluginError(Exception):
    """A plugin could not be loaded; the message names it and says why."""


class PluginHost:
    def __init__(self, time_budget: float = 0.05) -> None:
        self.pm = pluggy.PluginManager("gdispatch")
        self.pm.add_hookspecs(hookspecs)
        self.errors: Counter[str] = Counter()
        self.slow: Counter[str] = Counter()
        self.time_budget = time_budget
        self._implemented: dict[str, bool] = {}
        self._user: dict[str, bool] = {}

    def register_builtin(self, plugin) -> None:
        self.pm.register(plugin, name="builtin")
        self._implemented.clear()
        self._user.clear()

    def user_implemented(self, hook: str) -> bool:
        """Whether a plugin other than the built-in one implements `hook` (checked once)."""
        known = self._user.get(hook)
        if known is None:
            known = self._user[hook] = any(
                impl.plugin_name != "builtin" for impl in getattr(self.pm.hook, hook).get_hookimpls())
        return known

    def plugins(self) -> list[tuple[str, list[str]]]:
        """(plugin name, hooks it implements) for every registered plugin."""
        out = []
        for name, plugin in self.pm.list_name_plugin():
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            out.append((name, hooks))
        return out

    def load(self, names: tuple[str, ...] | list[str], hooks_dir: str, *, entry_points: bool = True) -> None:
        for name in names:
            path = os.path.join(hooks_dir, name + ".py")
            if not os.path.exists(path):
                raise PluginError(f"plugin {name!r}: no file {path}")
            modname = f"gdispatch_hooks_{name}"
            try:
                spec = importlib.util.spec_from_file_location(modname, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[modname] = module
                spec.loader.exec_module(module)
            except Exception as e:
                raise PluginError(f"plugin {name!r} ({path}) failed to import: {type(e).__name__}: {e}") from e
            self.pm.register(module, name=name)
        if entry_points:
            try:
                self.pm.load_setuptools_entrypoints("gdispatch")
            except Exception as e:
                raise PluginError(f"an installed plugin failed to load: {type(e).__name__}: {e}") from e
        self._implemented.clear()
        self._user.clear()

    def implemented(self, hook: str) -> bool:
        known = self._implemented.get(hook)
        if known is None:
            known = self._implemented[hook] = bool(getattr(self.pm.hook, hook).get_hookimpls())
        return known

    def _run(self, impl, hook: str, kwargs: dict):
        start = time.perf_counter()
        try:
            return impl.function(**{k: kwargs[k] for k in impl.argnames if k in kwargs})
        except Exception:
            self.errors[impl.plugin_name] += 1
            log.exception("plugin %s failed in %s; carrying on without it", impl.plugin_name, hook)
            return None
        finally:
            took = time.perf_counter() - start
            if took > self.time_budget:
                self.slow[impl.plugin_name] += 1
                log.warning("plugin %s took %.0f ms in %s (budget %.0f ms): it holds up other calls",
                            impl.plugin_name, took * 1000, hook, self.time_budget * 1000)

    def call(self, hook: str, **kwargs):
        """Call every implementation, each isolated: returns the list of results."""
        if not self.implemented(hook):
            return []
        results = []
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            res = self._run(impl, hook, kwargs)
            if res is not None:
                results.append(res)
        return results

    def call_first(self, hook: str, **kwargs):
        """Call implementations in order until one returns something (firstresult)."""
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            res = self._run(impl, hook, kwargs)
            if res is not None:
                return res
        return None
