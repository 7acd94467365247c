"""Fixtures of the end-to-end tests.

SIPp must be installed (`make test` installs it). A missing SIPp is an error, not a skip:
a test that cannot run must not pass.

When a test fails, the tails of the logs of the proxy and of every SIPp process it used are
printed with the failure. GDISPATCH_KEEP_LOGS=1 also prints where they are (pytest keeps the
temporary directories of its last three runs).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from . import harness


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="session", autouse=True)
def sipp_installed() -> str:
    path = harness.sipp_path()
    if not path:
        pytest.fail("SIPp is not installed (no `sipp` on PATH): run `make test`, which installs it, "
                    "or apt-get install -y sip-tester", pytrace=False)
    return path


def _report(request, started: list, kind: str) -> None:
    rep = getattr(request.node, "rep_call", None)
    failed = rep is not None and rep.failed
    if not (failed or os.environ.get("GDISPATCH_KEEP_LOGS")):
        return
    for obj in started:
        if failed:
            if isinstance(obj, harness.Proxy):
                print(f"\n----- {kind} pid {obj.proc.pid if obj.proc else '-'} log ({obj.log_path}) -----")
                print("\n".join(obj.log().splitlines()[-60:]))
            else:
                print(f"\n----- {kind} {obj.name} ({obj.dir}) counts={obj.counts()} -----")
                print(obj.errors()[-2000:])
        else:
            print(f"{kind} files: {obj.dir}")


@pytest.fixture
def uas(request, tmp_path: Path):
    """uas(scenario="uas_ok.xml", transport="u1", **kw) -> a started harness.Uas, stopped at the end."""
    started: list[harness.Uas] = []

    def make(scenario: str = "uas_ok.xml", transport: str = "u1", **kw) -> harness.Uas:
        u = harness.Uas(tmp_path, scenario, transport=transport, **kw)
        started.append(u)
        return u.start()

    yield make
    for u in started:
        u.stop(grace_s=1.0)  # the test is over: a call it left open need not end
    _report(request, started, "UAS")


@pytest.fixture
def proxy(request, tmp_path: Path):
    """proxy(dispatcher_list, config="", listen=(...), args=(), **kw) -> a started harness.Proxy."""
    started: list[harness.Proxy] = []
    n = itertools.count(1)

    def make(dispatcher_list: str, config: str = "", listen=("udp:127.0.0.1:{port}",), args=(), **kw):
        p = harness.Proxy(tmp_path / f"proxy{next(n)}", dispatcher_list, config, listen, args, **kw)
        started.append(p)
        return p.start()

    yield make
    for p in started:
        p.kill()  # the test is over; one that checks how the proxy stops calls stop() itself
    _report(request, started, "proxy")


@pytest.fixture
def uac(tmp_path: Path):
    """uac(target, scenario="uac.xml", *, calls, rate, transport="u1", timeout_s, ...) -> UacResult,
    with its files in tmp_path/uac<N>."""
    n = itertools.count(1)

    def run(target: str, scenario: str = "uac.xml", **kw) -> harness.UacResult:
        kw.setdefault("workdir", tmp_path / f"uac{next(n)}")
        return harness.run_uac(target, scenario, **kw)

    return run


@pytest.fixture
def answerers():
    """answerers(rings=False) -> a started harness.Answerer (a Python gateway), closed at the end."""
    made: list[harness.Answerer] = []

    def make(rings: bool = False) -> harness.Answerer:
        a = harness.Answerer(rings)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()
