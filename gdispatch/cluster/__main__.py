"""``python -m gdispatch.cluster FD``: a worker the primary's `Supervisor` started, which
wrote the `Hello` on FD, its end of their socketpair. An entry point, like
gdispatch.__main__: the one module of the package that imports gdispatch.app, which
imports the package but never this module, so there is no cycle."""

from __future__ import annotations

import socket
import sys

from gdispatch.app import run_worker
from gdispatch.cluster.channel import Hello, read_message
from gdispatch.cluster.roles import Worker


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    hello = read_message(sock)
    if not isinstance(hello, Hello):
        print("gdispatch worker: no hello from the primary", file=sys.stderr)
        return 2
    return run_worker(Worker(hello, sock))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
