"""The Prometheus metrics at GET /metrics, written by Prometheus' own client library
(`prometheus_client`, the ``metrics`` extra; without it /metrics answers 501 saying so).

Nothing here runs on the SIP path. A scrape reads what the process keeps anyway into a
`Snapshot`: `App.stats()` (every worker's counters summed, the destinations with their
states and INVITE counters), `App.metrics()` (the labelled counters and histograms of
gdispatch.measures, every worker's summed: with several workers, each worker's figures
are those of its last report, at most a second old) and the reload counters of the App.
`Collector` builds the metric families from the snapshot, and the library writes them,
in a thread (see `metrics`). The names follow Prometheus' naming guide: the prefix
``gdispatch_``, ``_total`` at the end of a counter, times in seconds; a counter of
``stats`` keeps the key's name (but for `RENAMED`). The README's "Prometheus" section
lists them.

The answer is the text format, or OpenMetrics when the scraper asks for it (``Accept``).
/metrics needs no token: it changes nothing (as `[http] token` guards what does); an
operator keeps it from others by the address `[http] listen` binds.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gevent

from gdispatch.measures import INVITE_BUCKETS, PING_BUCKETS, Samples, cumulative
from gdispatch.web.server import Request, Response, route

try:
    from prometheus_client import core as _core
    from prometheus_client import exposition as _exposition
except ImportError:  # the metrics extra is not installed: /metrics says so
    _core = None  # type: ignore[assignment]

INSTALL_HINT = b"the Prometheus metrics need the prometheus_client package: pip install gdispatch[metrics]\n"

# Counters of `stats` (gdispatch.app.App.stats): key -> help. The metric is
# gdispatch_<key>_total (gdispatch_<RENAMED[key]>_total when the key alone would
# mislead); a key a process does not have (no TLS listener, no flood limit) reads 0.
RENAMED = {"responses": "responses_received"}
COUNTERS = {
    "responses": "Responses received from downstream.",
    "retransmissions_absorbed": "Retransmitted requests absorbed by their server transaction.",
    "bad_messages_dropped": "Messages dropped unparsable or unusable.",
    "bad_requests_answered": "Malformed requests answered with an error.",
    "dispatched": "Requests dispatched to the destinations of a set.",
    "failovers": "Requests tried on the next destination after one failed.",
    "no_destination": "Requests refused as their set had no usable destination.",
    "local_replies": "Requests answered by gdispatch (refusals, OPTIONS to itself, CANCEL).",
    "stray_responses": "Responses that matched no transaction.",
    "overload_rejected": "New calls refused with 503 past capacity ([overload]).",
    "in_dialog_refused": "Requests inside a dialog refused as forged (no valid signature of ours).",
    "flood_dropped": "Messages dropped from a source banned for flooding.",
    "flood_bans": "Sources banned for flooding ([flood] source_rate).",
    "tcp_refused_max_connections": "TCP connections refused at [tcp] max_connections.",
    "tcp_refused_per_source": "TCP connections refused at [tcp] max_connections_per_source.",
    "tcp_refused_banned": "TCP connections refused from a source banned for flooding.",
    "tcp_closed_idle": "TCP connections closed idle.",
    "tcp_closed_slow": "TCP connections closed for a message not complete in time.",
    "tcp_oversized": "TCP connections closed for a message too large.",
    "bad_stream": "TCP connections closed for a stream that cannot be framed.",
    "tcp_evicted": "Idle TCP connections closed to open one to a destination.",
    "tcp_accept_failures": "TCP accepts that failed (out of descriptors or buffers).",
    "tls_handshakes": "TLS handshakes that succeeded.",
    "tls_handshake_failures": "TLS handshakes that failed (timeouts included).",
    "tls_handshake_timeouts": "TLS handshakes not over within [tls] handshake_timeout.",
    "tls_reloads": "Reloads of the [tls] certificates and keys that succeeded.",
    "tls_reload_failures": "Reloads of the [tls] certificates and keys that failed.",
    "udp_send_dropped": "Datagrams dropped as the socket's send buffer was full.",
    "relayed_to_other_workers": "Datagrams relayed to the worker that owns their call.",
    "relay_dropped": "Datagrams the relay between workers dropped.",
}

# Gauges of `stats`: key -> (metric name, help).
GAUGES = {
    "server_transactions": ("gdispatch_server_transactions", "Server transactions held."),
    "client_transactions": ("gdispatch_client_transactions", "Client transactions held."),
    "calls_in_progress": ("gdispatch_calls_in_progress", "Forwarded requests waiting for their final response."),
    "active_calls": ("gdispatch_active_calls", "Dispatched calls set up or being set up (algorithm 10's count)."),
    "banned_sources": ("gdispatch_flood_banned_sources", "Sources banned for flooding now."),
    "tcp_connections_open": ("gdispatch_tcp_connections_open", "TCP and TLS connections open."),
}

# What `stats` has that is no metric of its own: the requests (by method from
# App.metrics), the workers (below), the plugins (App.metrics), the destinations (below).
NOT_COUNTERS = frozenset({"requests", "workers", "workers_ready", "kernel_steering", "dispatched_by_worker",
                          "plugin_errors", "plugin_slow_calls", "destinations"})

STATES = {"A": "active", "I": "inactive", "D": "disabled", "T": "trying"}


@route("GET", "/metrics")
def metrics(app: Any, request: Request) -> Response:
    if _core is None:
        return Response(501, INSTALL_HINT)
    snapshot = Snapshot.of(app)
    encode, content_type = _exposition.choose_encoder(request.headers.get("accept", ""))
    registry = _core.CollectorRegistry(auto_describe=False)
    registry.register(Collector(snapshot))
    # Built and written in a thread of gevent's pool: a list of hundreds of destinations
    # takes tens of milliseconds to write, which would hold up the SIP messages that
    # arrive meanwhile; in a thread, the interpreter hands back to them every few ms.
    body = gevent.get_hub().threadpool.apply(encode, (registry,))
    return Response(200, body, content_type)


@dataclass
class Snapshot:
    """What the metrics are built from, read from the running `app` at once (in the
    greenlet that scrapes: nothing changes meanwhile); new objects only, which the
    thread that writes the metrics reads while the proxy goes on."""

    stats: dict
    samples: Samples
    estimates: dict[tuple, float | None]  # (set, URI, duid) -> latency estimate in ms
    reloads: dict[str, int]
    last_reload: tuple[float, bool] | None
    started_at: float
    version: str

    @classmethod
    def of(cls, app: Any) -> Snapshot:
        """`app`: gdispatch.app.App, or anything with its `stats`, `metrics`,
        `current_list`, `changes` (gdispatch.web.status.Changes), `started_at`, `version`."""
        return cls(app.stats(), app.metrics(),
                   {(d.setid, d.uri, d.duid): d.latency_est_ms for d in app.current_list().destinations()},
                   dict(app.changes.reloads), app.changes.last_reload, app.started_at, app.version)


class Collector:
    """A prometheus_client collector of a `Snapshot`: every family built when collected."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot

    def describe(self) -> list:
        return []  # registered without a collection: the families are built per scrape

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
            SummaryMetricFamily,
        )

        snap = self.snapshot
        stats = snap.stats
        samples = snap.samples

        yield InfoMetricFamily("gdispatch_build", "The running gdispatch.",
                               value={"version": snap.version, "python": platform.python_version()})
        yield GaugeMetricFamily("gdispatch_start_time_seconds", "When gdispatch started, since the epoch.",
                                value=snap.started_at)
        yield GaugeMetricFamily("gdispatch_workers", "Worker processes configured.", value=stats.get("workers", 1))
        yield GaugeMetricFamily("gdispatch_workers_ready", "Worker processes serving.",
                                value=stats.get("workers_ready", 1))

        requests = CounterMetricFamily("gdispatch_requests_received_total", "Requests received, by method "
                                       "(other: a method outside RFC 3261 and its extensions).", labels=["method"])
        responses = CounterMetricFamily(
            "gdispatch_responses_sent_total", "Responses sent upstream, by origin (local: made by gdispatch; "
            "relayed: passed on from downstream) and status class; retransmissions not counted.",
            labels=["origin", "class"])
        plugin_errors = CounterMetricFamily("gdispatch_plugin_errors_total", "Exceptions raised by a plugin's hooks.",
                                            labels=["plugin"])
        plugin_slow = CounterMetricFamily("gdispatch_plugin_slow_calls_total",
                                          "Calls of a plugin's hooks over the time budget.", labels=["plugin"])
        hooks = SummaryMetricFamily("gdispatch_plugin_hook_duration_seconds", "Time in a plugin's hook.",
                                    labels=["plugin", "hook"])
        hook_seconds = {key[1:]: v for key, v in samples.items() if key[0] == "hook_seconds"}
        for key, value in sorted(samples.items(), key=lambda kv: tuple(map(str, kv[0]))):
            kind = key[0]
            if kind == "requests":
                requests.add_metric([key[1]], value)
            elif kind == "responses":
                responses.add_metric([key[1], key[2]], value)
            elif kind == "plugin_errors":
                plugin_errors.add_metric([key[1]], value)
            elif kind == "plugin_slow":
                plugin_slow.add_metric([key[1]], value)
            elif kind == "hook_calls":
                hooks.add_metric([key[1], key[2]], count_value=int(value), sum_value=hook_seconds.get(key[1:], 0.0))
        yield from (requests, responses)

        for stat, text in COUNTERS.items():
            yield CounterMetricFamily(f"gdispatch_{RENAMED.get(stat, stat)}_total", text, value=stats.get(stat, 0))
        for stat, (name, text) in GAUGES.items():
            yield GaugeMetricFamily(name, text, value=stats.get(stat, 0))

        buckets, total = cumulative(samples, "invite_final", INVITE_BUCKETS)
        yield HistogramMetricFamily(
            "gdispatch_invite_final_response_duration_seconds",
            "Time from a dispatched INVITE to the final response sent upstream.", buckets=buckets, sum_value=total)
        buckets, total = cumulative(samples, "ping", PING_BUCKETS)
        yield HistogramMetricFamily("gdispatch_ping_round_trip_seconds",
                                    "Time from a keepalive ping to its reply.", buckets=buckets, sum_value=total)

        yield from self._destinations(stats, GaugeMetricFamily, CounterMetricFamily)
        yield from (plugin_errors, plugin_slow, hooks)
        yield from self._reloads(GaugeMetricFamily, CounterMetricFamily)

    def _destinations(self, stats: dict, Gauge: Any, Counter: Any) -> Iterator[Any]:
        labels = ["set", "uri", "duid"]
        state = Gauge("gdispatch_destination_state", "A destination's state: 1 for the state it is in "
                      "(active, inactive, disabled, trying), 0 for the others.", labels=[*labels, "state"])
        probing = Gauge("gdispatch_destination_probing", "1 when the destination is in probing mode (P).",
                        labels=labels)
        active = Gauge("gdispatch_destination_active_calls", "Calls on a destination (algorithm 10's load).",
                       labels=labels)
        latency = Gauge("gdispatch_destination_latency_seconds",
                        "A destination's estimated ping round trip (algorithm 11).", labels=labels)
        sent = Counter("gdispatch_destination_calls_sent_total", "INVITEs sent to a destination.", labels=labels)
        answered = Counter("gdispatch_destination_calls_answered_total", "INVITEs a destination answered 2xx.",
                           labels=labels)
        failed = Counter("gdispatch_destination_calls_failed_total",
                         "INVITEs that failed on a destination (final >= 300 or no answer).", labels=labels)
        estimates = self.snapshot.estimates
        for d in stats.get("destinations", ()):
            values = [str(d["SET"]), d["URI"], d["DUID"] or ""]
            flags = d["FLAGS"]
            for letter, name in STATES.items():
                state.add_metric([*values, name], 1 if flags[:1] == letter else 0)
            probing.add_metric(values, 1 if flags[1:2] == "P" else 0)
            active.add_metric(values, d["ACTIVE_CALLS"])
            ms = estimates.get((d["SET"], d["URI"], d["DUID"]))
            if ms is not None:
                latency.add_metric(values, ms / 1000.0)
            sent.add_metric(values, d["CALLS_SENT"])
            answered.add_metric(values, d["CALLS_ANSWERED"])
            failed.add_metric(values, d["CALLS_FAILED"])
        yield from (state, probing, active, latency, sent, answered, failed)

    def _reloads(self, Gauge: Any, Counter: Any) -> Iterator[Any]:
        snap = self.snapshot
        reloads = Counter("gdispatch_reloads_total", "Reloads of the list file, by result.", labels=["result"])
        for result in ("ok", "failed"):
            reloads.add_metric([result], snap.reloads[result])
        yield reloads
        when, ok = snap.last_reload or (0.0, True)
        yield Gauge("gdispatch_last_reload_timestamp_seconds",
                    "When the last reload of the list file ended, since the epoch (0: none yet).", value=when)
        yield Gauge("gdispatch_last_reload_successful", "1 when the last reload of the list file (if any) "
                    "succeeded, 0 when it failed (the running list stayed).", value=1 if ok else 0)
