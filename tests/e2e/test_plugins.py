"""Plugins end to end: real gdispatch with the plugins shipped in gdispatch/hooks/, enabled
by name (and a few written here), SIPp callers and gateways, and what the gateways received (SIPp -trace_msg).

- tech_prefix: Gold/Silver/Bronze on one gateway address, told apart by prefix, with a
  failover: each attempt carries its own prefix only.
- dialplan and domain_route on live calls; orig_headers' X-Orig-* headers.
- A plugin that raises on every call loses no call; a plugin over the time budget is
  reported; `gdispatch plugins` lists the examples and names a plugin that cannot load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from . import harness

HOST = "127.0.0.1"
HOOKS = harness.REPO / "gdispatch" / "hooks"  # the shipped plugins


def plugins_config(enabled: list[str], hooks_dir: Path | None = None, extra: str = "") -> str:
    """A [plugins] table; without `hooks_dir` the names are the shipped plugins'."""
    names = ", ".join(f'"{n}"' for n in enabled)
    where = f'hooks_dir = "{hooks_dir}"\n' if hooks_dir is not None else ""
    return f'[plugins]\n{where}enabled = [{names}]\n{extra}'


def received(gw: harness.Uas) -> list[bytes]:
    """Every SIP message the gateway received, in order, from its -trace_msg file."""
    files = sorted(gw.dir.glob("*_messages.log"))
    assert files, f"no -trace_msg file in {gw.dir}"
    text = b"".join(f.read_bytes() for f in files)
    # Each entry: "----...\n<timestamp> UDP message received [N] bytes :\n\n<message>\n"
    out = []
    for block in re.split(rb"\n-{20,}[^\n]*\n", b"\n" + text):
        m = re.search(rb"message received \[\d+\] bytes :\n\n(.*)", block, re.DOTALL)
        if m:
            out.append(m.group(1))
    return out


def request_lines(gw: harness.Uas, method: str = "INVITE") -> list[str]:
    return [m.split(b"\n", 1)[0].strip().decode() for m in received(gw) if m.startswith(method.encode() + b" ")]


