"""gdispatch.tcplimits with plain bytes and a fake clock: the caps one worker enforces,
the cap fitted to the open-files limit, what one source is, the connection table, the
read deadlines of a stream, the accept back-off and the 413 of an oversized message."""

from __future__ import annotations

import errno

import pytest

from gdispatch.config import Config, ConfigError, Tcp, from_dict
from gdispatch.sip import MAX_MESSAGE_SIZE, ParseError, parse_message
from gdispatch.tcplimits import (
    IDLE,
    REFUSED_PER_SOURCE,
    REFUSED_TOTAL,
    SLOW,
    AcceptBackoff,
    ConnectionTable,
    StreamReader,
    TcpLimits,
    fit_to_fds,
    share,
    source_key,
    too_large_answer,
)

# --------------------------------------------------------------------------- [tcp]


def test_the_tcp_table_defaults_and_checks():
    d = Config().tcp
    assert (d.max_connections, d.max_connections_per_source, d.idle_timeout, d.message_timeout) == (
        2048, 64, 120.0, 10.0)
    c = from_dict({"tcp": {"max_connections": 100, "max_connections_per_source": 5, "idle_timeout": 1.5,
                           "message_timeout": 0.5}}).tcp
    assert c == Tcp(100, 5, 1.5, 0.5)
    assert from_dict({"tcp": {"max_connections": 10}}).tcp.max_connections_per_source == 10
    for data, words in (({"max_connections": 0}, "[tcp].max_connections: expected an integer > 0, got 0"),
                        ({"max_connections": "many"}, "[tcp].max_connections: expected an integer"),
                        ({"max_connections_per_source": 1.5}, "[tcp].max_connections_per_source: expected an integer"),
                        ({"max_connections_per_source": 3000}, "3000 is more than max_connections (2048)"),
                        ({"idle_timeout": 0}, "[tcp].idle_timeout: expected a number of seconds > 0"),
                        ({"message_timeout": "soon"}, "[tcp].message_timeout: expected a number of seconds"),
                        ({"lifetime": 1}, "[tcp]: unknown key 'lifetime'")):
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")
                           .replace("(", r"\(").replace(")", r"\)")):
            from_dict({"tcp": data})


def test_each_worker_enforces_its_share_rounded_up():
    tcp = Tcp(2048, 64, 120.0, 10.0)
    assert share(tcp, 1) == TcpLimits(2048, 64, 120.0, 10.0)
    assert share(tcp, 3) == TcpLimits(683, 22, 120.0, 10.0)
    assert share(Tcp(5, 1, 1.0, 1.0), 4) == TcpLimits(2, 1, 1.0, 1.0)


def test_the_total_cap_leaves_descriptors_for_the_rest():
    limits = TcpLimits(2048, 64, 120.0, 10.0)
    assert fit_to_fds(limits, 20000, 128) == (limits, "")
    lowered, line = fit_to_fds(limits, 1024, 128)
    assert lowered == TcpLimits(896, 64, 120.0, 10.0)
    assert "open-files limit (1024)" in line and "capped at 896" in line
    assert fit_to_fds(TcpLimits(2048, 2048, 1.0, 1.0), 200, 128)[0] == TcpLimits(72, 72, 1.0, 1.0)
    assert fit_to_fds(limits, 50, 128)[0].max_connections == 1


@pytest.mark.parametrize("ip,key", [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
    ("fe80::1%eth0", "fe80::/64"),
])
def test_one_source_is_an_ipv4_address_or_an_ipv6_64(ip, key):
    assert source_key(ip) == key


# --------------------------------------------------------------------------- the table


def test_the_table_refuses_past_each_cap_and_counts_what_closes():
    t = ConnectionTable(TcpLimits(4, 2, 1.0, 1.0))
    t.accepted("a1", "A")
    t.accepted("a2", "A")
    assert t.refusal("A") == REFUSED_PER_SOURCE
    assert t.refusal("B") is None  # another source still gets in
    t.opened("out")  # opened by us: counts in the total, against no source
    t.accepted("b1", "B")
    assert t.open == 4 and t.full() and t.refusal("C") == REFUSED_TOTAL
    t.closed("a1")
    t.closed("a1")  # twice: counted once
    t.closed("never seen")
    assert t.open == 3 and t.by_source == {"A": 1, "B": 1} and t.refusal("A") is None
    t.closed("out")
    assert t.open == 2


def test_the_connection_idle_longest_makes_room_for_one_we_open():
    t = ConnectionTable(TcpLimits(3, 3, 1.0, 1.0))
    for name in ("a", "b", "c"):
        t.accepted(name, "S")
    t.active("a")  # "a" carried a message: "b" is now the idlest
    assert t.idlest() == "b" and t.idlest(spare="b") == "c"
    t2 = ConnectionTable(TcpLimits(1, 1, 1.0, 1.0))
    t2.opened("out")
    assert t2.idlest() is None  # only connections we opened: nothing to close


# --------------------------------------------------------------------------- a stream

OPTIONS = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKa\r\n"
           b"From: <sip:a@192.0.2.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
           b"Content-Length: 0\r\n\r\n")


def reader(now: float = 100.0) -> StreamReader:
    return StreamReader(now, idle_timeout=120.0, message_timeout=10.0)


def test_messages_are_cut_out_of_the_stream_across_reads():
    r = reader()
    assert r.feed(b"\r\n" + OPTIONS + OPTIONS[:30], 100.0) == [OPTIONS]
    assert r.feed(OPTIONS[30:] + OPTIONS, 100.5) == [OPTIONS, OPTIONS]
    assert r.error is None and not r.buffer


