"""The status page at GET / and the JSON it reads.

- GET / serves static/index.html; GET /status.js and /status.css its script and style
  (package data: no build step, nothing from another site). The page polls
  GET /api/status and draws what it gets; every text it shows is set as text, never
  as markup (URIs and descriptions come from the list file, reasons from the network).
- GET /api/status: the sets and destinations in the order and with the state letters of
  ``dispatcher.list`` (gdispatch.control.listing), each with its active calls, ping
  latency, counters and a short time series (calls/s, ping round-trip); the recent
  state changes and reloads.
- POST /api/state: sets one destination's state through the ``dispatcher.set_state``
  RPC method (gdispatch.control.methods), with ``Authorization: Bearer`` and
  `[http] token`; without a token configured the page is read-only (403).

What the page shows over time is kept here and bounded: `Changes`, a ring buffer of the
last MAX_CHANGES state changes and reloads (the App feeds it where it reports them), and
`Sampler`, a greenlet of the primary that samples each destination every
SAMPLE_INTERVAL seconds and keeps WINDOW seconds of it.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from importlib import resources
from typing import Any

import gevent

from gdispatch import __version__
from gdispatch.control.jsonrpc import RpcError
from gdispatch.control.listing import kamailio_set_order
from gdispatch.control.methods import call
from gdispatch.dispatcher.reload import identity
from gdispatch.web.server import Request, Response, authorized, route

log = logging.getLogger("gdispatch.web")

SAMPLE_INTERVAL = 2.0  # seconds between two samples of every destination
WINDOW = 300.0  # seconds of samples kept
MAX_CHANGES = 100  # state changes and reloads kept
MAX_TEXT = 200  # characters kept of a reason (a gateway's reason phrase may be long)

# The page and its two files, by the path they are served at: (file, content type).
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/status.css": ("status.css", "text/css; charset=utf-8"),
}
# The page runs its own script and style only, talks to this listener only, and may not
# be framed: text from the list file that slipped into markup still could not run.
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


class Changes:
    """The last MAX_CHANGES state changes and reloads, oldest first, as the page lists
    them. The App notes them where it reports them (its state-change callback, its
    reloads); every process has one, the primary's is shown."""

    def __init__(self, size: int = MAX_CHANGES, clock=time.time):
        self.entries: deque[dict[str, Any]] = deque(maxlen=size)
        self.clock = clock
        # The reloads of the list file, for the metrics: how many went and failed, and
        # when the last one ended and whether it went.
        self.reloads = {"ok": 0, "failed": 0}
        self.last_reload: tuple[float, bool] | None = None

    def state(self, dest, old: str | None, new: str, reason: str) -> None:
        """A destination's letters went from `old` to `new`. The first report of a
        destination (`old` None: the prober took it on, at start or reload) is no change."""
        if old is None or old == new:
            return
        self.entries.append({"time": self.clock(), "kind": "state", "set": dest.setid, "uri": dest.uri,
                             "duid": dest.duid, "from": old, "to": new, "reason": _clip(reason)})

    def reload(self, reason: str, result: str, ok: bool = True, *, from_file: bool = True) -> None:
        """The list was reloaded (or not, `ok` False) for `reason`; `result` says what
        came of it. `from_file`: the list file was read (else an RPC changed the list
        in memory, which the metrics do not count as a reload)."""
        now = self.clock()
        self.entries.append({"time": now, "kind": "reload", "ok": ok, "reason": _clip(reason),
                             "result": _clip(result)})
        if from_file:
            self.reloads["ok" if ok else "failed"] += 1
            self.last_reload = (now, ok)


class Series:
    """One destination's samples: calls/s, mean ping round-trip (ms) and the first state
    letter (A, I, D, T), None where there is no value, aligned with the Sampler's `times`."""

    __slots__ = ("cps", "rtt", "state", "sent", "pings", "rtt_sum")

    def __init__(self, points: int, missing: int):
        self.cps: deque[float | None] = deque([None] * missing, maxlen=points)
        self.rtt: deque[float | None] = deque([None] * missing, maxlen=points)
        self.state: deque[str | None] = deque([None] * missing, maxlen=points)
        self.sent: int | None = None  # INVITEs sent, at the last sample
        self.pings: int | None = None  # answered pings, at the last sample
        self.rtt_sum = 0.0  # their round-trips added, ms


class Sampler:
    """Every `interval` seconds, each destination's calls/s (INVITEs sent to it, every
    worker's, since the last sample) and the mean round-trip of the pings it answered
    meanwhile (None when none was answered). `window` seconds are kept; destinations
    that left the list are dropped at the next sample, so the memory is bounded by the
    list. Runs in the primary, which has every worker's counters."""

    def __init__(self, app: Any, interval: float = SAMPLE_INTERVAL, window: float = WINDOW, clock=time.time):
        self.app = app
        self.interval = interval
        self.window = window
        self.points = max(2, int(window / interval))
        self.clock = clock
        self.times: deque[float] = deque(maxlen=self.points)
        self.series: dict[tuple, Series] = {}
        self._last: float | None = None
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:
                log.exception("status page: sampling failed")
            gevent.sleep(self.interval)

    def sample(self) -> None:
        app = self.app
        dlist = app.current_list()
        proxy = app.proxy
        others = app.cluster.merge_stats({})  # the other workers' per-destination counters
        now = self.clock()
        elapsed = now - self._last if self._last is not None else 0.0
        self._last = now
        self.times.append(now)
        seen = set()
        for d in dlist.destinations():
            key = identity(d)
            seen.add(key)
            s = self.series.get(key)
            if s is None:
                s = self.series[key] = Series(self.points, len(self.times) - 1)
            sent = proxy.call_counts.summed(d, others)["CALLS_SENT"]
            cps = None
            if s.sent is not None and elapsed > 0:
                cps = round(max(0, sent - s.sent) / elapsed, 2)
            s.sent = sent
            rtt = None
            lat = d.probe.latency if d.probe is not None else None
            if lat is not None:
                total = lat.mean * lat.count  # mean x count: every round-trip added
                if s.pings is not None and lat.count > s.pings:
                    rtt = round((total - s.rtt_sum) / (lat.count - s.pings), 3)
                s.pings, s.rtt_sum = lat.count, total
            s.cps.append(cps)
            s.rtt.append(rtt)
            s.state.append(d.state_letters()[0])
        for key in [k for k in self.series if k not in seen]:
            del self.series[key]


