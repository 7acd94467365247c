"""The HTTP listener of `[http]`: gevent's WSGI server, and the routes the other modules
of gdispatch.web register with `route`.

A route is a function `(app, request) -> Response` for one method and path; `serve`
finds it (404 for a path no route has, 405 for a method the path does not take), gives
it a `Request` (the query, the headers, a body of at most MAX_BODY bytes) and writes
its `Response`. `authorized` checks `[http] token` (a bearer token, compared in constant
time) for the routes that change something; without a token configured they refuse.
A route that raises answers 500, logged with its traceback; nothing a client sent is
logged unescaped (gdispatch.logsafe escapes every record).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from gdispatch.logsafe import SUMMARISE

log = logging.getLogger("gdispatch.web")

MAX_BODY = 64 * 1024  # bytes a request body may have
# What the listener may hold: connections served at once (past them, the next waits in
# the kernel's queue: the descriptors stay the SIP side's), and seconds a client may
# take over each read or write, and over each request as a whole, from waiting for its
# request line to its response written (a client that trickles its request a byte at a
# time, each read in time, holds a slot no longer).
MAX_CONNECTIONS = 32
IO_TIMEOUT = 10.0
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
           500: "Internal Server Error", 501: "Not Implemented"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lowercase names
    body: bytes
    remote: str = ""  # the client's address, for the log


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Any, Request], Response]
ROUTES: dict[str, dict[str, Handler]] = {}  # path -> method -> handler


def route(method: str, path: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of `method` `path`."""
    def register(fn: Handler) -> Handler:
        ROUTES.setdefault(path, {})[method] = fn
        return fn
    return register


def authorized(request: Request, token: str) -> bool:
    """The request carries `Authorization: Bearer TOKEN` with `[http] token`; never
    when no token is configured."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # The scheme's name is case-insensitive (RFC 7235 §2.1); the token is compared whole.
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())


def serve(app: Any, request: Request) -> Response:
    methods = ROUTES.get(request.path)
    if methods is None:
        return Response(404, b"not found\n")
    handler = methods.get(request.method)
    if handler is None:
        return Response(405, b"method not allowed\n", headers=[("Allow", ", ".join(sorted(methods)))])
    try:
        return handler(app, request)
    except Exception:
        log.exception("error answering %s %s", request.method, request.path)
        return Response(500, b"internal error\n")


class _Handler(WSGIHandler):
    """pywsgi's handler, with a deadline on every read and write of its connection and
    one on each request (a keep-alive connection waiting for its next request included),
    and a request it cannot parse logged in one line (pywsgi prints the traceback of
    some on stderr, past the log's escaping and rate limits)."""

    def handle(self) -> None:
        self.socket.settimeout(IO_TIMEOUT)
        super().handle()

    def handle_one_request(self) -> Any:
        with gevent.Timeout(IO_TIMEOUT, False):
            return super().handle_one_request()
        return None  # past the deadline: the connection closes

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        log.info("http %s: bad request: %s", self.client_address[0] if self.client_address else "?",
                 str(ex) or type(ex).__name__, extra=SUMMARISE)
        return "400", BAD_REQUEST


class WebServer:
    """`[http] listen` served for `app` (the running gdispatch.app.App)."""

    def __init__(self, app: Any, listen: str):
        host, _, port = listen.rpartition(":")
        self.app = app
        self.server = WSGIServer((host.strip("[]"), int(port)), self._wsgi, log=None, error_log=None,
                                 spawn=Pool(MAX_CONNECTIONS), handler_class=_Handler)
        self.sampler: Any = None  # the status page's time series (gdispatch.web.status.Sampler)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address[:2]

    def start(self) -> None:
        # Registers the routes: the modules are imported for their `route`s.
        from gdispatch.web import metrics, status  # noqa: F401

        self.server.start()
        self.sampler = status.Sampler(self.app)
        self.sampler.start()
        log.info("http listener on %s:%d", *self.address)

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        self.server.stop(timeout=1)

    def _wsgi(self, environ: dict, start_response: Callable) -> list[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            response = Response(413 if length > 0 else 400, b"bad or too large body\n")
        else:
            body = environ["wsgi.input"].read(length) if length else b""
            fields = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
            request = Request(environ["REQUEST_METHOD"], environ.get("PATH_INFO") or "/",
                              parse_qs(environ.get("QUERY_STRING", "")), fields, body,
                              environ.get("REMOTE_ADDR", ""))
            response = serve(self.app, request)
        # One request per connection: keep-alive clients sending a request now and then
        # would hold every slot of the pool, each request within its deadline; closed
        # after each answer, they queue for a slot behind the clients already waiting.
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
                   ("Cache-Control", "no-store"), ("Connection", "close"), *response.headers]
        start_response(f"{response.status} {REASONS.get(response.status, 'Status')}", headers)
        return [response.body]
