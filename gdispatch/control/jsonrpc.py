"""JSON-RPC 2.0 as the control socket speaks it: the framing of requests and answers, and
faults. No sockets and no methods here: the server (server.py) hands each line to
`handle_line` with the function that runs a method (methods.call); the client
(client.py) encodes its request with `encode` and reads the answer with `result_of`.

Framing: line-delimited JSON. Each request is one JSON-RPC 2.0 object (or a batch array)
on one line ending with ``\\n``; each answer is one line. A connection may carry any
number of requests, one after another; the client sends one and reads one line. A
request with no ``id`` is a notification and gets no answer (JSON-RPC 2.0 §4.1). A line
that is not JSON gets a parse error (-32700) and the connection stays usable. An
exception inside a method becomes an error object (-32603); the server keeps serving.

On the TCP listener every request carries ``"token": "..."`` as a member of the request
object, compared in constant time; a request without the right one is refused (-32001)
and the connection closed.

Faults are `RpcError(code, message, data)`: JSON-RPC's own codes are negative (§5.1),
the methods' are Kamailio's (usually 500, with Kamailio's text as the message).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

# The logger keeps the name of the module this was split from, so that log filters and
# greps written against it keep matching.
log = logging.getLogger("gdispatch.control")

# JSON-RPC 2.0 §5.1 error codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603
UNAUTHORIZED = -32001  # server-defined range: a TCP request without the right token

#: Runs one method by name with the request's params and returns its JSON-ready result,
#: or raises RpcError (methods.call with the application bound).
Dispatch = Callable[[str, Any], Any]


class RpcError(Exception):
    """A fault: `code` (Kamailio's, usually 500; JSON-RPC's own codes are negative),
    `message` (Kamailio's text where it has one), `data` (details, or None)."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def as_error(self) -> dict[str, Any]:
        """The JSON-RPC 2.0 error object."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err

    def __str__(self) -> str:
        detail = self.data
        if isinstance(detail, list):
            detail = "; ".join(str(x) for x in detail)
        return f"{self.code} - {self.message}" + (f" ({detail})" if detail not in (None, "") else "")


class NoAnswer(RpcError):
    """The client got no answer it can read: none within its timeout, the connection
    lost, or a line that is not a JSON-RPC response. Not a fault of the method."""


def error_answer(req_id: Any, err: RpcError) -> dict[str, Any]:
    """The response object carrying a fault."""
    return {"jsonrpc": "2.0", "id": req_id, "error": err.as_error()}


def encode(obj: Any) -> bytes:
    """One request or answer as its line (compact JSON and ``\\n``)."""
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


# -- the server's side -------------------------------------------------------------------


def _handle_one(dispatch: Dispatch, req: Any, token: str | None) -> tuple[dict[str, Any] | None, bool]:
    """One request object → (answer or None for a notification, close the connection)."""
    if not isinstance(req, dict):
        return error_answer(None, RpcError(INVALID_REQUEST, "Invalid Request", "a request is a JSON object")), False
    req_id = req.get("id")
    if token is not None:
        given = req.get("token")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                                                 token.encode()):
            refused = RpcError(UNAUTHORIZED, "Unauthorized", 'this listener needs the right "token"')
            return error_answer(req_id, refused), True
    method = req.get("method")
    if req.get("jsonrpc", "2.0") != "2.0" or not isinstance(method, str) or (
            req_id is not None and not isinstance(req_id, (str, int, float))):
        return error_answer(req_id if isinstance(req_id, (str, int, float)) else None,
                            RpcError(INVALID_REQUEST, "Invalid Request",
                                     'expected {"jsonrpc": "2.0", "method": "...", "params": [...], "id": ...}')), \
            False
    log.debug("control: %s %s", method, req.get("params"))
    try:
        result = dispatch(method, req.get("params"))
    except RpcError as e:
        answer = error_answer(req_id, e)
    except Exception as e:
        log.exception("control: %s failed", method)
        answer = error_answer(req_id, RpcError(INTERNAL_ERROR, "Internal error", f"{type(e).__name__}: {e}"))
    else:
        answer = {"jsonrpc": "2.0", "id": req_id, "result": result}
    if "id" not in req:
        return None, False
    return answer, False


def handle_line(line: bytes, dispatch: Dispatch, token: str | None = None) -> tuple[bytes | None, bool]:
    """One request line → (the answer line with its ``\\n``, or None when nothing is to
    be sent; whether to close the connection). `dispatch` runs a method; `token`: the
    token every request must carry (TCP), or None (Unix socket)."""
    if not line.strip():
        return None, False
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        return encode(error_answer(None, RpcError(PARSE_ERROR, "Parse error", str(e)))), False
    if isinstance(req, list):
        if not req:
            return encode(error_answer(None, RpcError(INVALID_REQUEST, "Invalid Request", "an empty batch"))), False
        answers = []
        close = False
        for item in req:
            answer, close = _handle_one(dispatch, item, token)
            if answer is not None:
                answers.append(answer)
            if close:
                break
        return (encode(answers) if answers else None), close
    answer, close = _handle_one(dispatch, req, token)
    return (encode(answer) if answer is not None else None), close


# -- the client's side -------------------------------------------------------------------


def request_object(method: str, params: Any, token: str | None = None) -> dict[str, Any]:
    """The request the client sends (always id 1: it waits for the one answer)."""
    req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or [], "id": 1}
    if token is not None:
        req["token"] = token
    return req


def result_of(line: bytes) -> Any:
    """An answer line → its result; raises RpcError for a fault, NoAnswer for a broken
    answer."""
    try:
        answer = json.loads(line)
    except ValueError as e:
        raise NoAnswer(PARSE_ERROR, "Bad answer", str(e)) from None
    if not isinstance(answer, dict):
        raise NoAnswer(INTERNAL_ERROR, "Bad answer", "not a JSON-RPC response object")
    if "error" in answer:
        err = answer["error"] if isinstance(answer["error"], dict) else {}
        raise RpcError(int(err.get("code", INTERNAL_ERROR)), str(err.get("message", "error")), err.get("data"))
    return answer.get("result")
