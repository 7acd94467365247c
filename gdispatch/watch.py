"""Watching the list file: reload when it changes on disk.

watchdog's observer runs in an OS thread; gevent objects must only be touched from the
hub's thread. The bridge is a libev async watcher, whose `send()` is thread-safe: the
observer thread only calls it, and the hub then wakes the debouncing greenlet. gdispatch
does not monkey-patch, so watchdog's own threads and queues are real ones (under
gevent's `patch_all()` they would be greenlets, and watchdog's blocking queue would
stall the hub).

Editors save in many ways: in place (truncate + write, sometimes in several writes),
write-and-rename, or delete-and-create. All of them end in exactly one load because
events only arm a timer: the file is read once it has been quiet for `debounce`
seconds, and a content identical to the last load is ignored. A directory is watched
(not the file), so a rename onto the name is seen too.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Callable

import gevent
from gevent import get_hub

log = logging.getLogger("gdispatch.watch")


# watchdog's inotify emitter, which logs the race of a last event with its stop.
_EMITTER_LOGGER = "watchdog.observers.inotify"


def _quiet_after_stop(record: logging.LogRecord) -> bool:
    return "when the thread is inactive" not in record.getMessage()


def file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


class ListWatcher:
    def __init__(self, path: str, on_change: Callable[[], None], *, debounce: float = 0.3):
        self.path = os.path.abspath(path)
        self.on_change = on_change
        self.debounce = debounce
        self._observer: Any = None  # a watchdog Observer, once started
        self._async: Any = None  # the hub's async watcher, once started
        self._pending: gevent.Greenlet | None = None

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        hub = get_hub()
        self._async = hub.loop.async_()
        self._async.start(self._poke)
        target = self.path
        bridge = self._async

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):  # runs in the observer's OS thread
                paths = {getattr(event, "src_path", ""), getattr(event, "dest_path", "")}
                if target in {os.path.abspath(p) for p in paths if p}:
                    bridge.send()

        self._observer = Observer()
        self._observer.schedule(Handler(), os.path.dirname(self.path), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def _poke(self) -> None:
        # In the hub: (re)start the quiet-period timer.
        if self._pending is not None:
            self._pending.kill(block=False)
        self._pending = gevent.spawn_later(self.debounce, self._fire)

    def _fire(self) -> None:
        self._pending = None
        try:
            self.on_change()
        except Exception:
            log.exception("reload after a change of %s failed", self.path)

    def stop(self) -> None:
        if self._observer is not None:
            # Stopping races with the emitter thread's read of a last event, which watchdog
            # then logs as an error ("queue_events() called when the thread is inactive"):
            # nothing is lost, the watcher is going away, so that log line is dropped.
            logging.getLogger(_EMITTER_LOGGER).addFilter(_quiet_after_stop)
            self._observer.stop()
            self._observer.join(1.0)
        if self._async is not None:
            self._async.stop()
        if self._pending is not None:
            self._pending.kill(block=False)
