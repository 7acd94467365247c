"""The control socket: JSON-RPC 2.0 over a Unix domain socket (and, when configured, a
token-protected TCP port on the loopback), serving the methods of rpc.py; and the client
the ``gdispatch rpc`` command uses.

Framing: line-delimited JSON. Each request is one JSON-RPC 2.0 object (or a batch array)
on one line ending with ``\\n``; each answer is one line. A connection may carry any
number of requests, one after another; the client sends one and reads one line. A
request with no ``id`` is a notification and gets no answer (JSON-RPC 2.0 §4.1). A line
that is not JSON gets a parse error (-32700) and the connection stays usable; a line
longer than `MAX_REQUEST_BYTES` gets an error (-32600) and the connection is closed (the
rest of the line cannot be told from the next request). An exception inside a method
becomes an error object (-32603); the server keeps serving.

Where the socket lives (`default_socket_path`): ``$GDISPATCH_SOCKET`` when set; else
``control.sock`` in the runtime directory: ``$RUNTIME_DIRECTORY`` (the first one, when
systemd's ``RuntimeDirectory=`` gives it), else ``/run/gdispatch`` when it is writable
(or can be created), else ``/tmp/gdispatch-$UID``. The client tries the same places in
the same order (`socket_candidates`) and uses the first that answers.

Who may connect: the socket is created with mode 0600 (umask around bind, then chmod, so
it is never wider), in a directory created 0700; a directory owned by another user, or
writable by others without the sticky bit, is refused. The server also checks the peer's
uid (SO_PEERCRED): only its own user and root are served. A stale socket file is removed
at start; a live one (something accepts a connection there) makes `start` fail, so two
proxies cannot steal each other's socket. The TCP listener binds only to a loopback
address and only with a token; every request on it carries ``"token": "..."`` as a member
of the request object, compared in constant time; a request without it is refused and
the connection closed.

gevent: the server runs inside the proxy's hub, one greenlet per connection. An idle
connection cannot hold the socket: each connection has `REQUEST_TIMEOUT` seconds for a
complete request line (from its accept, then from its last answer; bytes trickled in do
not extend it) and `ANSWER_TIMEOUT` for its answer to be taken; at most
`MAX_CONNECTIONS` are served at once, and when all are taken a new one closes the
connection that has waited longest for a request, so it never waits itself (a
connection whose request is being answered is not closed; when every one is, the new
one is). The client is plain blocking sockets: it runs in the short-lived
``gdispatch rpc`` process.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Mapping
from typing import Any

import gevent
import gevent.server
from gevent import socket as gsocket

from gdispatch.rpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    UNAUTHORIZED,
    ControlApi,
    RpcError,
    call,
)

log = logging.getLogger("gdispatch.control")

SOCKET_NAME = "control.sock"
SYSTEM_RUN_DIR = "/run/gdispatch"
TMP_RUN_DIR = "/tmp/gdispatch-{uid}"
MAX_REQUEST_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # what the client accepts: a list of many thousand destinations
MAX_CONNECTIONS = 64  # connections served at once (gdispatch.tcplimits keeps file descriptors for them)
REQUEST_TIMEOUT = 5.0  # seconds a connection has to send a complete request line
ANSWER_TIMEOUT = 10.0  # seconds an answer may take to be written (a client that does not read)
BACKLOG = 128  # connections the kernel queues while the server accepts
MIN_TOKEN_LENGTH = 16

ENV_SOCKET = "GDISPATCH_SOCKET"
ENV_TOKEN = "GDISPATCH_RPC_TOKEN"


class ControlError(Exception):
    """The control server cannot start (socket path in use, unsafe directory, ...)."""


# -- where the socket lives ---------------------------------------------------------------


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


# -- the protocol, without I/O ---------------------------------------------------------------------


def _error(req_id: Any, err: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": err.as_error()}


def _handle_one(api: ControlApi, req: Any, token: str | None) -> tuple[dict[str, Any] | None, bool]:
    """One request object → (answer or None for a notification, close the connection)."""
    if not isinstance(req, dict):
        return _error(None, RpcError(INVALID_REQUEST, "Invalid Request", "a request is a JSON object")), False
    req_id = req.get("id")
    if token is not None:
        given = req.get("token")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                                                 token.encode()):
            refused = RpcError(UNAUTHORIZED, "Unauthorized", 'this listener needs the right "token"')
            return _error(req_id, refused), True
    method = req.get("method")
    if req.get("jsonrpc", "2.0") != "2.0" or not isinstance(method, str) or (
            req_id is not None and not isinstance(req_id, (str, int, float))):
        return _error(req_id if isinstance(req_id, (str, int, float)) else None,
                      RpcError(INVALID_REQUEST, "Invalid Request",
                               'expected {"jsonrpc": "2.0", "method": "...", "params": [...], "id": ...}')), False
    log.debug("control: %s %s", method, req.get("params"))
    try:
        result = call(api, method, req.get("params"))
    except RpcError as e:
        answer = _error(req_id, e)
    except Exception as e:
        log.exception("control: %s failed", method)
        answer = _error(req_id, RpcError(INTERNAL_ERROR, "Internal error", f"{type(e).__name__}: {e}"))
    else:
        answer = {"jsonrpc": "2.0", "id": req_id, "result": result}
    if "id" not in req:
        return None, False
    return answer, False


def handle_line(api: ControlApi, line: bytes, token: str | None = None) -> tuple[bytes | None, bool]:
    """One request line → (the answer line with its ``\\n``, or None when nothing is to
    be sent; whether to close the connection). `token`: the token every request must
    carry (TCP), or None (Unix socket)."""
    if not line.strip():
        return None, False
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        return _encode(_error(None, RpcError(PARSE_ERROR, "Parse error", str(e)))), False
    if isinstance(req, list):
        if not req:
            return _encode(_error(None, RpcError(INVALID_REQUEST, "Invalid Request", "an empty batch"))), False
        answers = []
        close = False
        for item in req:
            answer, close = _handle_one(api, item, token)
            if answer is not None:
                answers.append(answer)
            if close:
                break
        return (_encode(answers) if answers else None), close
    answer, close = _handle_one(api, req, token)
    return (_encode(answer) if answer is not None else None), close


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


# -- the server ----------------------------------------------------------------------------------


class ControlServer:
    """Serves rpc.py's methods over `path` (a Unix socket) and, when `tcp_port` is
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
        me = gevent.getcurrent()
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
                    with gevent.Timeout(max(0.0, since + self.request_timeout - clock()), False):
                        data = conn.recv(65536)
                    if data is None:
                        return  # no complete request in time
                    if not data:
                        # EOF: a last request may come without its newline (the client
                        # shut its side down after writing).
                        if buf.strip() and len(buf) <= limit:
                            self._waiting[me] = None
                            answer, _ = handle_line(self.api, bytes(buf), token)
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
                answer, close = handle_line(self.api, line, token)
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
            conn.sendall(_encode(_error(None, err)))
            # Close cleanly: stop writing, then read what the client is still sending, so
            # closing with unread input does not reset the connection before it reads
            # the answer.
            conn.shutdown(socket.SHUT_WR)
            drained = 0
            with gevent.Timeout(1.0, False):
                while drained < 16 * self.max_request_bytes:
                    data = conn.recv(65536)
                    if not data:
                        break
                    drained += len(data)
        except OSError:
            pass


