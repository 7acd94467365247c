"""gdispatch.web.server in process, on the real gevent hub: the routes, and what a
client that holds connections open can take of the listener (a bounded pool, a
deadline on each read)."""

from __future__ import annotations

import logging

import gevent
import pytest
from gevent import socket as gsocket

from gdispatch.web import server
from tests.support.wait import wait_for


class _App:
    pass


@pytest.fixture
def web(monkeypatch):
    monkeypatch.setattr(server, "IO_TIMEOUT", 0.3)
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(server.WebServer, "start", lambda self: self.server.start())  # no routes' modules
    monkeypatch.setitem(server.ROUTES, "/ping", {"GET": lambda app, req: server.Response(200, b"pong\n")})
    w = server.WebServer(_App(), "127.0.0.1:0")
    w.start()
    yield w
    w.server.stop(timeout=1)


def _get(port: int, path: str) -> bytes:
    s = gsocket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    return out


def test_a_route_answers_and_an_unknown_path_is_404(web):
    port = web.address[1]
    assert _get(port, "/ping").endswith(b"\r\n\r\npong\n")
    assert _get(port, "/nothing").startswith(b"HTTP/1.1 404 ")


def test_silent_clients_hold_the_pool_no_longer_than_the_read_deadline(web):
    port = web.address[1]
    silent = [gsocket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(server.MAX_CONNECTIONS + 2)]
    gevent.sleep(0.1)
    # The pool is full of clients that send nothing; each is closed at its deadline, and
    # a client with a request is served then.
    answer = gevent.spawn(_get, port, "/ping")
    for s in silent:
        assert s.recv(10) == b""  # closed by the listener
        s.close()
    wait_for(lambda: answer.dead, 5, 0.01)
    assert answer.value.endswith(b"pong\n")


def test_trickling_clients_hold_the_pool_no_longer_than_the_request_deadline(web):
    # A slowloris client sends its request a byte at a time, each well within the read
    # deadline: the deadline on the whole request still closes it.
    port = web.address[1]
    closed: list[bool] = []

    def trickle() -> None:
        s = gsocket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
            for _ in range(60):  # 6 s at most, twenty deadlines
                s.sendall(b"X")
                gevent.sleep(server.IO_TIMEOUT / 3)
        except OSError:
            closed.append(True)
        finally:
            s.close()

    trickling = [gevent.spawn(trickle) for _ in range(server.MAX_CONNECTIONS + 2)]
    try:
        wait_for(lambda: len(closed) == len(trickling), 3, 0.02)
        assert _get(port, "/ping").endswith(b"pong\n")
    finally:
        gevent.killall(trickling)


def test_a_malformed_request_is_answered_400_without_a_traceback_on_stderr(web, capfd, caplog):
    # pywsgi prints the traceback of some client errors (too many headers, a header line
    # too long) on stderr, past the log's escaping and rate limits: one per request.
    caplog.set_level(logging.INFO, "gdispatch.web")
    port = web.address[1]
    headers = b"".join(b"X-%d: \x1b[2J\r\n" % i for i in range(200))
    s = gsocket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    assert out.startswith(b"HTTP/1.1 400 ")
    assert "Traceback" not in capfd.readouterr().err
    assert any("bad request" in r.getMessage() for r in caplog.records)


def test_each_connection_serves_one_request(web):
    # Keep-alive clients sending a request now and then would hold every slot of the
    # pool, each request within its deadline; closed after one answer, they queue for a
    # slot behind the others waiting in the kernel's queue.
    port = web.address[1]
    s = gsocket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    assert out.count(b"pong\n") == 1 and b"Connection: close" in out


def test_the_bearer_scheme_is_case_insensitive_the_token_is_not():
    def req(value: str) -> server.Request:
        return server.Request("POST", "/api/state", {}, {"authorization": value}, b"")

    assert server.authorized(req("Bearer s3cret"), "s3cret")
    assert server.authorized(req("bearer s3cret"), "s3cret")  # RFC 7235 §2.1
    assert not server.authorized(req("Bearer S3CRET"), "s3cret")
    assert not server.authorized(req("Basic s3cret"), "s3cret")
    assert not server.authorized(req("Bearer s3cret"), "")
