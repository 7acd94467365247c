"""A headless Chromium driven through chromedriver with the W3C WebDriver protocol
(https://www.w3.org/TR/webdriver2/), over urllib: the few commands the status page's
test needs (open a URL, find elements by CSS, click, type, run a script, screenshot).

Debian's `chromium` and `chromium-driver` packages (`make test` installs them);
`available()` says whether both are there. Every process is started here and stopped
by its PID.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .harness import _stop_process

# How WebDriver names an element in its JSON (W3C WebDriver, "Elements").
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def chromium_path() -> str | None:
    # Debian's /usr/bin/chromium is a shell wrapper; the browser itself is under /usr/lib.
    real = "/usr/lib/chromium/chromium"
    return real if os.access(real, os.X_OK) else shutil.which("chromium")


def chromedriver_path() -> str | None:
    return shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver",) if os.access(p, os.X_OK)), None)


def available() -> bool:
    return bool(chromium_path() and chromedriver_path())


class WebDriverError(RuntimeError):
    pass


class Browser:
    """One headless Chromium window of `size` (width, height), through a chromedriver
    on `port` of 127.0.0.1."""

    def __init__(self, port: int, size: tuple[int, int] = (1280, 900), timeout: float = 20.0):
        self.dir = Path(tempfile.mkdtemp(prefix="gdispatch-chromium-"))
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = open(self.dir / "chromedriver.log", "wb")  # noqa: SIM115 - closed in quit()
        driver = chromedriver_path()
        if driver is None:
            raise WebDriverError("chromedriver is not installed")
        self.proc = subprocess.Popen([driver, f"--port={port}", "--allowed-ips=127.0.0.1"],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.session = ""
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if self._call("GET", "/status", timeout=1).get("ready"):
                        break
                except (OSError, WebDriverError):
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise WebDriverError(f"chromedriver did not start: {self._log_tail()}")
                time.sleep(0.05)
            args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-extensions", "--no-first-run", "--hide-scrollbars",
                    f"--window-size={size[0]},{size[1]}", f"--user-data-dir={self.dir / 'profile'}"]
            caps = {"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium_path(), "args": args},
            }}}
            self.session = self._call("POST", "/session", caps, timeout=timeout)["sessionId"]
        except BaseException:
            self.quit()
            raise

    def _log_tail(self) -> str:
        try:
            return (self.dir / "chromedriver.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                answer = json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            answer = json.loads(e.read() or b"{}")
        value = answer.get("value")
        if isinstance(value, dict) and "error" in value:
            raise WebDriverError(f"{method} {path}: {value['error']}: {value.get('message', '')[:500]}")
        return value

    def _s(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    # ---------------------------------------------------------------- commands

    def get(self, url: str) -> None:
        self._s("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        """The first element `css` selects (its WebDriver id); WebDriverError if none."""
        return self._s("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def find_all(self, css: str) -> list[str]:
        return [e[ELEMENT] for e in self._s("POST", "/elements", {"using": "css selector", "value": css})]

    def click(self, element: str) -> None:
        self._s("POST", f"/element/{element}/click")

    def type(self, element: str, text: str) -> None:
        self._s("POST", f"/element/{element}/value", {"text": text})

    def text(self, element: str) -> str:
        return self._s("GET", f"/element/{element}/text")

    def run(self, script: str, *args: Any) -> Any:
        """Run `script` (a function body: `arguments`, `return`) in the page."""
        return self._s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self) -> bytes:
        return base64.b64decode(self._s("GET", "/screenshot"))

    def quit(self) -> None:
        if self.session:
            try:
                self._call("DELETE", f"/session/{self.session}", timeout=10)
            except (OSError, WebDriverError):
                pass
            self.session = ""
        _stop_process(self.proc, signal.SIGTERM, 5.0)  # and a browser it left behind
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
