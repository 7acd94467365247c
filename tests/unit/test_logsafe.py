"""gdispatch.logsafe: network bytes escaped in the log, one record per line, tracebacks
that keep their frames' lines, and repeated warnings summarised (fake clock)."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from gdispatch import logsafe
from gdispatch.logsafe import KEEP, SafeFormatter, Summariser, escape, text

# --------------------------------------------------------------------------- escaping


@pytest.mark.parametrize("raw,shown", [
    ("plain text, ünïcödé and 漢字 ☎", "plain text, ünïcödé and 漢字 ☎"),
    ("a\x00b", "a\\x00b"),
    ("line\r\nForged: 1", "line\\x0d\\x0aForged: 1"),
    ("tab\there", "tab\\x09here"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("del\x7f nel\x85", "del\\x7f nel\\x85"),
    ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),  # line breaks to str.splitlines and some viewers
    ("rtl\u202eexe.txt", "rtl\\u202eexe.txt"),  # a bidirectional override turns text around
    ("C:\\dir\\x41", "C:\\dir\\x41"),  # a backslash stays as it is
])
def test_escape_writes_every_unprintable_character_as_an_escape(raw, shown):
    assert escape(raw) == shown


def test_bytes_that_are_not_utf8_show_as_their_values():
    assert text(b"caf\xc3\xa9 \xff\xfe") == "café \\xff\\xfe"
    assert escape(text(b"a\x00\xff")) == "a\\x00\\xff"
    # A str decoded with surrogateescape (gdispatch.sip.grammar.text) shows its raw bytes too.
    assert escape(b"m\xff\x80".decode("utf-8", "surrogateescape")) == "m\\xff\\x80"


def _formatted(record_msg: str, *args, exc_info=None) -> str:
    record = logging.LogRecord("gdispatch.test", logging.WARNING, __file__, 1, record_msg, args, exc_info)
    return SafeFormatter("%(levelname)s %(name)s: %(message)s").format(record)


def test_one_record_is_one_line_whatever_its_arguments_hold():
    out = _formatted("closing %s: %s", "call\r\n2024-01-01 WARNING gdispatch: forged", "\x00\u2028")
    assert out.splitlines() == [out]
    assert out == "WARNING gdispatch.test: closing call\\x0d\\x0a2024-01-01 WARNING gdispatch: forged: \\x00\\u2028"


def test_a_json_record_is_one_object_on_one_line_with_the_text_logs_fields_escaped_alike():
    record = logging.LogRecord("gdispatch.proxy", logging.WARNING, __file__, 1, "no active destination for %s",
                               ("INVITE a\r\n{\"forged\": 1}\u2028\x00",), None)
    out = logsafe.JsonFormatter("w1").format(record)
    assert out.splitlines() == [out]
    fields = json.loads(out)
    assert list(fields) == ["time", "level", "worker", "logger", "message"]
    assert fields["level"] == "WARNING" and fields["worker"] == "w1" and fields["logger"] == "gdispatch.proxy"
    assert fields["message"] == 'no active destination for INVITE a\\x0d\\x0a{"forged": 1}\\u2028\\x00'
    try:
        _raise_chain()
    except ValueError:
        record = logging.LogRecord("gdispatch", logging.ERROR, __file__, 1, "oops", (), sys.exc_info())
    fields = json.loads(logsafe.JsonFormatter().format(record))
    assert "worker" not in fields
    assert fields["exception"].startswith("Traceback") and "FORGED LINE\\x00" in fields["exception"]


def _raise_chain():
    try:
        raise KeyError("inner")
    except KeyError as e:
        raise ValueError("bad Call-ID a\r\nFORGED LINE\x00") from e


def test_a_traceback_keeps_its_frames_lines_and_escapes_the_exceptions_text():
    try:
        _raise_chain()
    except ValueError:
        out = _formatted("error handling a message", exc_info=sys.exc_info())
    lines = out.splitlines()
    assert lines[0] == "WARNING gdispatch.test: error handling a message"
    assert lines.count("Traceback (most recent call last):") == 2
    assert any(line.strip().startswith("File ") and "_raise_chain" in line for line in lines)
    assert "KeyError: 'inner'" in lines
    assert "The above exception was the direct cause of the following exception:" in lines
    assert lines[-1] == "ValueError: bad Call-ID a\\x0d\\x0aFORGED LINE\\x00"
    assert not any(line.startswith("FORGED") for line in lines)


def test_an_exception_raised_while_handling_another_shows_both():
    try:
        try:
            raise OSError("first")
        except OSError:
            raise RuntimeError("second\nline")  # noqa: B904 - the implicit context is what is tested
    except RuntimeError:
        out = logsafe.format_exception(sys.exc_info())
    lines = out.splitlines()
    assert "OSError: first" in lines
    assert "During handling of the above exception, another exception occurred:" in lines
    assert lines[-1] == "RuntimeError: second\\x0aline"


# --------------------------------------------------------------------------- summarising


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logged():
    """A logger `gdispatch.t` writing to a string through logsafe.install, with a fake
    clock: (logger, clock, lines(), summariser)."""
    clock = Clock()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    summariser = logsafe.install(handler, "%(levelname)s %(name)s: %(message)s", clock)
    logger = logging.getLogger("gdispatch.t")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)

    def lines() -> list[str]:
        return stream.getvalue().splitlines()

    yield logger, clock, lines, summariser
    logger.removeHandler(handler)
    logger.propagate = True


def test_the_first_of_a_kind_are_logged_then_counted_and_summed_up_when_the_period_ends(logged):
    log, clock, lines, summariser = logged
    for i in range(50):
        log.warning("closing tcp connection from %s:%s: %s", "192.0.2.1", 5000 + i, "Missing Content-Length")
        clock.now += 0.1
    assert len(lines()) == logsafe.BURST
    summariser.flush()
    assert len(lines()) == logsafe.BURST  # the period (10 s) is not over: nothing yet
    clock.now += 6
    summariser.flush()  # no record of that kind came: the timer writes the summary
    assert lines()[logsafe.BURST:] == [
        "WARNING gdispatch.t: 45 more like 'closing tcp connection from %s:%s: %s' in the last 10 s"]
    clock.now += 20
    summariser.flush()
    log.warning("closing tcp connection from %s:%s: %s", "192.0.2.1", 1, "x")
    assert len(lines()) == logsafe.BURST + 2  # a new period starts with the record logged


def test_a_record_after_the_period_brings_the_summary_first(logged):
    log, clock, lines, summariser = logged
    for _ in range(7):
        log.warning("tcp accept failed: %s", "EMFILE")
    clock.now += 10
    log.warning("tcp accept failed: %s", "EMFILE")
    assert lines()[-2:] == ["WARNING gdispatch.t: 2 more like 'tcp accept failed: %s' in the last 10 s",
                            "WARNING gdispatch.t: tcp accept failed: EMFILE"]


def test_kinds_are_apart_and_what_opts_out_or_is_not_a_warning_is_never_hidden(logged):
    log, clock, lines, summariser = logged
    other = logging.getLogger("gdispatch.t.other")
    for _ in range(20):
        log.warning("one %s", 1)
        log.warning("two %s", 2)
        other.warning("one %s", 1)  # another logger: another kind
        log.warning("destination %s is down", "sip:gw1", extra=KEEP)
        log.info("info %s", 3)
        log.critical("critical %s", 4)
    text_ = "\n".join(lines())
    assert text_.count("one 1") == 2 * logsafe.BURST and text_.count("two 2") == logsafe.BURST
    assert text_.count("destination sip:gw1 is down") == 20
    assert text_.count("info 3") == 20 and text_.count("critical 4") == 20
    clock.now += 10
    summariser.flush()
    assert sorted(lines()[-3:]) == ["WARNING gdispatch.t.other: 15 more like 'one %s' in the last 10 s",
                                    "WARNING gdispatch.t: 15 more like 'one %s' in the last 10 s",
                                    "WARNING gdispatch.t: 15 more like 'two %s' in the last 10 s"]


def test_the_summary_has_the_highest_level_hidden(logged):
    log, clock, lines, summariser = logged
    for _ in range(6):
        log.warning("%s", "x")
    log.error("%s", "y")
    clock.now += 10
    summariser.flush()
    assert lines()[-1] == "ERROR gdispatch.t: 2 more like '%s' in the last 10 s"


def test_the_number_of_kinds_followed_is_bounded(monkeypatch):
    monkeypatch.setattr(logsafe, "MAX_KINDS", 3)
    clock = Clock()
    written = []
    s = Summariser(clock, emit=lambda name, level, message: written.append(message))

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("gdispatch.t", logging.WARNING, __file__, 1, msg, (), None)

    assert all(s.filter(record(f"kind {i}")) for i in range(10))  # past the bound: logged as they are
    assert len(s._kinds) == 3
    for _ in range(10):
        s.filter(record("kind 0"))
    clock.now += 10
    assert s.filter(record("kind 99"))  # the periods that ended make room
    assert written == ["6 more like 'kind 0' in the last 10 s"] and len(s._kinds) == 1


def test_what_is_counted_is_written_when_the_process_stops(logged):
    log, clock, lines, summariser = logged
    for _ in range(8):
        log.warning("bad stream from %s", "x")
    clock.now += 3
    summariser.close()
    assert lines()[-1] == "WARNING gdispatch.t: 3 more like 'bad stream from %s' in the last 3 s"


def test_info_records_that_ask_for_it_are_summarised_too(logged):
    # What anybody on the network can cause once a connection (a failed TLS handshake,
    # an HTTP request that does not parse) is logged at INFO, and summarised: a scanner
    # opening a thousand connections a second writes BURST lines per period, not a
    # thousand a second.
    log, clock, lines, summariser = logged
    for port in range(20):
        log.info("tls handshake from %s:%s failed: %s", "127.0.0.1", port, "http request", extra=logsafe.SUMMARISE)
    assert "\n".join(lines()).count("failed: http request") == logsafe.BURST
    clock.now += 10
    summariser.flush()
    assert lines()[-1] == "INFO gdispatch.t: 15 more like 'tls handshake from %s:%s failed: %s' in the last 10 s"
