"""What reaches the log: one line per record, network bytes shown as escapes, and
repeated warnings summarised.

A SIP message is whatever a peer chose to send: a Call-ID may hold NUL, bytes that are
not UTF-8, terminal escapes, or characters a log reader takes for a line break. Such
text goes into the log only escaped (`escape`): every character that is not printable
(control characters, CR and LF, DEL, the C1 range, Unicode line and paragraph
separators, format characters such as bidirectional overrides) is written as
``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``, and a byte that was not UTF-8 as ``\\xNN``
(`text` decodes network bytes that way; a string decoded with ``surrogateescape``
shows its raw bytes the same way). So one record is one line, and a forged Call-ID
cannot forge a log line. A backslash is left as it is: escaping it would change every
Windows path and regular expression an operator reads, and no line can be forged with it.

`SafeFormatter` applies this to every record's message, and to the text of an exception
in a traceback, whose frames keep their lines. `Summariser` is a handler filter: of the
warnings and errors of one kind (logger + message template) the first `burst` of each
`period` are logged, the rest counted, and the count written as one line when the
period is over (``12 more like 'closing tcp connection from %s:%s: %s' in the last
10 s``), by `flush`, which the application's timer greenlet calls: the summary comes even
when no record of that kind follows (and `close` writes the counts left when the
process stops). A record logged with ``extra=KEEP`` is never
summarised: a destination going down or up, a problem in the list file, a reload. One
logged with ``extra=SUMMARISE`` is summarised whatever its level: what anybody on the
network causes once a connection at INFO (a failed TLS handshake, an HTTP request that
does not parse), which a scanner would otherwise write a thousand times a second.

`JsonFormatter` writes each record as one JSON object on its line (journald, Loki and
their kind read it): the fields of the text log, the message escaped the same way.

`install` puts a formatter and the Summariser on a handler; `setup` does it for the
process's stderr, as gdispatch.app starts each process.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Optional

# `extra=KEEP` on a log call: the record is never summarised.
KEEP = {"gdispatch_keep": True}
# `extra=SUMMARISE`: the record is summarised even below WARNING.
SUMMARISE = {"gdispatch_summarise": True}

PERIOD = 10.0  # seconds a kind's count runs before its summary line
BURST = 5  # records of one kind logged per period before the rest are only counted
MAX_KINDS = 1000  # kinds followed at once; a record of one more kind is logged as it is
FLUSH_EVERY = 1.0  # seconds between two looks at the periods that ended
# What Python writes between two exceptions of a chain.
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"

ExcInfo = tuple[type[BaseException], BaseException, Optional[TracebackType]]


def text(data: bytes) -> str:
    """Network bytes as a str to log: UTF-8 where they are, ``\\xNN`` for every other
    byte (`escape` then writes the control characters the same way)."""
    return data.decode("utf-8", "backslashreplace")


def _escaped(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"  # a byte kept by surrogateescape: the byte
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(s: str) -> str:
    """`s` with every character that is not printable written as an escape (see the
    module's docstring); printable text, the usual case, is returned as it is."""
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else _escaped(ch) for ch in s)


def format_exception(ei: ExcInfo | tuple[None, None, None]) -> str:
    """A traceback as `traceback.format_exception` writes it, frames on their lines, but
    each exception's own text (which may quote what a peer sent) escaped onto one line;
    causes and contexts first, as Python prints them."""
    exc = ei[1]
    if exc is None:
        return ""
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    link = ""
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    out: list[str] = []
    for e, link_after in reversed(chain):
        tb = ei[2] if e is exc else e.__traceback__
        if tb is not None:
            out.append("Traceback (most recent call last):\n")
            out.extend(traceback.format_tb(tb))
        out.append(escape("".join(traceback.format_exception_only(type(e), e)).rstrip("\n")) + "\n")
        if link_after:
            out.append(link_after)
    return "".join(out).rstrip("\n")


