"""The plugin manager: one pluggy `PluginManager` for the process, with gdispatch's hook
specifications, the plugins named in the configuration and those installed as packages
under the ``gdispatch`` entry-point group.

A name in ``[plugins] enabled`` is a file: ``<hooks_dir>/<name>.py`` when there is one,
else the plugin of that name shipped with gdispatch (gdispatch/hooks/), so
``enabled = ["tech_prefix"]`` works from any configuration and an operator's own copy in
``hooks_dir`` replaces the shipped one.

`PluginHost.call(name, **kwargs)` calls a hook with fault isolation: an exception in a
plugin is logged with the plugin's name and counted in `errors`, and never reaches the
caller; the calls and the time spent in each plugin's hook are summed in `timing`. A
hook nobody implements costs one attribute lookup (checked once per hook).
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

# The plugins shipped with gdispatch, found by name when hooks_dir has no file of that name.
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hooks")

log = logging.getLogger("gdispatch.plugins")


class PluginError(Exception):
    """A plugin could not be loaded; the message names it and says why."""


def shipped() -> list[str]:
    """The names of the plugins shipped with gdispatch."""
    try:
        files = os.listdir(SHIPPED_DIR)
    except OSError:
        return []
    return sorted(f[:-3] for f in files if f.endswith(".py") and not f.startswith("_"))


def plugin_path(name: str, hooks_dir: str) -> str:
    """The file of plugin `name`: ``<hooks_dir>/<name>.py`` when it exists, else the one
    shipped with gdispatch. Raises PluginError when neither exists, or when `name` is not
    a module name (``../x`` or ``/x`` would leave `hooks_dir`)."""
    if not name.isidentifier():
        raise PluginError(f"plugin {name!r}: expected a module name (letters, digits, _), the file's name "
                          f"without .py")
    own = os.path.join(hooks_dir, name + ".py")
    if os.path.exists(own):
        return own
    if name in shipped():
        return os.path.join(SHIPPED_DIR, name + ".py")
    raise PluginError(f"plugin {name!r}: no file {own}, and gdispatch ships no plugin of that name "
                      f"(it ships {', '.join(shipped()) or 'none'})")


class PluginHost:
    def __init__(self, time_budget: float = 0.05) -> None:
        self.pm = pluggy.PluginManager("gdispatch")
        self.pm.add_hookspecs(hookspecs)
        self.errors: Counter[str] = Counter()
        self.slow: Counter[str] = Counter()
        # (plugin name, hook) -> [calls, seconds in them], for the metrics.
        self.timing: dict[tuple[str, str], list] = {}
        self.time_budget = time_budget
        self._implemented: dict[str, bool] = {}
        self._user: dict[str, bool] = {}
        # plugin name -> where it came from (file path, entry point, "built in")
        self.sources: dict[str, str] = {}

    def register_builtin(self, plugin) -> None:
        self.pm.register(plugin, name="builtin")
        self.sources["builtin"] = "built in (gdispatch.builtin)"
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

    def call_order(self, hook: str) -> list[str]:
        """The names of the plugins implementing `hook`, in the order they are called."""
        return [impl.plugin_name for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls())]

    def load(self, names: tuple[str, ...] | list[str], hooks_dir: str, *, entry_points: bool = True) -> None:
        """Import the plugin files `names` (from `hooks_dir`, else shipped with gdispatch:
        `plugin_path`) and the installed entry points, and register them. Raises
        PluginError naming the plugin that is not found, does not import, or whose hook
        implementations do not match the hook specifications.

        Call order: the files in the order of `names` (`[plugins] enabled`), then the
        installed packages; within that, `tryfirst`/`trylast` marks win, as in pluggy.
        """
        modules = []
        for name in names:
            path = plugin_path(name, hooks_dir)
            modname = f"gdispatch_hooks_{name}"
            try:
                spec = importlib.util.spec_from_file_location(modname, path)
                if spec is None or spec.loader is None:
                    raise ImportError("not a Python module")
                module = importlib.util.module_from_spec(spec)
                sys.modules[modname] = module
                spec.loader.exec_module(module)
            except Exception as e:
                sys.modules.pop(modname, None)
                raise PluginError(f"plugin {name!r} ({path}) failed to import: {type(e).__name__}: {e}") from e
            modules.append((name, module, path))
        if entry_points:
            self._load_entry_points()
        # pluggy calls the plugin registered last first: register the files in reverse so
        # that they are called in the order the operator listed them.
        for name, module, path in reversed(modules):
            self._register(module, name, path)
        self._implemented.clear()
        self._user.clear()

    def _load_entry_points(self, group: str = "gdispatch") -> None:
        """pluggy's `load_setuptools_entrypoints`, naming the plugin that fails."""
        import importlib.metadata

        for dist in list(importlib.metadata.distributions()):
            for ep in dist.entry_points:
                if ep.group != group or self.pm.has_plugin(ep.name) or self.pm.is_blocked(ep.name):
                    continue
                where = f"entry point {ep.value} of {dist.metadata['Name']} {dist.version}"
                try:
                    plugin = ep.load()
                except Exception as e:
                    raise PluginError(f"plugin {ep.name!r} ({where}) failed to import: {type(e).__name__}: {e}") \
                        from e
                self._register(plugin, ep.name, where)

    def _register(self, plugin, name: str, where: str) -> None:
        if self.pm.has_plugin(name) or name == "builtin":
            raise PluginError(f"plugin {name!r} ({where}): a plugin of that name is already loaded "
                              f"({self.sources.get(name, 'built in')})")
        try:
            self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as e:
            raise PluginError(f"plugin {name!r} ({where}): {e}") from e
        try:
            # A @hookimpl whose name is no hook (a typo) would never be called: refuse it.
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            self.pm.unregister(name=name)
            raise PluginError(f"plugin {name!r} ({where}): {e}") from e
        self.sources[name] = where

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
            # The hook's name is part of the message template: each hook's failures are a
            # kind of their own when the log sums up repeated warnings (gdispatch.logsafe).
            log.exception(f"plugin %s failed in {hook}; carrying on without it", impl.plugin_name)
            return None
        finally:
            took = time.perf_counter() - start
            key = (impl.plugin_name, hook)
            timing = self.timing.get(key)
            if timing is None:
                timing = self.timing[key] = [0, 0.0]
            timing[0] += 1
            timing[1] += took
            if took > self.time_budget:
                self.slow[impl.plugin_name] += 1
                log.warning(f"plugin %s took %.0f ms in {hook} (budget %.0f ms): it holds up other calls",
                            impl.plugin_name, took * 1000, self.time_budget * 1000)

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
