"""Kamailio beside gdispatch: the reference a drop-in is checked against.

`Kamailio` starts Kamailio 5.x with a dispatcher.list, on a loopback port of its own, and
answers `kamcmd` calls on its control socket. Its script is one of tests/data/kamailio:
`SEED_CFG` (dispatcher.cfg), the seed tutorial's dispatcher, which routes calls,
`LIST_CFG` (dispatcher-list.cfg), the dispatcher module with keepalives and latency
statistics only, for comparing `dispatcher.list`, or `SIPTRACE_CFG` (siptrace.cfg), the
siptrace module sending HEP v3 copies, for comparing gdispatch.hep's. Tests that compare gdispatch with it skip, saying
why, when Kamailio is not installed (`make test` installs it); they then compare with the
expected output committed beside them.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from . import harness

DATA = Path(__file__).resolve().parents[1] / "data" / "kamailio"
SEED_CFG = DATA / "dispatcher.cfg"
LIST_CFG = DATA / "dispatcher-list.cfg"
SIPTRACE_CFG = DATA / "siptrace.cfg"


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
    """Kamailio as a child process, in the foreground (-DD, one worker), logging to
    `log_path`. The script's -A defines: LISTEN, DS_LIST, DS_ALG (`algorithm`), CTL_SOCK,
    PING_FROM, and `defines` (a script uses those it needs)."""

    def __init__(self, tmp_path: Path | str, dispatcher_list: str, *, algorithm: int = 4,
                 cfg: Path = SEED_CFG, port: int | None = None, ready_timeout: float = 10.0,
                 defines: dict[str, str] | None = None):
        self.dir = Path(tmp_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or harness.free_port("both")
        self.list_path = self.dir / "dispatcher.list"
        self.list_path.write_text(dispatcher_list)
        # A Unix socket's path is short (108 bytes): a directory of its own under /tmp.
        self.run_dir = Path(tempfile.mkdtemp(prefix="gd-kam-", dir="/tmp"))
        self.ctl = self.run_dir / "kamailio_ctl"
        self.log_path = self.dir / "kamailio.log"
        self.algorithm = algorithm
        self.cfg = cfg
        self.ready_timeout = ready_timeout
        self.defines = dict(defines or {})
        self.proc: subprocess.Popen | None = None

    def start(self) -> Kamailio:
        binary = require_kamailio()
        cmd = [binary, "-f", str(self.cfg), "-DD", "-E", "-n", "1", "-Y", str(self.run_dir), "-w", str(self.run_dir),
               "-m", "64", "-M", "8",
               "-A", f"LISTEN=udp:{harness.HOST}:{self.port}",
               "-A", f'DS_LIST="{self.list_path}"',
               "-A", f"DS_ALG={self.algorithm}",
               "-A", f'CTL_SOCK="unix:{self.ctl}"',
               "-A", f'PING_FROM="sip:lb@{harness.HOST}:{self.port}"']
        for name, value in self.defines.items():
            cmd += ["-A", f"{name}={value}"]
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

    def kamcmd(self, *args: str) -> str:
        """What `kamcmd METHOD ARGS...` prints."""
        return self.rpc(*args).stdout

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the main process (it stops its children), SIGKILL after 5 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Kamailio:  # noqa: PYI034 - no typing.Self before Python 3.11
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
