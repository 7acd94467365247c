"""The client of the control socket, what ``gdispatch rpc`` uses (as kamcmd is
Kamailio's): `request` calls one method of the running proxy over its Unix socket (or
the token-protected TCP port) and returns the result; `convert_arg` turns command-line
words into JSON values as kamcmd does; `format_tree` and `format_fault` print a result
and a fault as kamcmd does.

Plain blocking sockets, no gevent: this runs in the short-lived ``gdispatch rpc``
process. Where the socket is looked for: `gdispatch.control.paths.socket_candidates`.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from gdispatch.control.jsonrpc import (
    INTERNAL_ERROR,
    METHOD_NOT_FOUND,
    NoAnswer,
    RpcError,
    encode,
    request_object,
    result_of,
)
from gdispatch.control.paths import socket_candidates

ENV_TOKEN = "GDISPATCH_RPC_TOKEN"  # the TCP port's token, when no --token-file is given
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # what the client accepts: a list of many thousand destinations


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
            raise NoAnswer(INTERNAL_ERROR, "Response too large", f"more than {MAX_RESPONSE_BYTES} bytes")
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
    """Call one method and return its result. Raises RpcError for a fault, NoAnswer (an
    RpcError) when the answer did not come or cannot be read, ConnectError when no
    socket answered. Without `socket_path` and `tcp`, tries `socket_candidates()` in
    order."""
    tried: list[tuple[str, str]] = []
    sock: socket.socket | None = None
    if tcp is not None:
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
    # Over TCP the token travels in the request (an empty one when none was given, so
    # that the server answers "Unauthorized" rather than the client refusing to ask).
    req = request_object(method, params, (token or "") if tcp is not None else None)
    with sock:
        try:
            sock.sendall(encode(req))
            line = _read_line(sock)
        except socket.timeout:
            raise NoAnswer(INTERNAL_ERROR, "Timeout", f"no answer within {timeout:g} s") from None
        except OSError as e:
            raise NoAnswer(INTERNAL_ERROR, "Connection lost", e.strerror or str(e)) from None
    if not line:
        raise NoAnswer(INTERNAL_ERROR, "No answer", "the server closed the connection")
    return result_of(line)


# -- arguments in, text out, as kamcmd ---------------------------------------------------------------


_INT_WORD = re.compile(r"-?[0-9]+")


def convert_arg(word: str) -> Any:
    """A command-line word → a JSON value, as kamcmd sends it: a number when the word is
    a whole number that reads back the same ("5060" → 5060; "007" and "+5" stay text),
    else text. Prefixes force a type: ``s:`` text, ``i:`` number (kamcmd's)."""
    if word.startswith("s:"):
        return word[2:]
    if word.startswith("i:"):
        return int(word[2:], 0)
    if _INT_WORD.fullmatch(word) and str(int(word)) == word:
        return int(word)
    return word


def _double(value: float) -> str:
    """A double as kamcmd prints one: binrpc carries it as an integer count of
    thousandths, and kamcmd shows a whole number without decimals ("21"), any other with
    six ("6.250000")."""
    milli = int(value * 1000)  # binrpc's (int)(f*1000): truncated
    if milli % 1000 == 0:
        return str(milli // 1000)
    return "%f" % (milli / 1000)


def _scalar(value: Any) -> str:
    if value is None:
        return "<null string>"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return _double(value)
    return str(value)


def _tree_lines(value: Any, indent: int, out: list[str]) -> None:
    """Members of a struct or elements of an array, one level in."""
    tab = "\t" * indent
    if isinstance(value, dict):
        for key, v in value.items():
            if isinstance(v, (dict, list)):
                out.append(f"{tab}{key}: {{")
                _tree_lines(v, indent + 1, out)
                out.append(f"{tab}}}")
            else:
                out.append(f"{tab}{key}: {_scalar(v)}")
        return
    for item in value:
        if isinstance(item, dict) and len(item) == 1:
            _tree_lines(item, indent, out)  # {"SET": {...}} prints as "SET: {", as kamcmd does
        elif isinstance(item, (dict, list)):
            out.append(tab + "{")
            _tree_lines(item, indent + 1, out)
            out.append(tab + "}")
        else:
            out.append(tab + _scalar(item))


def format_tree(result: Any) -> str:
    """A result as kamcmd prints it: a struct in braces with one member a line, "KEY:
    value", tabs for depth; arrays as their elements (a one-member struct shows as its
    member, so arrays of {"SET": ...} read as repeated keys); text as it is; null as
    ``<null string>``; a float as kamcmd prints a double. Ends without a newline."""
    if isinstance(result, dict):
        out = ["{"]
        _tree_lines(result, 1, out)
        out.append("}")
        return "\n".join(out)
    if isinstance(result, list):
        out = []
        for item in result:
            if isinstance(item, (dict, list)):
                out.append(format_tree(item))
            else:
                out.append(_scalar(item))
        return "\n".join(out)
    return _scalar(result)


def format_fault(err: RpcError) -> tuple[str, list[str]]:
    """A fault as kamcmd prints it, ``error: CODE - MESSAGE`` (on its standard output),
    and the details gdispatch adds (the fault's data), one a line. JSON-RPC's "method not
    found" shows as kamcmd shows Kamailio's (ctl answers an unknown command with 500)."""
    code = 500 if err.code == METHOD_NOT_FOUND else err.code
    data = err.data
    if data in (None, ""):
        details = []
    elif isinstance(data, list):
        details = [str(item) for item in data]
    else:
        details = [str(data)]
    return f"error: {code} - {err.message}", details
