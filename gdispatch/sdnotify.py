"""systemd's readiness protocol (sd_notify(3)) without a dependency.

The service manager passes a datagram socket in ``$NOTIFY_SOCKET``: a path, or an
abstract socket written ``@name``. A notification is one datagram of newline-separated
``KEY=VALUE`` assignments. With no ``$NOTIFY_SOCKET`` (not under systemd, or not
``Type=notify``/``notify-reload``) every function here does nothing and returns False;
a failure to send is logged and also returns False, never raised: notifications must
not take the proxy down.

- `ready()` once the proxy listens and the list is loaded (``READY=1``);
- `reloading()` when a reload starts (``RELOADING=1`` with ``MONOTONIC_USEC=``, which
  ``Type=notify-reload`` requires), then `ready()` when it is done;
- `stopping()` when shutting down; `status(text)` for the one-line status systemctl shows.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("gdispatch.sdnotify")


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock (vsock:CID:PORT) and anything else: not for a proxy on a host


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=serving") to ``$NOTIFY_SOCKET``. Returns True
    when sent; False when there is no socket to send to or sending failed."""
    target = os.environ.get("NOTIFY_SOCKET", "")
    if not target:
        return False
    addr = _address(target)
    if addr is None:
        log.warning("NOTIFY_SOCKET=%s: unsupported address (expected a path or @abstract)", target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", target, e)
        return False
    return True


def _with_status(state: str, text: str | None) -> str:
    return state if text is None else f"{state}\nSTATUS={_one_line(text)}"


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def ready(status_text: str | None = None) -> bool:
    """The service is up (start-up done, or a reload finished)."""
    return notify(_with_status("READY=1", status_text))


def reloading(status_text: str | None = None) -> bool:
    """A reload starts. ``MONOTONIC_USEC`` is CLOCK_MONOTONIC in microseconds, as
    systemd requires with RELOADING=1 for Type=notify-reload."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(_with_status(f"RELOADING=1\nMONOTONIC_USEC={usec}", status_text))


def stopping(status_text: str | None = None) -> bool:
    """The service is shutting down."""
    return notify(_with_status("STOPPING=1", status_text))


def status(text: str) -> bool:
    """A free-form one-line status (systemctl status shows it)."""
    return notify(f"STATUS={_one_line(text)}")
