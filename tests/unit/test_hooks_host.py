"""Loading and calling plugins (gdispatch/plugins.py): the order of `[plugins] enabled`,
refusals that name the plugin, fault isolation, the time budget; plugin settings from
`[plugins.<name>]` tables (gdispatch/config.py); `gdispatch plugins` (gdispatch/cli.py)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from gdispatch import cli
from gdispatch.builtin import Builtin
from gdispatch.config import Config, ConfigError, Route, from_dict
from gdispatch.plugins import SHIPPED_DIR, PluginError, PluginHost

HOOKS = Path(SHIPPED_DIR)


def write(d: Path, name: str, body: str) -> None:
    d.mkdir(exist_ok=True)
    (d / f"{name}.py").write_text("from gdispatch.hookspecs import hookimpl\n" + body)


APPEND = '''
@hookimpl
def gdispatch_prepare_attempt(attempt):
    attempt.calls.append({name!r})
'''


class Seen:
    """A stand-in attempt recording which plugins were called."""

    def __init__(self):
        self.calls: list[str] = []


# ------------------------------------------------------------------ settings in gdispatch.toml

def test_plugin_tables_become_plugin_settings():
    cfg = from_dict({"plugins": {"enabled": ["dialplan"], "hooks_dir": "/h",
                                 "dialplan": {"rule": [{"match": "^00", "replace": "+"}]},
                                 "other": {"x": {"y": 1}}}})
    assert cfg.plugins == ("dialplan",)
    assert cfg.plugin_settings == {"dialplan": {"rule": [{"match": "^00", "replace": "+"}]},
                                   "other": {"x": {"y": 1}}}
    assert Config().plugin_settings == {} and from_dict({}).plugin_settings == {}
    hash(cfg)  # still hashable: the settings are not part of the hash


@pytest.mark.parametrize("plugins, message", [
    ({"dialplan": "x"}, "unknown key 'dialplan'"),  # a plugin's settings are a table
    ({"enabld": []}, "unknown key 'enabld'"),
    ({"enabled": {"a": 1}}, "[plugins].enabled"),  # our own keys keep their types
    ([1], "[plugins]: expected a table"),
])
def test_plugin_section_errors(plugins, message):
    with pytest.raises(ConfigError) as e:
        from_dict({"plugins": plugins})
    assert message in str(e.value)


# ------------------------------------------------------------------ loading

def test_plugins_are_called_in_the_order_of_enabled(tmp_path):
    for name in ("a", "b", "c"):
        write(tmp_path, name, APPEND.format(name=name))
    for order in (["a", "b", "c"], ["c", "a", "b"]):
        h = PluginHost()
        h.load(order, str(tmp_path), entry_points=False)
        seen = Seen()
        h.call("gdispatch_prepare_attempt", attempt=seen)
        assert seen.calls == order
        assert h.call_order("gdispatch_prepare_attempt") == order


def test_tryfirst_and_trylast_win_over_the_order(tmp_path):
    write(tmp_path, "last", APPEND.format(name="last").replace("@hookimpl", "@hookimpl(trylast=True)"))
    write(tmp_path, "first", APPEND.format(name="first").replace("@hookimpl", "@hookimpl(tryfirst=True)"))
    write(tmp_path, "mid", APPEND.format(name="mid"))
    h = PluginHost()
    h.load(["last", "mid", "first"], str(tmp_path), entry_points=False)
    seen = Seen()
    h.call("gdispatch_prepare_attempt", attempt=seen)
    assert seen.calls == ["first", "mid", "last"]


def test_sources_and_hooks_of_each_plugin():
    h = PluginHost()
    h.load(["tech_prefix"], str(HOOKS), entry_points=False)
    h.register_builtin(Builtin(()))
    assert dict(h.plugins()) == {"tech_prefix": ["gdispatch_list_loaded", "gdispatch_prepare_attempt"],
                                 "builtin": ["gdispatch_after_failure", "gdispatch_choose_route"]}
    assert h.sources == {"tech_prefix": str(HOOKS / "tech_prefix.py"), "builtin": "built in (gdispatch.builtin)"}


def test_user_implemented_ignores_the_builtin():
    h = PluginHost()
    h.register_builtin(Builtin(()))
    assert not h.user_implemented("gdispatch_choose_route")
    assert not h.user_implemented("gdispatch_prepare_attempt") and not h.implemented("gdispatch_prepare_attempt")
    h.load(["domain_route"], str(HOOKS), entry_points=False)
    assert h.user_implemented("gdispatch_choose_route")  # the cache is reset by load


@pytest.mark.parametrize("body, message", [
    ("raise RuntimeError('no database')\n", "failed to import: RuntimeError: no database"),
    ("import not_a_module_anywhere\n", "failed to import: ModuleNotFoundError"),
    ("def f(:\n", "failed to import: SyntaxError"),
    ("@hookimpl\ndef gdispatch_prepare_atempt(attempt):\n    pass\n", "unknown hook 'gdispatch_prepare_atempt'"),
    ("@hookimpl\ndef gdispatch_prepare_attempt(attempt, extra):\n    pass\n", "extra"),
])
def test_a_plugin_that_cannot_load_is_named(tmp_path, body, message):
    write(tmp_path, "good", APPEND.format(name="good"))
    write(tmp_path, "broken", body)
    h = PluginHost()
    with pytest.raises(PluginError) as e:
        h.load(["good", "broken"], str(tmp_path), entry_points=False)
    assert str(e.value).startswith("plugin 'broken' (") and message in str(e.value)
    assert not h.pm.has_plugin("broken")


def test_a_name_that_is_not_a_module_name_cannot_leave_the_hooks_dir(tmp_path):
    (tmp_path / "hooks").mkdir()
    write(tmp_path, "outside", APPEND.format(name="outside"))
    for name in ("../outside", str(tmp_path / "outside"), "a.b"):
        with pytest.raises(PluginError, match=r"expected a module name"):
            PluginHost().load([name], str(tmp_path / "hooks"), entry_points=False)


def test_missing_file_and_reserved_name(tmp_path):
    with pytest.raises(PluginError, match=r"plugin 'nope': no file .*nope\.py"):
        PluginHost().load(["nope"], str(tmp_path), entry_points=False)
    write(tmp_path, "builtin", "")
    with pytest.raises(PluginError, match="plugin 'builtin'.*already loaded"):
        PluginHost().load(["builtin"], str(tmp_path), entry_points=False)


class FakeEntryPoint:
    group = "gdispatch"

    def __init__(self, name, target):
        self.name, self.value, self._target = name, f"fakepkg.{name}:plugin", target

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


class FakeDist:
    version = "1.0"
    metadata = {"Name": "fakepkg"}

    def __init__(self, *eps):
        self.entry_points = list(eps)


class EntryPlugin:
    from gdispatch.hookspecs import hookimpl

    @hookimpl
    def gdispatch_shutdown(self):
        pass


def test_entry_points_are_loaded_after_the_files_and_a_broken_one_is_named(tmp_path, monkeypatch):
    import importlib.metadata

    write(tmp_path, "a", APPEND.format(name="a"))
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [FakeDist(FakeEntryPoint("ep", EntryPlugin()))])
    h = PluginHost()
    h.load(["a"], str(tmp_path))
    assert h.sources["ep"] == "entry point fakepkg.ep:plugin of fakepkg 1.0"
    assert dict(h.plugins())["ep"] == ["gdispatch_shutdown"]

    monkeypatch.setattr(importlib.metadata, "distributions",
                        lambda: [FakeDist(FakeEntryPoint("bad", ImportError("libfoo.so missing")))])
    with pytest.raises(PluginError, match=r"plugin 'bad' \(entry point fakepkg.bad:plugin of fakepkg 1.0\) "
                                          r"failed to import: ImportError: libfoo.so missing"):
        PluginHost().load([], str(tmp_path))


# ------------------------------------------------------------------ calling

def test_a_raising_plugin_is_logged_counted_and_the_others_still_run(tmp_path, caplog):
    write(tmp_path, "a", APPEND.format(name="a"))
    write(tmp_path, "boom", "@hookimpl\ndef gdispatch_prepare_attempt(attempt):\n    raise KeyError('x')\n"
                            "@hookimpl\ndef gdispatch_choose_route(request, source_sets):\n    1 / 0\n")
    write(tmp_path, "c", APPEND.format(name="c"))
    h = PluginHost()
    h.load(["a", "boom", "c"], str(tmp_path), entry_points=False)
    h.register_builtin(Builtin((Route(methods=frozenset(), set=4),)))
    seen = Seen()
    with caplog.at_level(logging.ERROR):
        h.call("gdispatch_prepare_attempt", attempt=seen)
        route = h.call_first("gdispatch_choose_route", request=_View(), source_sets=frozenset())
    assert seen.calls == ["a", "c"]
    assert route.set == 4  # the built-in route tables still answered
    assert h.errors == {"boom": 2}
    assert [r.getMessage() for r in caplog.records] == [
        "plugin boom failed in gdispatch_prepare_attempt; carrying on without it",
        "plugin boom failed in gdispatch_choose_route; carrying on without it"]


class _View:
    method, ruri_user, ruri_host = "INVITE", "1", "example.com"


def test_a_slow_plugin_is_reported_against_the_time_budget(tmp_path, caplog):
    write(tmp_path, "slow", "import time\n@hookimpl\ndef gdispatch_prepare_attempt(attempt):\n"
                            "    time.sleep(0.03)\n")
    h = PluginHost(time_budget=0.01)
    h.load(["slow"], str(tmp_path), entry_points=False)
    with caplog.at_level(logging.WARNING):
        t = time.perf_counter()
        h.call("gdispatch_prepare_attempt", attempt=Seen())
        assert time.perf_counter() - t >= 0.03
    assert h.slow == {"slow": 1} and h.errors == {}
    msg = caplog.records[-1].getMessage()
    assert msg.startswith("plugin slow took ") and "in gdispatch_prepare_attempt (budget 10 ms)" in msg


# ------------------------------------------------------------------ where a plugin's file is found

def test_a_shipped_plugin_loads_by_name_from_a_configuration_anywhere(tmp_path, capsys):
    etc = tmp_path / "etc" / "gdispatch"  # /etc/gdispatch: no hooks folder beside it
    etc.mkdir(parents=True)
    (etc / "gdispatch.toml").write_text('[plugins]\nenabled = ["tech_prefix", "dialplan"]\n')
    assert cli.main(["plugins", "--config", str(etc / "gdispatch.toml")]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[1:3]}
    assert rows == {"tech_prefix": str(HOOKS / "tech_prefix.py"), "dialplan": str(HOOKS / "dialplan.py")}


def test_a_file_of_the_same_name_in_hooks_dir_wins(tmp_path):
    write(tmp_path, "tech_prefix", APPEND.format(name="mine"))
    h = PluginHost()
    h.load(["tech_prefix", "dialplan"], str(tmp_path), entry_points=False)
    assert h.sources == {"tech_prefix": str(tmp_path / "tech_prefix.py"), "dialplan": str(HOOKS / "dialplan.py")}
    assert dict(h.plugins())["tech_prefix"] == ["gdispatch_prepare_attempt"]  # the copy's hooks, not the shipped
    seen = Seen()
    h.call("gdispatch_prepare_attempt", attempt=seen)
    assert seen.calls == ["mine"]


def test_a_name_found_nowhere_names_both_places(tmp_path):
    with pytest.raises(PluginError) as e:
        PluginHost().load(["tech_prefx"], str(tmp_path), entry_points=False)
    assert str(e.value) == (f"plugin 'tech_prefx': no file {tmp_path}/tech_prefx.py, and gdispatch ships no "
                            f"plugin of that name (it ships dialplan, domain_route, orig_headers, tech_prefix)")
    with pytest.raises(PluginError, match="ships no plugin of that name"):
        PluginHost().load(["__init__"], str(tmp_path), entry_points=False)  # the package, not a plugin


# ------------------------------------------------------------------ gdispatch plugins

def config_file(tmp_path: Path, enabled: list[str], hooks_dir: Path = HOOKS, extra: str = "") -> str:
    p = tmp_path / "gdispatch.toml"
    p.write_text(f'[plugins]\nhooks_dir = "{hooks_dir}"\nenabled = {enabled!r}\n'.replace("'", '"') + extra)
    return str(p)


def test_cli_lists_plugins_sources_hooks_and_call_order(tmp_path, capsys):
    cfg = config_file(tmp_path, ["tech_prefix", "dialplan"], extra="[plugins.nobody]\nx = 1\n")
    assert cli.main(["plugins", "--config", cfg]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["PLUGIN", "FROM", "HOOKS"]
    assert lines[1].split()[:2] == ["tech_prefix", str(HOOKS / "tech_prefix.py")]
    assert lines[1].endswith("gdispatch_list_loaded, gdispatch_prepare_attempt")
    assert lines[2].split()[0] == "dialplan" and lines[2].endswith("gdispatch_prepare_attempt, gdispatch_startup")
    assert lines[3].split()[0] == "builtin" and lines[3].endswith("gdispatch_after_failure, gdispatch_choose_route")
    assert "  gdispatch_prepare_attempt: dialplan, tech_prefix" in lines  # tryfirst / trylast
    assert "  gdispatch_choose_route: builtin" in lines
    assert "[plugins.nobody] configures no loaded plugin" in err


def test_cli_names_a_plugin_that_does_not_load(tmp_path, capsys):
    write(tmp_path / "h", "broken", "raise RuntimeError('boom at import')\n")
    assert cli.main(["plugins", "--config", config_file(tmp_path, ["broken"], tmp_path / "h")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("gdispatch plugins: plugin 'broken' (") and "RuntimeError: boom at import" in err


def test_cli_without_config_and_with_a_bad_one(tmp_path, capsys):
    assert cli.main(["plugins"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "builtin"
    bad = tmp_path / "bad.toml"
    bad.write_text("[plugins]\nenabled = 3\n")
    assert cli.main(["plugins", "--config", str(bad)]) == 2
    assert "configuration error" in capsys.readouterr().err