class SafeFormatter(logging.Formatter):
    """A Formatter that escapes the message of every record and the text of the
    exceptions in its traceback (`escape`, `format_exception`)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: ExcInfo | tuple[None, None, None]) -> str:
        return format_exception(ei)

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(escape(line) for line in stack_info.split("\n"))


class JsonFormatter(SafeFormatter):
    """One JSON object per record: `time` (as the text log's, with milliseconds),
    `level`, `worker` (with several workers), `logger`, `message`, and `exception`
    (the traceback, escaped as `format_exception` does) when there is one."""

    def __init__(self, worker: str = ""):
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape(record.getMessage())
        out = {"time": self.formatTime(record), "level": record.levelname}
        if self.worker:
            out["worker"] = self.worker
        out["logger"] = record.name
        out["message"] = record.message
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


class _Kind:
    __slots__ = ("hidden", "level", "seen", "start")

    def __init__(self, start: float, level: int):
        self.start = start
        self.level = level
        self.seen = 0
        self.hidden = 0


class Summariser(logging.Filter):
    """A handler filter that summarises repeated warnings and errors (see the module's
    docstring). `clock` gives seconds (time.monotonic; a fake in tests). `emit(name,
    level, message)` writes a summary line; by default through the logger `name`, with
    `KEEP`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, period: float = PERIOD,
                 burst: int = BURST, emit: Callable[[str, int, str], None] | None = None):
        super().__init__()
        self.clock = clock
        self.period = period
        self.burst = burst
        self.emit = emit or _emit
        self._kinds: dict[tuple[str, str], _Kind] = {}
        self._next_flush = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if (getattr(record, "gdispatch_keep", False) or record.levelno >= logging.CRITICAL
                or (record.levelno < logging.WARNING and not getattr(record, "gdispatch_summarise", False))):
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        kind = self._kinds.get(key)
        if kind is not None and now - kind.start >= self.period:
            del self._kinds[key]
            self._report(key, kind)
            kind = None
        if kind is None:
            if len(self._kinds) >= MAX_KINDS:
                self.flush(force=True)
                if len(self._kinds) >= MAX_KINDS:
                    return True
            kind = self._kinds[key] = _Kind(now, record.levelno)
        kind.seen += 1
        if kind.seen <= self.burst:
            return True
        kind.hidden += 1
        kind.level = max(kind.level, record.levelno)
        return False

    def flush(self, force: bool = False) -> None:
        """Write the summary of every kind whose period is over; at most once every
        FLUSH_EVERY seconds unless `force`."""
        now = self.clock()
        if not force and now < self._next_flush:
            return
        self._next_flush = now + FLUSH_EVERY
        for key, kind in list(self._kinds.items()):
            if now - kind.start >= self.period:
                del self._kinds[key]
                self._report(key, kind)

    def close(self) -> None:
        """Write what is counted and not written yet, periods over or not (the process
        stops)."""
        now = self.clock()
        kinds, self._kinds = self._kinds, {}
        for key, kind in kinds.items():
            self._report(key, kind, min(self.period, max(1.0, now - kind.start)))

    def _report(self, key: tuple[str, str], kind: _Kind, seconds: float | None = None) -> None:
        if kind.hidden:
            self.emit(key[0], kind.level, f"{kind.hidden} more like {key[1]!r} in the last "
                                          f"{seconds or self.period:.0f} s")


def _emit(name: str, level: int, message: str) -> None:
    logging.getLogger(name).log(level, "%s", message, extra=KEEP)


def install(handler: logging.Handler, fmt: str | logging.Formatter,
            clock: Callable[[], float] = time.monotonic) -> Summariser:
    """Give `handler` the SafeFormatter with `fmt` (or the formatter `fmt`) and a
    Summariser, which is returned (its `flush` must be called periodically)."""
    handler.setFormatter(SafeFormatter(fmt) if isinstance(fmt, str) else fmt)
    summariser = Summariser(clock)
    handler.addFilter(summariser)
    return summariser


def setup(level: str, tag: str = "", fmt: str = "text") -> Summariser:
    """Log to stderr, every record on one line with what came from the network escaped,
    repeated warnings summarised; the Summariser returned is flushed
    by the timer greenlet. `tag`: the worker ("w0", "w1"...) when there are several.
    `fmt`: "text", or "json" (an object per line)."""
    handler = logging.StreamHandler(sys.stderr)
    summariser = install(
        handler, JsonFormatter(tag) if fmt == "json" else
        "%(asctime)s %(levelname)s " + (f"[{tag}] " if tag else "") + "%(name)s: %(message)s")
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    return summariser
