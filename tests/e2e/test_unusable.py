"""Destinations the proxy cannot send to, and routes to sets the list does not have, with
a real gdispatch process: a name that does not resolve (a fake DNS server on 127.0.0.1),
a TCP destination with only a UDP listen address, a TLS one. They show ``IX`` with a
reason, the reload and ``gdispatch list check --config`` name them, and a name that
resolves later is used; a ``[[route]]`` whose set is missing stops a start and a reload."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gdispatch.dns.wire import TYPE_A
from tests.support.wait import wait_for

from . import harness
from .harness import HOST
from .test_dns import FakeDns


@pytest.fixture
def dns():
    server = FakeDns()
    yield server
    server.close()


def gd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gdispatch", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=harness.REPO, check=False)


def full_list(p: harness.Proxy) -> dict[str, dict]:
    out = p.rpc("dispatcher.list", "full", json_out=True)
    assert out.returncode == 0, out.stderr
    return {t["DEST"]["ATTRS"]["DUID"]: t["DEST"] for r in json.loads(out.stdout)["RECORDS"]
            for t in r["SET"]["TARGETS"]}


def test_destinations_it_cannot_send_to_show_ix_and_why_and_are_named_by_reload_and_list_check(
        dns, proxy, uas):
    gw = uas()
    port = harness.free_port("both")
    lst = (f"1 {gw.uri} 0 10 duid=good\n"
           f"1 sip:gw.test:{gw.port} 0 5 duid=name\n"
           f"1 sip:{HOST}:{gw.port};transport=tcp 0 0 duid=tcp\n"
           f"1 sip:{HOST}:{gw.port};transport=tls 0 0 duid=tls\n")
    cfg = (f'[server]\nlisten = ["udp:{HOST}:{port}"]\n'
           f'[dns]\nnameservers = ["{HOST}:{dns.port}"]\nretry_interval = 1\n[probing]\ninterval = 1\n')
    p = proxy(lst, config=cfg, port=port)
    wait_for(lambda: p.states()["good"] == "AP", 5, 0.1, message=p.states)
    assert p.states() == {"good": "AP", "name": "IX", "tcp": "IX", "tls": "IX"}
    shown = full_list(p)
    assert "REASON" not in shown["good"]
    assert shown["name"]["REASON"] == "cannot resolve gw.test: no such name (NXDOMAIN)"
    assert shown["tcp"]["REASON"] == "no TCP IPv4 listen address to send from (add one to [server].listen)"
    assert shown["tls"]["REASON"] == "no TLS IPv4 listen address to send from (add one to [server].listen)"

    out = p.rpc("dispatcher.reload")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "Ok. Dispatcher successfully reloaded."
    assert sorted(lines[1:]) == sorted([
        f"not usable: set 1 sip:gw.test:{gw.port}: cannot resolve gw.test: no such name (NXDOMAIN)",
        f"not usable: set 1 {shown['tcp']['URI']}: {shown['tcp']['REASON']}",
        f"not usable: set 1 {shown['tls']['URI']}: {shown['tls']['REASON']}"])

    check = gd("list", "check", "--config", str(p.config_path))
    assert check.returncode == 1, check
    problems = check.stderr.splitlines()
    assert problems[0] == (f"{p.list_path}:2: sip:gw.test:{gw.port} (set 1) is not usable, it would get no "
                           "call (IX): cannot resolve gw.test: no such name (NXDOMAIN)")
    assert [x.split(":", 2)[1] for x in problems[:3]] == ["2", "3", "4"]
    assert problems[-1] == f"{p.list_path}: 3 problems with {p.config_path}"

    # The name resolves at last: retried every [dns] retry_interval, it is pinged and used.
    dns.add("gw.test", TYPE_A, HOST)
    wait_for(lambda: p.states()["name"] == "AP", 5, 0.1, message=p.states)
    assert "REASON" not in full_list(p)["name"]
    assert "IX -> AX: the name resolves" in p.log()
    assert gd("list", "check", "--config", str(p.config_path)).returncode == 1  # tcp and tls still


def test_list_check_with_a_config_that_can_use_every_destination(dns, tmp_path):
    dns.add("gw.test", TYPE_A, HOST)
    lst = tmp_path / "d.list"
    lst.write_text(f"1 sip:gw.test:5071 0 0\n2 sip:{HOST}:5072;transport=tcp 0 0\n")
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[server]\nlisten = ["udp:{HOST}:5060", "tcp:{HOST}:5060"]\n'
                   f'[dispatcher]\nlist_file = "d.list"\n[dns]\nnameservers = ["{HOST}:{dns.port}"]\n'
                   '[[route]]\nset = 1\n[[route]]\nfrom_set = 1\nset = 2\n')
    out = gd("list", "check", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{lst}: OK, 2 sets, 2 destinations")
    cfg.write_text(cfg.read_text() + "[[route]]\nname = \"typo\"\nset = 3\n")
    out = gd("list", "check", "--config", str(cfg))
    assert out.returncode == 1
    assert out.stderr.splitlines()[0].startswith(f"[[route]] #3 (typo): set 3 is not in {lst} (its sets: 1, 2)")


def test_a_route_to_a_set_the_list_does_not_have_stops_a_start_and_a_reload(proxy, uas, tmp_path):
    lst = tmp_path / "d.list"
    lst.write_text(f"2 sip:{HOST}:5071 0 0\n")
    out = gd("run", "--list", str(lst), "--listen", f"udp:{HOST}:{harness.free_port('both')}")
    assert out.returncode == 1
    assert f"[[route]] #1: set 1 is not in {lst} (its sets: 2)" in out.stderr
    assert "not starting" in out.stderr

    gw = uas()
    p = proxy(harness.dispatcher_list(gw), config="[dispatcher]\nwatch = false\n[[route]]\nset = 1\n")
    p.list_path.write_text(f"2 {gw.uri} 0 0 duid=gw1\n")
    out = p.rpc("dispatcher.reload")
    assert (out.returncode, out.stdout) == (0, "error: 500 - Reload Failed\n")  # as kamcmd prints a fault
    assert f"[[route]] #1: set 1 is not in {p.list_path}" in out.stderr
    listed = json.loads(p.rpc("dispatcher.list", json_out=True).stdout)
    assert [r["SET"]["ID"] for r in listed["RECORDS"]] == [1]  # the running list stays
    replies = p.send_udp(harness.build_request("INVITE", f"sip:svc@{HOST}:{p.port}", local_port=0), timeout=5)
    assert harness.status_code(replies[-1]) == 200