# -- the client ------------------------------------------------------------------------------------


class ConnectError(Exception):
    """No control socket answered; `tried` lists (where, why)."""

    def __init__(self, tried: list[tuple[str, str]]):
        self.tried = tried
        super().__init__("; ".join(f"{where}: {why}" for where, why in tried))


def _why(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such socket"
    if isinstance(e, ConnectionRefusedError):
        return "nobody listens there (a stale socket?)"
    if isinstance(e, PermissionError):
        return "permission denied (the socket is private to the user gdispatch runs as, and root)"
    return e.strerror or str(e)


def _read_line(sock: socket.socket) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
        if len(buf) > MAX_RESPONSE_BYTES:
            raise RpcError(INTERNAL_ERROR, "Response too large", f"more than {MAX_RESPONSE_BYTES} bytes")
    return bytes(buf).split(b"\n", 1)[0]


def request(
    method: str,
    params: list[Any] | dict[str, Any] | None = None,
    *,
    socket_path: str | None = None,
    tcp: tuple[str, int] | None = None,
    token: str | None = None,
    timeout: float = 10.0,
) -> Any:
    """Call one method and return its result. Raises RpcError for a fault (or a broken
    answer), ConnectError when no socket answered. Without `socket_path` and `tcp`, tries
    `socket_candidates()` in order."""
    req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or [], "id": 1}
    tried: list[tuple[str, str]] = []
    sock: socket.socket | None = None
    if tcp is not None:
        req["token"] = token or ""
        try:
            sock = socket.create_connection(tcp, timeout=timeout)
        except OSError as e:
            raise ConnectError([(f"{tcp[0]}:{tcp[1]}", _why(e))]) from None
    else:
        for path in [socket_path] if socket_path else socket_candidates():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect(path)
            except OSError as e:
                s.close()
                tried.append((path, _why(e)))
                continue
            sock = s
            break
        if sock is None:
            raise ConnectError(tried)
    with sock:
        try:
            sock.sendall(_encode(req))
            line = _read_line(sock)
        except socket.timeout:
            raise RpcError(INTERNAL_ERROR, "Timeout", f"no answer within {timeout:g} s") from None
        except OSError as e:
            raise RpcError(INTERNAL_ERROR, "Connection lost", e.strerror or str(e)) from None
    if not line:
        raise RpcError(INTERNAL_ERROR, "No answer", "the server closed the connection")
    try:
        answer = json.loads(line)
    except ValueError as e:
        raise RpcError(PARSE_ERROR, "Bad answer", str(e)) from None
    if not isinstance(answer, dict):
        raise RpcError(INTERNAL_ERROR, "Bad answer", "not a JSON-RPC response object")
    if "error" in answer:
        err = answer["error"] if isinstance(answer["error"], dict) else {}
        raise RpcError(int(err.get("code", INTERNAL_ERROR)), str(err.get("message", "error")), err.get("data"))
    return answer.get("result")