def rpc_stats(p: harness.Proxy) -> dict:
    out = p.rpc("stats", json_out=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def traced_uas(uas, scenario: str = "uas_ok.xml") -> harness.Uas:
    return uas(scenario, extra_args=["-trace_msg"])


# ------------------------------------------------------------------ tech_prefix

def test_tech_prefix_per_attempt_on_one_gateway_address(proxy, uas, uac):
    """Bronze/Silver/Gold sharing one IP: Gold's prefix 503... makes the gateway answer 503,
    the proxy fails over to Silver (same URI), whose INVITE carries Silver's prefix only."""
    gw = traced_uas(uas, "uas_503_by_prefix.xml")
    listing = (f"1 {gw.uri} 0 30 duid=gold;prefix=5031\n"
               f"1 {gw.uri} 0 20 duid=silver;prefix=2002;strip=2\n"
               f"1 {gw.uri} 0 10 duid=bronze;prefix=3003\n")
    p = proxy(listing, config=plugins_config(["tech_prefix"]), args=["--algorithm", "8"])
    res = uac(f"{HOST}:{p.port}", calls=5, rate=5, timeout_s=30, service="0044123456")
    assert (res.successful, res.failed) == (5, 0), res
    gw.stop()
    invites = request_lines(gw)
    assert len(invites) == 10, invites
    for first, second in zip(invites[::2], invites[1::2]):
        assert first.startswith(f"INVITE sip:50310044123456@{HOST}:{p.port} "), first
        # Silver: strip 2 ("00"), then its prefix; nothing of Gold's "5031"
        assert second.startswith(f"INVITE sip:200244123456@{HOST}:{p.port} "), second
    # The proxy ACKed each 503 with the Request-URI of the INVITE it answered (RFC 3261 §17.1.1.3).
    acks = request_lines(gw, "ACK")
    assert sum(a.startswith("ACK sip:50310044123456@") for a in acks) == 5, acks
    assert gw.counts()["unexpected"] == 0
    assert rpc_stats(p)["plugin_errors"] == {}


# ------------------------------------------------------------------ dialplan, domain_route, orig_headers

DIALPLAN = '''
[[plugins.dialplan.rule]]
match = "^00"
replace = "+"

[[plugins.dialplan.rule]]
match = "^0([1-9][0-9]+)$"
replace = "+44\\\\1"
'''


def test_dialplan_then_tech_prefix_on_live_calls(proxy, uas, uac):
    gw = traced_uas(uas)
    # enabled in the "wrong" order on purpose: dialplan runs first anyway (tryfirst)
    p = proxy(harness.dispatcher_list(gw, attrs=["duid=gw1;prefix=011"]),
              config=plugins_config(["tech_prefix", "dialplan"], extra=DIALPLAN))
    for service in ("0049301234", "020794600", "alice"):
        res = uac(f"{HOST}:{p.port}", calls=2, rate=10, timeout_s=20, service=service)
        assert (res.successful, res.failed) == (2, 0), res
    gw.stop()
    users = [line.split()[1].split("@")[0] for line in request_lines(gw)]
    assert users == ["sip:011+49301234"] * 2 + ["sip:011+4420794600"] * 2 + ["sip:011alice"] * 2, users
    assert rpc_stats(p)["plugin_errors"] == {}


def uac_for_domain(tmp_path: Path, domain: str) -> str:
    """uac.xml calling sip:[service]@DOMAIN (still sent to the proxy's address)."""
    text = (harness.SCENARIOS / "uac.xml").read_text()
    assert text.count("[service]@[remote_ip]:[remote_port]") >= 3
    path = tmp_path / f"uac_{domain}.xml"
    path.write_text(text.replace("[service]@[remote_ip]:[remote_port]", f"[service]@{domain}"))
    return str(path)


DOMAINS = '''
[plugins.domain_route.domains]
"pbx1.example.com" = 1
"*.pbx.example.com" = { set = 2, algorithm = 8 }
'''


def test_domain_route_on_live_calls(tmp_path, proxy, uas, uac):
    ast1, ast2 = traced_uas(uas), traced_uas(uas)
    listing = harness.dispatcher_list(ast1, setid=1) + harness.dispatcher_list(ast2, setid=2, attrs=["duid=ast2"])
    p = proxy(listing, config=plugins_config(["domain_route"], extra=DOMAINS))
    target = f"{HOST}:{p.port}"
    for domain, calls in (("pbx1.example.com", 3), ("a.pbx.example.com", 2), ("b.c.PBX.example.com", 2)):
        res = uac(target, uac_for_domain(tmp_path, domain), calls=calls, rate=10, timeout_s=20)
        assert (res.successful, res.failed) == (calls, 0), (domain, res)
    # a domain in no entry goes on to the [[route]] tables: not ours, so no relay
    res = uac(target, uac_for_domain(tmp_path, "other.example.com"), calls=1, rate=10, timeout_s=20)
    assert (res.successful, res.failed) == (0, 1), res
    ast1.stop()
    ast2.stop()
    assert [line.split()[1] for line in request_lines(ast1)] == ["sip:service@pbx1.example.com"] * 3
    assert [line.split()[1] for line in request_lines(ast2)] == \
        ["sip:service@a.pbx.example.com"] * 2 + ["sip:service@b.c.PBX.example.com"] * 2
    assert ast1.counts()["BYE"] == 3 and ast2.counts()["BYE"] == 4  # whole dialogs through the proxy
    assert rpc_stats(p)["plugin_errors"] == {}


def test_orig_headers_carry_the_callers_address(proxy, uas, uac):
    gw = traced_uas(uas)
    p = proxy(harness.dispatcher_list(gw), config=plugins_config(["orig_headers"]))
    caller_port = harness.free_port("udp")
    res = uac(f"{HOST}:{p.port}", calls=2, rate=10, timeout_s=20, local_port=caller_port)
    assert (res.successful, res.failed) == (2, 0), res
    gw.stop()
    invites = [m for m in received(gw) if m.startswith(b"INVITE ")]
    assert len(invites) == 2
    for m in invites:
        headers = dict(line.split(b": ", 1) for line in m.split(b"\n")[1:] if b": " in line)
        assert headers[b"X-Orig-IP"].strip() == HOST.encode()
        assert headers[b"X-Orig-Port"].strip() == str(caller_port).encode()
        assert headers[b"X-Orig-Proto"].strip() == b"1"  # UDP, as Yeti numbers it
    # not on the in-dialog requests (ACK, BYE): only dispatched requests have attempts
    assert not any(b"X-Orig-IP" in m for m in received(gw) if not m.startswith(b"INVITE "))


# ------------------------------------------------------------------ faults

BOOM = '''
from gdispatch.hookspecs import hookimpl

@hookimpl
def gdispatch_choose_route(request, source_sets):
    raise RuntimeError("boom in choose_route")

@hookimpl
def gdispatch_prepare_attempt(attempt):
    raise RuntimeError("boom in prepare_attempt")

@hookimpl
def gdispatch_after_failure(request, destination, status, attempt_number, route):
    raise RuntimeError("boom in after_failure")

@hookimpl
def gdispatch_response(request, response_status, destination):
    raise RuntimeError("boom in response")
'''


def test_a_plugin_raising_on_every_call_loses_no_call(tmp_path, proxy, uas, uac):
    hooks = tmp_path / "myhooks"
    hooks.mkdir()
    (hooks / "boom.py").write_text(BOOM)
    bad, good = uas("uas_503.xml"), uas()
    p = proxy(harness.dispatcher_list(bad, good), config=plugins_config(["boom"], hooks))
    res = uac(f"{HOST}:{p.port}", calls=100, rate=50, timeout_s=40)
    assert (res.successful, res.failed) == (100, 0), res
    bad.stop()
    good.stop()
    # round robin: half the calls met the 503 gateway first and failed over (built-in policy)
    assert bad.counts()["INVITE"] == 50 and good.counts()["INVITE"] == 100
    log = p.log()
    errors = rpc_stats(p)["plugin_errors"]
    for hook in ("gdispatch_choose_route", "gdispatch_prepare_attempt", "gdispatch_after_failure",
                 "gdispatch_response"):
        assert f"plugin boom failed in {hook}; carrying on without it" in log
    assert "RuntimeError: boom in prepare_attempt" in log
    # every failure counted, once per call of the hook: 100 routes, 150 attempts, 50 failures,
    # and each response relayed (at least 180 and 200 per call); the log shows the first
    # few of each hook per 10 s and sums up the others (gdispatch.logsafe)
    assert errors["boom"] >= 100 + 150 + 50 + 200, errors
    assert log.count("plugin boom failed in ") <= 4 * 5 * 2, log.count("plugin boom failed in ")


def test_a_plugin_over_the_time_budget_is_reported(tmp_path, proxy, uas, uac):
    hooks = tmp_path / "myhooks"
    hooks.mkdir()
    (hooks / "sleepy.py").write_text(
        "import gevent\nfrom gdispatch.hookspecs import hookimpl\n\n"
        "@hookimpl\ndef gdispatch_prepare_attempt(attempt):\n    gevent.sleep(0.12)\n")
    gw = uas()
    p = proxy(harness.dispatcher_list(gw), config=plugins_config(["sleepy"], hooks))
    res = uac(f"{HOST}:{p.port}", calls=3, rate=10, timeout_s=20)
    assert (res.successful, res.failed) == (3, 0), res
    slow = re.findall(r"plugin sleepy took (\d+) ms in gdispatch_prepare_attempt \(budget 50 ms\)", p.log())
    assert len(slow) == 3 and all(int(ms) >= 110 for ms in slow), slow
    stats = rpc_stats(p)
    assert stats["plugin_slow_calls"] == {"sleepy": 3} and stats["plugin_errors"] == {}


# ------------------------------------------------------------------ gdispatch plugins

def gdispatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gdispatch", *args], capture_output=True, text=True,
                          timeout=30, cwd=harness.REPO, check=False)


