"""Kamailio beside gdispatch: the reference a drop-in is checked against.

`Kamailio` starts Kamailio 5.x with tests/data/kamailio/dispatcher.cfg (the seed tutorial's
dispatcher script) and a dispatcher.list, on a loopback port of its own, and answers
`kamcmd` calls on its control socket. Tests that compare gdispatch with it skip, saying
why, when Kamailio is not installed (`make test` installs it); they then compare with the
expected output committed beside them.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from . import harness

CFG = Path(__file__).resolve().parents[1] / "data" / "kamailio" / "dispatcher.cfg"


def kamailio_path() -> str | None:
    path = shutil.which("kamailio") or (Path("/usr/sbin/kamailio").is_file() and "/usr/sbin/kamailio") or None
    kamcmd = shutil.which("kamcmd") or (Path("/usr/sbin/kamcmd").is_file() and "/usr/sbin/kamcmd")
    return path if path and kamcmd else None


def require_kamailio() -> str:
    """The kamailio binary, or skip the test saying how to get it."""
    path = kamailio_path()
    if path is None:
        pytest.skip("Kamailio is not installed (apt-get install -y kamailio; `make test` installs it): "
                    "compared with the committed expected output only")
    return path


class Kamailio:
    """Kamailio as a child process, in the foreground (-DD), logging to `log_path`."""

    def __init__(self, tmp_path: Path | str, dispatcher_list: str, *, algorithm: int = 4,
                 port: int | None = None, ready_timeout: float = 10.0):
        self.dir = Path(tmp_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or harness.free_port("both")
        self.list_path = self.dir / "dispatcher.list"
        self.list_path.write_text(dispatcher_list)
        self.ctl = self.dir / "kamailio_ctl"
        self.log_path = self.dir / "kamailio.log"
        self.algorithm = algorithm
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None

    def start(self) -> Kamailio:
        binary = require_kamailio()
        cmd = [binary, "-f", str(CFG), "-DD", "-E", "-Y", str(self.dir), "-w", str(self.dir),
               "-m", "64", "-M", "8",
               "-A", f"LISTEN=udp:{harness.HOST}:{self.port}",
               "-A", f'DS_LIST="{self.list_path}"',
               "-A", f"DS_ALG={self.algorithm}",
               "-A", f'CTL_SOCK="unix:{self.ctl}"']
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self.ctl.exists() and self.rpc("core.version").returncode == 0:
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"kamailio did not answer on {self.ctl}:\n{self.log()[-3000:]}")

    def rpc(self, *args: str, timeout: float = 5.0) -> subprocess.CompletedProcess:
        """`kamcmd -s unix:CTL METHOD ARGS...`, as an operator's script runs it."""
        kamcmd = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
        return subprocess.run([kamcmd, "-s", f"unix:{self.ctl}", *args], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the main process (it stops its children), SIGKILL after 5 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> Kamailio:  # noqa: PYI034 - no typing.Self before Python 3.11
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
