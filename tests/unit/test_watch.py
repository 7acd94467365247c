"""Watching the list file (gdispatch.watch): a change reloads once, a stop is quiet."""

from __future__ import annotations

import logging

from gdispatch.watch import ListWatcher
from tests.support.wait import wait_for


def test_a_change_on_disk_calls_back_once_after_the_quiet_period(tmp_path):
    path = tmp_path / "dispatcher.list"
    path.write_text("1 sip:10.0.0.1\n")
    calls: list[int] = []
    w = ListWatcher(str(path), lambda: calls.append(1), debounce=0.1)
    w.start()
    try:
        for n in range(3):  # an editor saving in several writes
            path.write_text(f"1 sip:10.0.0.{n}\n")
        wait_for(lambda: calls, 5)
    finally:
        w.stop()
    assert calls == [1]


def test_stopping_does_not_log_watchdogs_race_as_an_error(tmp_path, caplog):
    """watchdog logs an error when its emitter thread reads a last event while it stops
    (a shutdown just after an edit): nothing is lost, so the operator must not see one."""
    path = tmp_path / "dispatcher.list"
    path.write_text("1 sip:10.0.0.1\n")
    w = ListWatcher(str(path), lambda: None)
    w.start()
    w.stop()
    emitter = logging.getLogger("watchdog.observers.inotify")
    with caplog.at_level(logging.DEBUG):
        emitter.error("InotifyEmitter.queue_events() called when the thread is inactive")
        emitter.error("something else")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == ["something else"]