def test_gdispatch_plugins_lists_the_examples(tmp_path):
    cfg = tmp_path / "gdispatch.toml"
    cfg.write_text(plugins_config(["dialplan", "domain_route", "orig_headers", "tech_prefix"]))
    out = gdispatch("plugins", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:6]}
    assert list(rows) == ["dialplan", "domain_route", "orig_headers", "tech_prefix", "builtin"]
    assert f"{HOOKS}/tech_prefix.py" in rows["tech_prefix"]
    assert rows["dialplan"].endswith("gdispatch_prepare_attempt, gdispatch_startup")
    assert rows["domain_route"].endswith("gdispatch_choose_route, gdispatch_list_loaded, gdispatch_startup")
    assert rows["orig_headers"].endswith("gdispatch_prepare_attempt, gdispatch_startup")
    assert rows["tech_prefix"].endswith("gdispatch_list_loaded, gdispatch_prepare_attempt")
    assert rows["builtin"].endswith("gdispatch_after_failure, gdispatch_choose_route")
    assert "  gdispatch_prepare_attempt: dialplan, orig_headers, tech_prefix" in out.stdout.splitlines()
    assert "  gdispatch_choose_route: domain_route, builtin" in out.stdout.splitlines()


def test_a_plugin_that_fails_to_import_is_named_and_stops_everything(tmp_path, proxy):
    hooks = tmp_path / "myhooks"
    hooks.mkdir()
    (hooks / "broken.py").write_text("import gdispatch_no_such_module\n")
    (hooks / "tech_prefix.py").write_text((HOOKS / "tech_prefix.py").read_text())
    cfg = tmp_path / "gdispatch.toml"
    cfg.write_text(plugins_config(["tech_prefix", "broken"], hooks))
    out = gdispatch("plugins", "--config", str(cfg))
    assert out.returncode == 1 and out.stdout == ""
    assert "plugin 'broken'" in out.stderr and "No module named 'gdispatch_no_such_module'" in out.stderr
    # and gdispatch run refuses to start, with the same message
    try:
        proxy("1 sip:127.0.0.1:5999 0 0\n", config=cfg.read_text(), ready_timeout=10)
    except RuntimeError as e:
        assert "exited with 1" in str(e) and "plugin 'broken'" in str(e), e
    else:
        raise AssertionError("gdispatch started with a plugin that does not import")


