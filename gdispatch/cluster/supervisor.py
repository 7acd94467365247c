"""The primary's hold on workers 1..N-1 as processes: it starts each
(``python -m gdispatch.cluster FD``, FD its end of the channel), starts again one that
died, and stops them all. What the messages mean is the primary's role
(gdispatch.cluster.roles); this module only carries them.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable

import gevent
import gevent.event
import gevent.subprocess

from gdispatch.cluster.channel import Channel, Hello, Message, Ready, Stop

# The name the workers' log lines have always carried, whichever module logs them.
log = logging.getLogger("gdispatch.workers")

RESTART_DELAY = 1.0  # seconds before a worker that died is started again


class Supervisor:
    """The primary's view of workers 1..N-1: starts them, talks to them, starts again
    one that died, and stops them."""

    def __init__(self, n: int, hello: Callable[[int], Hello], on_message: Callable[[int, Message], None],
                 fds: list[list[int]], on_lost: Callable[[int], None] | None = None):
        self.n = n
        self.fds = fds  # worker i inherits fds[i]: its relay socket and its listen sockets
        self.on_lost = on_lost  # called with the index of a worker that died (not on stop)
        self.hello = hello
        self.on_message = on_message
        self.procs: dict[int, gevent.subprocess.Popen] = {}
        self.channels: dict[int, Channel] = {}
        self.ready: set[int] = set()
        self.all_ready = gevent.event.Event()  # set while every worker listens
        self.stopping = False

    def start(self) -> None:
        for i in range(1, self.n):
            self._spawn(i)

    def _spawn(self, index: int) -> None:
        if self.stopping:
            return
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # only the primary talks to systemd
        proc = gevent.subprocess.Popen([sys.executable, "-m", "gdispatch.cluster", str(child.fileno())],
                                       pass_fds=(child.fileno(), *self.fds[index]), env=env)
        child.close()

        def received(msg: Message) -> None:
            if isinstance(msg, Ready):
                self.ready.add(index)
                if len(self.ready) == self.n - 1:
                    self.all_ready.set()
            self.on_message(index, msg)

        channel = Channel(parent)
        self.procs[index] = proc
        self.channels[index] = channel
        channel.send(self.hello(index))
        channel.start(received, lambda: self._lost(index, proc))

    def _lost(self, index: int, proc) -> None:
        self.ready.discard(index)
        self.all_ready.clear()
        if self.stopping:
            return
        if self.on_lost is not None:
            self.on_lost(index)
        status = proc.wait()
        log.error("worker %d (pid %d) exited with status %s; starting it again in %.0f s",
                  index, proc.pid, status, RESTART_DELAY)
        gevent.spawn_later(RESTART_DELAY, self._spawn, index)

    def wait_ready(self, timeout: float, abort=None) -> bool:
        """Until every worker said it listens (or `timeout` seconds, or the event
        `abort` is set)."""
        events = [self.all_ready] + ([abort] if abort is not None else [])
        gevent.wait(events, timeout=timeout, count=1)
        return self.all_ready.is_set()

    def broadcast(self, msg: Message) -> None:
        for ch in list(self.channels.values()):
            ch.send(msg)

    def drain(self) -> None:
        """Tell every worker to drain and exit (the primary drains meanwhile): from now
        on a worker that exits is not started again."""
        self.stopping = True
        self.broadcast(Stop())

    def stop(self, timeout: float) -> None:
        """Tell every worker to drain and exit; SIGKILL (by PID) one still there after
        `timeout` seconds."""
        if not self.stopping:
            self.drain()
        deadline = time.monotonic() + timeout
        for index, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except gevent.subprocess.TimeoutExpired:
                log.warning("worker %d (pid %d) did not stop in time; killing it", index, proc.pid)
                proc.kill()
                proc.wait()
        for ch in self.channels.values():
            ch.close()
