"""The control socket's server: JSON-RPC 2.0 (framing: jsonrpc.py) over a Unix domain
socket and, when configured, a token-protected TCP port on the loopback, serving the
methods of methods.py inside the proxy's hub.

Who may connect: the socket is created with mode 0600 (umask around bind, then chmod, so
it is never wider), in a directory created 0700; a directory owned by another user, or
writable by others without the sticky bit, is refused. The server also checks the peer's
uid (SO_PEERCRED): only its own user and root are served. A stale socket file is removed
at start; a live one (something accepts a connection there) makes `start` fail, so two
proxies cannot steal each other's socket. The TCP listener binds only to a loopback
address and only with a token of at least `MIN_TOKEN_LENGTH` characters, which every
request on it carries.

gevent: each listener is a gevent `StreamServer`, one greenlet per connection. An idle
connection cannot hold the socket: each connection has `REQUEST_TIMEOUT` seconds for a
complete request line (from its accept, then from its last answer; bytes trickled in do
not extend it) and `ANSWER_TIMEOUT` for its answer to be taken; at most
`MAX_CONNECTIONS` are served at once, and when all are taken a new one closes the
connection that has waited longest for a request, so it never waits itself (a
connection whose request is being answered is not closed; when every one is, the new
one is). A line longer than `MAX_REQUEST_BYTES` gets an error (-32600) and the
connection is closed (the rest of the line cannot be told from the next request).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import stat
import struct
import time
from functools import partial
from typing import cast

import gevent
import gevent.server
from gevent import socket as gsocket

from gdispatch.control.jsonrpc import INVALID_REQUEST, RpcError, encode, error_answer, handle_line
from gdispatch.control.methods import ControlApi, call
from gdispatch.control.paths import default_socket_path

# The logger keeps the name of the module this was split from, so that log filters and
# greps written against it keep matching.
log = logging.getLogger("gdispatch.control")

MAX_REQUEST_BYTES = 64 * 1024
MAX_CONNECTIONS = 64  # connections served at once (gdispatch.tcplimits keeps file descriptors for them)
REQUEST_TIMEOUT = 5.0  # seconds a connection has to send a complete request line
ANSWER_TIMEOUT = 10.0  # seconds an answer may take to be written (a client that does not read)
BACKLOG = 128  # connections the kernel queues while the server accepts
MIN_TOKEN_LENGTH = 16


class ControlError(Exception):
    """The control server cannot start (socket path in use, unsafe directory, ...)."""


def _expiring(seconds: float) -> gevent.Timeout:
    """A timeout that ends its ``with`` block silently: gevent's documented
    ``Timeout(seconds, False)``, a form its type stubs do not know."""
    return gevent.Timeout(seconds, False)  # type: ignore[arg-type]


# -- the socket's directory and file ----------------------------------------------------------


def _prepare_dir(path: str) -> None:
    """Create the socket's directory 0700 if missing; refuse one another user could
    swap the socket in (owned by someone else, or group/other-writable without the
    sticky bit, or a symlink)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise ControlError(f"cannot create the control socket's directory {path}: {e.strerror}") from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ControlError(f"{path} is not a directory (a symlink or a file); refusing to put the control socket there")
    if st.st_uid not in (0, os.geteuid()):
        raise ControlError(f"{path} belongs to uid {st.st_uid}, not to this user; refusing to put the control "
                           "socket there (remove it, or choose another path)")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise ControlError(f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); refusing to put "
                           "the control socket there")


