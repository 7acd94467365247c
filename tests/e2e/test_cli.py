"""The `gdispatch` command line: help, configuration errors, list errors, unreachable
destinations. Real processes, no SIP traffic needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from . import harness

ROOT = Path(__file__).resolve().parents[2]


def gd(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gdispatch", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_help_lists_the_run_flags():
    out = gd("run", "--help")
    assert out.returncode == 0
    for flag in ("--config", "--listen", "--list", "--set", "--algorithm", "--workers"):
        assert flag in out.stdout


def test_config_error_names_the_key_and_fails(tmp_path):
    cfg = tmp_path / "g.toml"
    cfg.write_text("[timers]\nfr_timer = 'soon'\n")
    out = gd("run", "--config", str(cfg))
    assert out.returncode != 0
    assert "[timers].fr_timer" in out.stderr and "expected a number" in out.stderr


def test_bad_listen_flag_fails(tmp_path):
    out = gd("run", "--listen", "udp:nowhere:5060")
    assert out.returncode != 0 and "--listen" in out.stderr


def test_broken_list_names_the_line_and_fails(tmp_path):
    lst = tmp_path / "d.list"
    lst.write_text("1 sip:127.0.0.1:5071\n1 sip:127.0.0.1:5072 0 high\n")
    port = harness.free_port("both")
    out = gd("run", "--list", str(lst), "--listen", f"udp:127.0.0.1:{port}")
    assert out.returncode == 1
    assert f"{lst}:2: bad priority 'high'" in out.stderr


def test_unreachable_destination_is_named_at_load(proxy):
    # Only UDP listens: a ;transport=tcp destination cannot be reached, and the log says
    # which one and why.
    p = proxy("1 sip:127.0.0.1:5999;transport=tcp 0 0\n1 sip:[::1]:5999 0 0\n")
    log = p.log()
    assert "sip:127.0.0.1:5999;transport=tcp cannot be reached: no TCP IPv4 listen address" in log
    assert "sip:[::1]:5999 cannot be reached: no UDP IPv6 listen address" in log


def test_list_check_good_and_bad(tmp_path):
    good = tmp_path / "good.list"
    good.write_text("# gateways\n1 sip:127.0.0.1:5071 0 0 duid=a\n1 sip:127.0.0.1:5072 0 5\n2 10.0.0.1\n")
    out = gd("list", "check", str(good))
    assert out.returncode == 0, out.stderr
    assert "OK, 2 sets, 3 destinations" in out.stdout
    bad = tmp_path / "bad.list"
    bad.write_text("1 sip:127.0.0.1:5071\nx sip:127.0.0.1:5072\n1 sip:127.0.0.1:5073 0xZZ\n")
    out = gd("list", "check", str(bad))
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert lines[0].startswith(f"{bad}:2: ") and lines[1].startswith(f"{bad}:3: ")
    assert "2 problems" in lines[-1]
