"""The proxy's log against hostile input, with a real gdispatch process: bytes a peer
sent reach the log file only escaped, and a stream of bad TCP connections costs a
bounded number of log lines, summed up in one line (gdispatch.logsafe)."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest

from tests.support.wait import wait_for

from . import harness

HOST = "127.0.0.1"
LIST = "1 sip:127.0.0.1:9 0 0 duid=gw1\n"
NO_PROBING = "[probing]\ninterval = 0\n"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_call_id_with_control_bytes_and_bad_utf8_is_logged_escaped_on_one_line(proxy, log_format):
    # Set 9's one destination is disabled: the proxy warns "no active destination in set 9
    # for INVITE <Call-ID>", a line that quotes what the caller sent.
    p = proxy(LIST + "9 sip:127.0.0.1:9 4 0 duid=off\n",
              config=NO_PROBING + "[[route]]\nmethods = [\"INVITE\"]\nset = 9\n", args=("--log-format", log_format))
    call_id = b"evil\x00\xff\xfe\x1b[2J\xe2\x80\xa8FORGED-LINE\x85\x7f"
    data = harness.build_request("INVITE", f"sip:svc@{HOST}:{p.port}", local_port=harness.free_port(),
                                 call_id="CALLID").replace(b"CALLID", call_id)
    replies = p.send_udp(data, timeout=3.0)
    assert 503 in [harness.status_code(r) for r in replies], replies
    raw = p.log_path.read_bytes()
    for forbidden in (b"\x00", b"\xff", b"\x1b", b"\xe2\x80\xa8", b"\x85", b"\x7f", b"\r"):
        assert forbidden not in raw, (forbidden, raw[-400:])
    text = raw.decode("utf-8")
    shown = "INVITE evil\\x00\\xff\\xfe\\x1b[2J\\u2028FORGED-LINE\\x85\\x7f"
    assert not any(line.startswith("FORGED") for line in text.splitlines())
    if log_format == "text":
        assert shown in text, text[-400:]
        return
    # One JSON object per line, the message escaped as in the text log.
    records = [json.loads(line) for line in text.splitlines()]
    warning = next(r for r in records if "no active destination" in r["message"])
    assert warning["level"] == "WARNING" and warning["logger"] == "gdispatch.proxy" and shown in warning["message"]
    assert {"time", "level", "logger", "message"} <= set(records[0])


def test_two_hundred_unframable_tcp_streams_cost_a_few_log_lines_and_one_summary(proxy):
    p = proxy(LIST, config=NO_PROBING, listen=("udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}"))
    before = len(p.log().splitlines())
    n = 200
    deadline = time.monotonic() + 30
    for _ in range(n):
        assert time.monotonic() < deadline
        with socket.create_connection((HOST, p.port), timeout=5) as s:
            s.sendall(b"NOT SIP AT ALL\r\nNo-Length: here\r\n\r\n")  # no Content-Length: cannot be framed
            try:
                assert s.recv(100) == b""  # closed by the proxy
            except ConnectionResetError:
                pass
    stats = json.loads(p.rpc("stats", json_out=True).stdout)
    assert stats["bad_stream"] == n
    # The first few are logged, the rest counted; the count is written when the period
    # (10 s) ends, with no further bad connection to bring it.
    def logged() -> tuple[int, list[str]]:
        """(the connections counted in summaries, the lines logged one by one)"""
        new = p.log().splitlines()[before:]
        details = [line for line in new if "closing tcp connection from" in line and "more like" not in line]
        summed = sum(int(m.group(1)) for line in new
                     for m in [re.search(r"(\d+) more like 'closing tcp connection from", line)] if m)
        return summed, details

    summed, details = wait_for(lambda: (lambda s, d: s + len(d) == n and (s, d))(*logged()), 15, 0.2,
                               message=lambda: p.log()[-3000:])
    assert len(details) <= 10, details
    assert len(p.log().splitlines()) - before <= 15, p.log()[-3000:]