def test_a_message_sent_a_byte_at_a_time_is_framed():
    r = reader()
    out = []
    for i in range(len(OPTIONS)):
        out += r.feed(OPTIONS[i:i + 1], 100.0)
    assert out == [OPTIONS]


def test_idle_counts_from_the_last_complete_message_and_trickled_bytes_do_not_extend_it():
    r = reader(100.0)
    assert r.deadline() == (220.0, IDLE)
    r.feed(OPTIONS, 150.0)
    assert r.deadline() == (270.0, IDLE)
    r.feed(b"\r\n", 200.0)  # a lone CRLF is no keep-alive
    assert r.deadline() == (270.0, IDLE)
    r.feed(b"OPT", 265.0)  # a message starting 5 s before the idle deadline gets no more time
    assert r.deadline() == (270.0, IDLE)
    r.touch(266.0)  # a message we sent on it
    assert r.deadline() == (275.0, SLOW)


def test_a_message_must_be_complete_within_message_timeout_of_its_first_byte():
    r = reader(100.0)
    r.feed(b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n", 101.0)
    assert r.deadline() == (111.0, SLOW)
    r.feed(b"Via: SIP/2.0/TCP 192.0.2.1\r\n", 105.0)  # more bytes do not move it
    assert r.deadline() == (111.0, SLOW)
    assert r.feed(b"From: <sip:a@192.0.2.1>;tag=1\r\nTo: <sip:b@127.0.0.1>\r\nCall-ID: c\r\n"
                  b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", 110.0) != []
    assert r.deadline() == (230.0, IDLE)


def test_the_rest_of_a_read_starts_the_next_messages_clock():
    r = reader(100.0)
    r.feed(OPTIONS[:10], 101.0)
    assert r.feed(OPTIONS[10:] + OPTIONS[:5], 108.0) == [OPTIONS]
    assert r.deadline() == (118.0, SLOW)
    assert r.feed(OPTIONS[5:], 109.0) == [OPTIONS]
    assert r.deadline() == (229.0, IDLE)


def test_a_double_crlf_keep_alive_counts_as_a_complete_message_even_split():
    r = reader(100.0)
    r.feed(b"\r\n", 150.0)
    r.feed(b"\r\n", 151.0)  # RFC 5626 §3.5.1 ping, in two reads
    assert r.deadline() == (271.0, IDLE)


def test_a_stream_that_cannot_be_framed_is_an_error_after_the_messages_before_it():
    r = reader()
    assert r.feed(OPTIONS + b"GARBAGE\r\n\r\n", 100.0) == [OPTIONS]
    assert isinstance(r.error, ParseError) and r.error.reason == "Missing Content-Length"


def test_a_message_over_the_size_limit_is_an_error_413_with_its_head_kept():
    big = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: %d" % MAX_MESSAGE_SIZE)
    r = reader()
    assert r.feed(big, 100.0) == []
    assert r.error is not None and r.error.status == 413 and bytes(r.buffer) == big
    r2 = reader()
    assert r2.feed(b"X" * (MAX_MESSAGE_SIZE + 1), 100.0) == []  # a head that never ends
    assert r2.error is not None and r2.error.status == 413


# --------------------------------------------------------------------------- 413


def test_an_oversized_request_gets_413_built_from_its_head():
    big = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 70000") + b"x" * 100
    answer = too_large_answer(big, "198.51.100.9")
    resp = parse_message(answer)
    assert (resp.status, resp.reason) == (413, b"Message Too Large")
    assert resp.get("call-id") == b"c1" and resp.get("cseq") == b"1 OPTIONS"
    assert resp.top_via.branch == "z9hG4bKa" and resp.top_via.received == "198.51.100.9"
    assert resp.to_tag  # RFC 3261 §8.2.6.2
    assert resp.get("content-length") == b"0"
    same_host = too_large_answer(big, "192.0.2.1")
    assert parse_message(same_host).top_via.received is None


@pytest.mark.parametrize("head", [
    b"X" * 100,  # the head never ended
    OPTIONS.replace(b"OPTIONS sip:127.0.0.1 SIP/2.0", b"SIP/2.0 200 OK"),  # a response
    OPTIONS.replace(b"OPTIONS", b"ACK"),  # an ACK
    OPTIONS.replace(b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKa\r\n", b""),  # no Via
    OPTIONS.replace(b"Via: SIP/2.0/TCP 192.0.2.1:5060", b"Via: garbage"),  # no usable Via
])
def test_no_413_without_a_head_to_answer_by(head):
    assert too_large_answer(head, "192.0.2.1") is None


# --------------------------------------------------------------------------- accept


def test_accept_failures_wait_longer_each_time_and_log_once_per_period():
    b = AcceptBackoff()
    emfile = OSError(errno.EMFILE, "Too many open files")
    now = 0.0
    delays, lines = [], []
    while now < 25.0:
        delay, line = b.failed(now, emfile)
        delays.append(delay)
        if line:
            lines.append(line)
        now += delay
    assert delays[:6] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0] and max(delays) == AcceptBackoff.MOST
    assert lines[0].startswith("tcp accept failed: [Errno 24] Too many open files")
    assert len(lines) == 3 and all("more times in the last 1" in line for line in lines[1:])
    counted = sum(int(line.split()[3]) for line in lines[1:])
    assert b.succeeded() == f"tcp accept works again ({len(delays) - 1 - counted} more failures)"
    assert b.succeeded() == "" and b.failed(30.0, emfile)[0] == 0.05  # a new run starts over
