"""Where the control socket lives, for the server and the client alike (the client, a
short-lived ``gdispatch rpc`` process, must not need gevent to find it).

`default_socket_path`: ``$GDISPATCH_SOCKET`` when set; else ``control.sock`` in the
runtime directory: ``$RUNTIME_DIRECTORY`` (the first one, when systemd's
``RuntimeDirectory=`` gives it), else ``/run/gdispatch`` when it is writable (or can be
created), else ``/tmp/gdispatch-$UID``. The client tries the same places in the same
order (`socket_candidates`) and uses the first that answers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

SOCKET_NAME = "control.sock"
SYSTEM_RUN_DIR = "/run/gdispatch"
TMP_RUN_DIR = "/tmp/gdispatch-{uid}"

ENV_SOCKET = "GDISPATCH_SOCKET"


def runtime_dir(env: Mapping[str, str] | None = None) -> str:
    """The directory for runtime files: ``$RUNTIME_DIRECTORY`` (systemd; the first of a
    colon-separated list), else /run/gdispatch when writable or creatable, else
    /tmp/gdispatch-$UID."""
    env = os.environ if env is None else env
    given = env.get("RUNTIME_DIRECTORY", "")
    if given:
        return given.split(":")[0]
    if os.path.isdir(SYSTEM_RUN_DIR):
        if os.access(SYSTEM_RUN_DIR, os.W_OK | os.X_OK):
            return SYSTEM_RUN_DIR
    elif os.access(os.path.dirname(SYSTEM_RUN_DIR), os.W_OK | os.X_OK):
        return SYSTEM_RUN_DIR
    return TMP_RUN_DIR.format(uid=os.getuid())


def default_socket_path(env: Mapping[str, str] | None = None) -> str:
    """Where the server listens unless told otherwise: ``$GDISPATCH_SOCKET``, else
    ``control.sock`` in `runtime_dir`."""
    env = os.environ if env is None else env
    return env.get(ENV_SOCKET) or os.path.join(runtime_dir(env), SOCKET_NAME)


def socket_candidates(env: Mapping[str, str] | None = None) -> list[str]:
    """Where the client looks, in order: ``$GDISPATCH_SOCKET`` alone when set; else every
    place `default_socket_path` could have chosen (the server's choice depends on what
    was writable for *its* user, so the client cannot just recompute it)."""
    env = os.environ if env is None else env
    if env.get(ENV_SOCKET):
        return [env[ENV_SOCKET]]
    dirs = []
    if env.get("RUNTIME_DIRECTORY"):
        dirs.append(env["RUNTIME_DIRECTORY"].split(":")[0])
    dirs += [SYSTEM_RUN_DIR, TMP_RUN_DIR.format(uid=os.getuid())]
    out: list[str] = []
    for d in dirs:
        path = os.path.join(d, SOCKET_NAME)
        if path not in out:
            out.append(path)
    return out