# ------------------------------------------------------------------ the installed package

def test_the_installed_package_ships_its_plugins(tmp_path):
    """What a wheel or `pip install .` would hold, not the checkout: setuptools builds the
    package's files (`build_py`, what bdist_wheel packs for a pure Python package) from a
    copy of the packaging files into a directory of its own; gdispatch is run from there
    with a configuration in another directory, as /etc/gdispatch is, with no hooks folder."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        (src / name).write_bytes((harness.REPO / name).read_bytes())
    shutil.copytree(harness.REPO / "gdispatch", src / "gdispatch", ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    build = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py",
                            "--build-lib", str(site)], cwd=src, capture_output=True, text=True, timeout=120,
                           check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    assert sorted(p.name for p in (site / "gdispatch" / "hooks").glob("*.py")) == [
        "__init__.py", "dialplan.py", "domain_route.py", "orig_headers.py", "tech_prefix.py"]
    assert (site / "gdispatch" / "hooks" / "README.md").is_file()  # their documentation with them
    etc = tmp_path / "etc" / "gdispatch"
    etc.mkdir(parents=True)
    (etc / "gdispatch.toml").write_text(plugins_config(["tech_prefix", "dialplan"]))
    env = {**os.environ, "PYTHONPATH": str(site)}  # the built package, before the venv's (editable) one
    run = subprocess.run([sys.executable, "-c", "import gdispatch.cli, sys; print(gdispatch.__file__); "
                          "sys.exit(gdispatch.cli.main(sys.argv[1:]))", "plugins", "--config",
                          str(etc / "gdispatch.toml")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == str(site / "gdispatch" / "__init__.py")
    rows = {line.split()[0]: line.split()[1] for line in lines[2:4]}
    assert rows == {"tech_prefix": str(site / "gdispatch" / "hooks" / "tech_prefix.py"),
                    "dialplan": str(site / "gdispatch" / "hooks" / "dialplan.py")}