# ------------------------------------------------------------------ the page


def _static(path: str) -> Response:
    name, content_type = STATIC[path]
    body = resources.files("gdispatch.web").joinpath("static", name).read_bytes()
    return Response(200, body, content_type, headers=list(SECURITY_HEADERS))


@route("GET", "/")
def index(app: Any, request: Request) -> Response:
    return _static("/")


@route("GET", "/status.js")
def script(app: Any, request: Request) -> Response:
    return _static("/status.js")


@route("GET", "/status.css")
def style(app: Any, request: Request) -> Response:
    return _static("/status.css")


def _json(status: int, value: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, json.dumps(value).encode(), "application/json",
                    headers=[*SECURITY_HEADERS, *(headers or [])])


def _destination(d, sampler: Sampler | None, counters: dict[str, int]) -> dict[str, Any]:
    s = sampler.series.get(identity(d)) if sampler is not None else None
    lat = d.probe.latency if d.probe is not None else None
    return {
        "idx": d.index, "uri": d.uri, "flags": d.state_letters(), "priority": d.priority, "duid": d.duid,
        "description": d.description, "attrs": d.attrs, "reason": "" if d.usable else d.unusable,
        "load": d.load + d.load_elsewhere,
        "latency": lat.as_dict() if lat is not None else None,
        "calls": {"sent": counters["CALLS_SENT"], "answered": counters["CALLS_ANSWERED"],
                  "failed": counters["CALLS_FAILED"]},
        "cps": list(s.cps) if s is not None else [],
        "rtt": list(s.rtt) if s is not None else [],
        "state": list(s.state) if s is not None else [],
    }


def status(app: Any) -> dict[str, Any]:
    """What GET /api/status answers (see the module's docstring)."""
    dlist = app.current_list()
    web = getattr(app, "web", None)
    sampler: Sampler | None = getattr(web, "sampler", None)
    others = app.cluster.merge_stats({})
    counters = app.proxy.call_counts.summed
    sets = [{"id": setid, "destinations": [_destination(d, sampler, counters(d, others))
                                           for d in dlist.sets[setid].destinations]}
            for setid in kamailio_set_order(list(dlist.sets))]
    now = time.time()
    return {
        "version": __version__,
        "now": now,
        "uptime": int(now - app.started_at),
        "writable": bool(app.config.http.token),
        "ping_active": bool(app.ping_active),
        "sample_interval": sampler.interval if sampler is not None else None,
        "window": sampler.window if sampler is not None else None,
        "samples": list(sampler.times) if sampler is not None else [],
        "sets": sets,
        "changes": list(app.changes.entries),
    }


@route("GET", "/api/status")
def get_status(app: Any, request: Request) -> Response:
    return _json(200, status(app))


@route("POST", "/api/state")
def post_state(app: Any, request: Request) -> Response:
    """{"set": N, "idx": I, "uri": URI, "state": "dx"} → ``dispatcher.set_state STATE N
    idx=I``, refused unless the destination at I still has URI (the list may have been
    reloaded since the page showed it)."""
    token = app.config.http.token
    if not token:
        return _json(403, {"error": "read-only: [http] token is not set"})
    if not authorized(request, token):
        log.warning("http %s: POST /api/state refused: no or wrong bearer token", request.remote)
        return _json(401, {"error": "a valid bearer token is needed"},
                     headers=[("WWW-Authenticate", 'Bearer realm="gdispatch"')])
    try:
        body = json.loads(request.body)
        setid, idx, uri, state = body["set"], body["idx"], body["uri"], body["state"]
        if not (isinstance(setid, int) and isinstance(idx, int) and isinstance(uri, str)
                and isinstance(state, str)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _json(400, {"error": 'expected {"set": N, "idx": I, "uri": "sip:...", "state": "dx"}'})
    dset = app.current_list().get(setid)
    if dset is None or not 0 <= idx < len(dset.destinations) or dset.destinations[idx].uri != uri:
        return _json(409, {"error": f"set {setid} has no {uri} at index {idx} (the list changed?)"})
    try:
        result = call(app, "dispatcher.set_state", [state, setid, f"idx={idx}"])
    except RpcError as e:
        return _json(400, {"error": e.message, "detail": e.data})
    dest = dset.destinations[idx]
    log.info("http %s: dispatcher.set_state %s %d idx=%d (%s): %s", request.remote, state, setid, idx, uri,
             dest.state_letters())
    return _json(200, {"result": result, "flags": dest.state_letters()})
