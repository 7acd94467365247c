"""systemd notifications: sent to a path or an abstract socket, never raised."""

from __future__ import annotations

import os
import socket
import time

import pytest

from gdispatch import sdnotify


@pytest.fixture
def listener(tmp_path, monkeypatch):
    """A datagram socket standing in for systemd's; NOTIFY_SOCKET points at it."""
    path = str(tmp_path / "notify.sock")
    if len(path) > 100:
        path = f"/tmp/gd-notify-{os.getpid()}.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield s
    s.close()
    if os.path.exists(path):
        os.unlink(path)


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.notify("READY=1") is False


def test_ready_and_status(listener):
    assert sdnotify.ready() is True
    assert listener.recv(4096) == b"READY=1"
    assert sdnotify.ready("serving 3 sets") is True
    assert listener.recv(4096) == b"READY=1\nSTATUS=serving 3 sets"
    assert sdnotify.status("reloading\nthe list") is True
    assert listener.recv(4096) == b"STATUS=reloading the list"


def test_reloading_carries_monotonic_usec(listener):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = listener.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


def test_stopping(listener):
    assert sdnotify.stopping("bye") is True
    assert listener.recv(4096) == b"STOPPING=1\nSTATUS=bye"


def test_abstract_socket(monkeypatch):
    name = f"gdispatch-test-{os.getpid()}-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready() is True
        assert s.recv(4096) == b"READY=1"
    finally:
        s.close()


def test_a_socket_nobody_listens_on_is_a_false_not_an_exception(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.ready() is False