def _clear_stale(path: str) -> None:
    """Remove a socket file nobody listens on; fail if something still accepts there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
    probe = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing the stale control socket %s", path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.ETIMEDOUT) or isinstance(e, socket.timeout):
            raise ControlError(f"{path}: another process listens there (its queue is full)") from None
        raise ControlError(f"{path}: cannot check whether another process listens there: {e}") from None
    finally:
        probe.close()
    raise ControlError(f"another process (a running gdispatch?) is listening on {path}; stop it, or give this "
                       "one another control socket path")


# -- the server ----------------------------------------------------------------------------------


class ControlServer:
    """Serves methods.py's methods over `path` (a Unix socket) and, when `tcp_port` is
    given, over `tcp_host:tcp_port` (loopback only, `token` required). `start()` binds
    and returns; the connections are served by greenlets until `stop()`."""

    def __init__(
        self,
        api: ControlApi,
        path: str | None = None,
        *,
        tcp_port: int | None = None,
        tcp_host: str = "127.0.0.1",
        token: str | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ):
        self.api = api
        self._dispatch = partial(call, api)  # what a request line runs (jsonrpc.handle_line)
        self.path = path or default_socket_path()
        self.tcp_port = tcp_port
        self.tcp_host = tcp_host
        self.token = token
        self.max_request_bytes = max_request_bytes
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        # The connections being served: their greenlet -> since when each has waited for
        # a request (None while its request is answered).
        self._waiting: dict[gevent.Greenlet, float | None] = {}
        self._servers: list[gevent.server.StreamServer] = []
        self._inode: tuple[int, int] | None = None
        if tcp_port is not None:
            if not token or len(token) < MIN_TOKEN_LENGTH:
                raise ControlError(f"a TCP control port needs a token of at least {MIN_TOKEN_LENGTH} characters")
            try:
                loopback = ipaddress.ip_address(tcp_host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise ControlError(f"the TCP control port binds only to a loopback address, not {tcp_host!r}")

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        """The bound TCP address (the real port when 0 was asked), or None."""
        for server in self._servers:
            if server.socket.family != socket.AF_UNIX:
                return server.socket.getsockname()[:2]
        return None

    def start(self) -> None:
        _prepare_dir(os.path.dirname(os.path.abspath(self.path)))
        _clear_stale(self.path)
        sock = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is born 0600: no moment where others could connect
        try:
            sock.bind(self.path)
        except OSError as e:
            sock.close()
            raise ControlError(f"cannot bind the control socket {self.path}: {e.strerror or e}") from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        sock.listen(BACKLOG)
        self._servers.append(gevent.server.StreamServer(sock, self._serve_unix))
        if self.tcp_port is not None:
            family = socket.AF_INET6 if ":" in self.tcp_host else socket.AF_INET
            tsock = gsocket.socket(family, socket.SOCK_STREAM)
            tsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tsock.bind((self.tcp_host, self.tcp_port))
            except OSError as e:
                tsock.close()
                self._close_unix()
                raise ControlError(f"cannot bind the TCP control port {self.tcp_host}:{self.tcp_port}: "
                                   f"{e.strerror or e}") from None
            tsock.listen(BACKLOG)
            self._servers.append(gevent.server.StreamServer(tsock, self._serve_tcp))
        for server in self._servers:
            server.start()
        log.info("control socket %s%s", self.path,
                 f", TCP {self.tcp_address[0]}:{self.tcp_address[1]}" if self.tcp_address else "")

    def stop(self) -> None:
        for server in self._servers:
            server.stop(timeout=1)
        self._servers = []
        for greenlet in list(self._waiting):
            greenlet.kill(block=False)
        self._close_unix()

    def _close_unix(self) -> None:
        # Remove the socket file only if it is still ours (not one a later process made).
        if self._inode is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._inode = None

    # -- connections --

    def _serve_unix(self, conn, address) -> None:
        try:
            pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        except OSError:
            uid = -1
        if uid not in (0, os.geteuid()):
            log.warning("control: refused a connection from uid %d", uid)
            conn.close()
            return
        self._serve(conn, None)

    def _serve_tcp(self, conn, address) -> None:
        self._serve(conn, self.token)

    def _serve(self, conn, token: str | None) -> None:
        me = cast(gevent.Greenlet, gevent.getcurrent())  # StreamServer runs each handler in a Greenlet
        if len(self._waiting) >= self.max_connections and not self._make_room():
            log.warning("control: %d connections are all answering requests; closing a new one",
                        self.max_connections)
            conn.close()
            return
        clock = time.monotonic
        self._waiting[me] = since = clock()
        buf = bytearray()
        limit = self.max_request_bytes
        try:
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    if len(buf) > limit:
                        self._too_large(conn)
                        return
                    data = None
                    with _expiring(max(0.0, since + self.request_timeout - clock())):
                        data = conn.recv(65536)
                    if data is None:
                        return  # no complete request in time
                    if not data:
                        # EOF: a last request may come without its newline (the client
                        # shut its side down after writing).
                        if buf.strip() and len(buf) <= limit:
                            self._waiting[me] = None
                            answer, _ = handle_line(bytes(buf), self._dispatch, token)
                            if answer:
                                self._send(conn, answer)
                        return
                    buf += data
                    continue
                line = bytes(buf[:nl])
                del buf[: nl + 1]
                if len(line) > limit:
                    self._too_large(conn)
                    return
                self._waiting[me] = None
                answer, close = handle_line(line, self._dispatch, token)
                if answer:
                    self._send(conn, answer)
                if close:
                    return
                self._waiting[me] = since = clock()
        except OSError as e:
            log.debug("control: connection ended: %s", e)
        finally:
            self._waiting.pop(me, None)
            conn.close()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for a request; False when every
        connection is answering one."""
        idle = [(since, g) for g, since in self._waiting.items() if since is not None]
        if not idle:
            return False
        _, oldest = min(idle, key=lambda x: x[0])
        del self._waiting[oldest]
        oldest.kill(block=False)  # its greenlet closes the connection
        return True

    def _send(self, conn, answer: bytes) -> None:
        """Write an answer; a client that does not take it within ANSWER_TIMEOUT loses
        its connection (socket.timeout is an OSError)."""
        with gevent.Timeout(ANSWER_TIMEOUT, socket.timeout("the client does not read its answer")):
            conn.sendall(answer)

    def _too_large(self, conn) -> None:
        err = RpcError(INVALID_REQUEST, "Request too large", f"at most {self.max_request_bytes} bytes per request line")
        try:
            conn.sendall(encode(error_answer(None, err)))
            # Close cleanly: stop writing, then read what the client is still sending, so
            # closing with unread input does not reset the connection before it reads
            # the answer.
            conn.shutdown(socket.SHUT_WR)
            drained = 0
            with _expiring(1.0):
                while drained < 16 * self.max_request_bytes:
                    data = conn.recv(65536)
                    if not data:
                        break
                    drained += len(data)
        except OSError:
            pass
