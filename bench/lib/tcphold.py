"""Opens many idle TCP connections from one source address to the proxy and holds them,
for bench/attack.sh's TCP exhaustion scenario. One process; the caller runs two when one
process's descriptor limit is below the number wanted.

    tcphold.py --src 127.0.0.66 --dst 127.0.0.1:5060 --count 12500 --open-s 60 \
               --hold-s 120 --status hold.json

Opening: non-blocking connects, at most ``--window`` in flight, each given
``--connect-timeout`` seconds. Opening stops at the first of: ``--count`` connections
established and still open; ``--open-s`` seconds; twice ``--count`` attempts (a proxy that
accepts and closes at once is not hammered forever); no connect succeeding for
``--stall-s`` seconds while some failed or timed out (the proxy or the kernel stopped
taking them: the loop must not depend on a proxy that keeps accepting); the descriptor
limit (EMFILE) or the local ports (EADDRNOTAVAIL). Holding: nothing is sent; a
connection the peer closes or resets is counted and dropped. The process exits after
``--hold-s`` seconds of holding, or on SIGTERM.

RLIMIT_NOFILE is raised to its hard limit first. IP_BIND_ADDRESS_NO_PORT lets the
kernel pick the source port per destination, so two holders on one source address do not
share one pool of ports.

The status file (JSON, rewritten every 0.5 s, atomically) holds: ``phase`` (opening,
holding, done), ``held`` (open now), ``peak``, ``attempts``, ``established``, ``failed``
(refused or other errors), ``timed_out``, ``closed_by_peer``, ``stop_reason``,
``nofile`` (the limit in force), ``open_s`` (seconds the opening took).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import select
import signal
import socket
import time

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class Holder:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        host, port = a.dst.rsplit(":", 1)
        self.dst = (host, int(port))
        self.ep = select.epoll()
        self.connecting: dict[int, tuple[socket.socket, float]] = {}
        self.held: dict[int, socket.socket] = {}
        self.st = {"phase": "opening", "held": 0, "peak": 0, "attempts": 0, "established": 0, "failed": 0,
                   "timed_out": 0, "closed_by_peer": 0, "stop_reason": "", "errors": {}, "open_s": 0.0}
        self.stop = False
        self.last_write = 0.0

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < 0.5:
            return
        self.last_write = now
        self.st["held"] = len(self.held)
        tmp = self.a.status + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.st, f)
        os.replace(tmp, self.a.status)

    def fail(self, err: int) -> None:
        self.st["failed"] += 1
        name = errno.errorcode.get(err, str(err))
        self.st["errors"][name] = self.st["errors"].get(name, 0) + 1

    def drop(self, fd: int) -> None:
        s = self.held.pop(fd, None) or self.connecting.pop(fd, (None, 0))[0]
        if s is not None:
            try:
                self.ep.unregister(fd)
            except OSError:
                pass
            s.close()

    def start_one(self) -> str:
        """One non-blocking connect; a reason to stop opening, or ""."""
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as e:
            return "fd_limit" if e.errno in (errno.EMFILE, errno.ENFILE) else f"socket:{e.strerror}"
        self.st["attempts"] += 1
        try:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((self.a.src, 0))
        except OSError as e:
            s.close()
            return "ports" if e.errno == errno.EADDRINUSE else f"bind:{e.strerror}"
        s.setblocking(False)
        err = s.connect_ex(self.dst)
        if err in (0, errno.EINPROGRESS):
            self.connecting[s.fileno()] = (s, time.monotonic())
            self.ep.register(s.fileno(), select.EPOLLOUT)
            return ""
        s.close()
        self.fail(err)
        return "ports" if err == errno.EADDRNOTAVAIL else ""

    def events(self, timeout: float) -> None:
        for fd, _events in self.ep.poll(timeout):
            if fd in self.connecting:
                s, _ = self.connecting.pop(fd)
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.ep.unregister(fd)
                    s.close()
                    self.fail(err)
                    continue
                self.st["established"] += 1
                self.last_ok = time.monotonic()
                self.held[fd] = s
                self.ep.modify(fd, select.EPOLLIN | select.EPOLLRDHUP)
                self.st["peak"] = max(self.st["peak"], len(self.held))
            elif fd in self.held:
                # The peer closed, reset, or sent something: an idle connection the proxy
                # wrote to is still held; one it closed is not.
                s = self.held[fd]
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.st["closed_by_peer"] += 1
                    self.drop(fd)

    def expire(self) -> None:
        now = time.monotonic()
        for fd, (_, started) in list(self.connecting.items()):
            if now - started > self.a.connect_timeout:
                self.drop(fd)
                self.st["timed_out"] += 1

    def run(self) -> None:
        a = self.a
        t0 = self.last_ok = time.monotonic()
        exhausted = ""  # "fd_limit" or "ports": open no more, let those in flight finish
        reason = ""
        while not self.stop:
            now = time.monotonic()
            if len(self.held) >= a.count:
                reason = "count"
            elif now - t0 >= a.open_s:
                reason = "time"
            elif self.st["attempts"] >= 2 * a.count and not self.connecting:
                reason = "attempts"
            elif exhausted and not self.connecting:
                reason = exhausted
            elif now - self.last_ok >= a.stall_s and (self.st["failed"] or self.st["timed_out"]):
                reason = "stalled"
            if reason:
                break
            while (not exhausted and len(self.connecting) < a.window
                   and len(self.held) + len(self.connecting) < a.count and self.st["attempts"] < 2 * a.count):
                exhausted = self.start_one()
            self.events(0.02)
            self.expire()
            self.write()
        for fd in list(self.connecting):
            self.drop(fd)
            self.st["timed_out"] += 1
        self.st["stop_reason"] = reason or "signal"
        self.st["open_s"] = round(time.monotonic() - t0, 2)
        self.st["phase"] = "holding"
        self.write(force=True)
        hold_end = time.monotonic() + a.hold_s
        while not self.stop and time.monotonic() < hold_end:
            self.events(0.2)
            self.write()
        self.st["phase"] = "done"
        self.write(force=True)
        for fd in list(self.held):
            self.drop(fd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default="127.0.0.66")
    ap.add_argument("--dst", required=True)
    ap.add_argument("--count", type=int, default=12500)
    ap.add_argument("--open-s", type=float, default=60.0)
    ap.add_argument("--hold-s", type=float, default=120.0)
    ap.add_argument("--stall-s", type=float, default=5.0)
    ap.add_argument("--connect-timeout", type=float, default=3.0)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--status", required=True)
    a = ap.parse_args()
    for ip in (a.src, a.dst.rsplit(":", 1)[0]):
        if not ip.startswith("127."):
            raise SystemExit(f"tcphold.py: refusing non-loopback address {ip}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    h = Holder(a)
    h.st["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    def on_term(*_):
        h.stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    h.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
