"""contrib/systemd/gdispatch.service: what the operations issue asks of it, and that
systemd itself accepts it (`systemd-analyze verify`, when systemd is installed)."""

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "gdispatch.service"


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read(UNIT)
    return cp


def test_unit_contract():
    s = unit()["Service"]
    assert s["Type"] == "notify"
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "gdispatch run --config" in s["ExecStart"]
    assert s["User"] == "gdispatch" and s["RuntimeDirectory"] == "gdispatch"
    assert s["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    for key in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "RestrictAddressFamilies"):
        assert key in s


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_accepts_it(tmp_path):
    # Point ExecStart at an executable that exists here, then let systemd check the rest.
    exe = Path(sys.executable).with_name("gdispatch")
    text = UNIT.read_text().replace("/usr/local/bin/gdispatch", str(exe if exe.exists() else "/bin/true"))
    (tmp_path / "gdispatch.service").write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "gdispatch.service")],
                         capture_output=True, text=True, timeout=60, check=False)
    problems = [ln for ln in (out.stdout + out.stderr).splitlines() if "gdispatch.service" in ln]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr
