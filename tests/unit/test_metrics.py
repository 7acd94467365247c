"""The Prometheus metrics: what the proxy counts for them (gdispatch.measures and the
counters of gdispatch.proxy), how the workers' samples add up, and the /metrics route
with its collector (gdispatch.web.metrics) on a fake application."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families
from proxy_fakes import UAC, FakeProxy, full_call, invite

from gdispatch.cluster.channel import Report
from gdispatch.cluster.roles import Primary
from gdispatch.config import Config
from gdispatch.measures import INVITE_BUCKETS, Histogram, add_samples, cumulative, samples
from gdispatch.net.tcp import TCP_COUNTERS
from gdispatch.net.tls import TLS_COUNTERS
from gdispatch.plugins import PluginHost
from gdispatch.sip import build_response, parse_message
from gdispatch.web import metrics as web_metrics
from gdispatch.web.server import Request, serve
from tests.support import sipmsg


def test_a_histogram_counts_a_value_on_a_bound_in_that_bucket():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    assert h.counts == [2, 2, 1] and h.count == 5 and h.sum == 8.65
    out: dict = {}
    h.flatten("x", out)
    assert cumulative(out, "x", (0.1, 1.0)) == ([("0.1", 2), ("1.0", 4), ("+Inf", 5)], 8.65)


def test_the_workers_samples_add_up_key_by_key():
    a = {("requests", "INVITE"): 3, ("x", "bucket", 0): 1, ("x", "sum"): 0.5}
    add_samples(a, {("requests", "INVITE"): 2, ("requests", "BYE"): 1, ("x", "sum"): 0.25})
    assert a == {("requests", "INVITE"): 5, ("requests", "BYE"): 1, ("x", "bucket", 0): 1, ("x", "sum"): 0.75}


def test_the_primary_adds_the_workers_reports_to_its_own_samples():
    role = Primary(Config(workers=3))
    role._from_worker(1, Report({}, {}, {}, metrics={("requests", "INVITE"): 4}))
    role._from_worker(2, Report({}, {}, {}, metrics={("requests", "INVITE"): 6, ("invite_final", "count"): 6}))
    out = {("requests", "INVITE"): 1, ("invite_final", "count"): 1}
    role.merge_metrics(out)
    assert out == {("requests", "INVITE"): 11, ("invite_final", "count"): 7}


def test_the_proxy_counts_requests_by_method_and_responses_by_origin_and_class():
    fp = FakeProxy()
    for n in range(3):
        full_call(fp, n)
    fp.receive(sipmsg.request("FROB", "sip:service@127.0.0.1:5060", vias="SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-f",
                              from_="<sip:a@127.0.0.1>", from_tag="f", to="<sip:service@127.0.0.1>",
                              call_id="frob@x"), UAC)
    looped = invite(9).replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    fp.receive(looped, UAC)  # 483, answered here without a transaction
    proxy = fp.proxy
    got = samples(proxy, PluginHost())
    assert {k[1]: v for k, v in got.items() if k[0] == "requests"} == {"INVITE": 4, "ACK": 3, "BYE": 3, "other": 1}
    responses = {k[1:]: v for k, v in got.items() if k[0] == "responses"}
    # 100 Trying made here for each INVITE; 180, 200 and the BYE's 200 passed on; the
    # FROB and the looped INVITE refused here.
    assert responses == {("local", "1xx"): 3, ("local", "4xx"): 2, ("relayed", "1xx"): 3, ("relayed", "2xx"): 6}
    # Only the dispatched INVITEs are timed; none of the calls took any time on the fake clock.
    assert got[("invite_final", "count")] == 3 and got[("invite_final", "bucket", 0)] == 3


def test_a_dispatched_invite_is_timed_until_its_final_goes_upstream():
    fp = FakeProxy("1 sip:127.0.0.1:5071 0 0\n")
    out = fp.receive(invite(1), UAC)
    gateway, data = next((a, d) for a, d in out if d.startswith(b"INVITE"))
    request = parse_message(data)
    fp.receive(build_response(request, 180, "Ringing", to_tag="x"), gateway)  # no fr_timer from here
    fp.advance(2.0)
    times = fp.proxy.invite_times
    assert times.count == 0
    out = fp.receive(build_response(request, 486, "Busy Here", to_tag="x"), gateway)
    assert [d.split(b"\r\n", 1)[0] for a, d in out if a == UAC] == [b"SIP/2.0 486 Busy Here"]
    assert times.count == 1 and times.sum == 2.0
    got = samples(fp.proxy, PluginHost())
    buckets = dict(cumulative(got, "invite_final", INVITE_BUCKETS)[0])
    assert buckets["1.0"] == 0 and buckets["2.5"] == 1
    assert got[("responses", "relayed", "4xx")] == 1


def test_every_counter_of_stats_has_a_metric():
    """A counter added to the proxy or the transports gets a metric or is said to be none."""
    proxy = FakeProxy().proxy
    known = set(web_metrics.COUNTERS) | set(web_metrics.GAUGES) | web_metrics.NOT_COUNTERS
    missing = (set(proxy.stats) | set(TCP_COUNTERS) | set(TLS_COUNTERS)) - known
    assert not missing, f"add these to gdispatch.web.metrics COUNTERS or GAUGES: {sorted(missing)}"


class FakeApp:
    version = "9.9"
    started_at = 1700000000.0

    def __init__(self, stats=None, metrics=None):
        self.changes = types.SimpleNamespace(reloads={"ok": 2, "failed": 1}, last_reload=(1700000500.0, False))
        self._stats = {"dispatched": 7, "responses": 5, "server_transactions": 3, "destinations": [
            {"SET": 1, "URI": "sip:a", "DUID": "gw1", "FLAGS": "AP", "ACTIVE_CALLS": 2, "CALLS_SENT": 5,
             "CALLS_ANSWERED": 4, "CALLS_FAILED": 1},
            {"SET": 2, "URI": "sip:b", "DUID": "", "FLAGS": "IX", "ACTIVE_CALLS": 0, "CALLS_SENT": 0,
             "CALLS_ANSWERED": 0, "CALLS_FAILED": 0}]} if stats is None else stats
        h = Histogram(INVITE_BUCKETS)
        for v in (0.02, 0.3, 0.3):
            h.observe(v)
        self._metrics: dict = {("requests", "INVITE"): 7, ("responses", "relayed", "2xx"): 6,
                               ("plugin_errors", "p"): 2, ("hook_calls", "p", "gdispatch_response"): 4,
                               ("hook_seconds", "p", "gdispatch_response"): 0.5}
        h.flatten("invite_final", self._metrics)

    def stats(self):
        return self._stats

    def metrics(self):
        return dict(self._metrics)

    def current_list(self):
        return SimpleNamespace(destinations=lambda: [SimpleNamespace(setid=1, uri="sip:a", duid="gw1",
                                                                     latency_est_ms=12.0)])


def scrape(app, accept: str = "") -> tuple[int, str, str]:
    response = serve(app, Request("GET", "/metrics", {}, {"accept": accept} if accept else {}, b""))
    return response.status, response.content_type, response.body.decode()


def values(text: str) -> dict:
    """(sample name, sorted label items) -> value, of every sample of an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_collector_writes_what_the_app_keeps():
    status, content_type, text = scrape(FakeApp())
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    v = values(text)
    assert v[("gdispatch_build_info", (("python", sys.version.split()[0]), ("version", "9.9")))] == 1
    assert v[("gdispatch_dispatched_total", ())] == 7
    assert v[("gdispatch_responses_received_total", ())] == 5
    assert v[("gdispatch_tls_handshake_failures_total", ())] == 0  # a key the process does not have
    assert v[("gdispatch_server_transactions", ())] == 3
    assert v[("gdispatch_requests_received_total", (("method", "INVITE"),))] == 7
    assert v[("gdispatch_responses_sent_total", (("class", "2xx"), ("origin", "relayed")))] == 6
    a = (("duid", "gw1"), ("set", "1"), ("uri", "sip:a"))
    b = (("duid", ""), ("set", "2"), ("uri", "sip:b"))
    assert v[("gdispatch_destination_state", (*a[:2], ("state", "active"), a[2]))] == 1
    assert v[("gdispatch_destination_state", (*a[:2], ("state", "inactive"), a[2]))] == 0
    assert v[("gdispatch_destination_state", (*b[:2], ("state", "inactive"), b[2]))] == 1
    assert v[("gdispatch_destination_probing", a)] == 1 and v[("gdispatch_destination_probing", b)] == 0
    assert v[("gdispatch_destination_calls_sent_total", a)] == 5
    assert v[("gdispatch_destination_calls_answered_total", a)] == 4
    assert v[("gdispatch_destination_calls_failed_total", a)] == 1
    assert v[("gdispatch_destination_active_calls", a)] == 2
    assert v[("gdispatch_destination_latency_seconds", a)] == 0.012
    assert ("gdispatch_destination_latency_seconds", b) not in v  # never pinged: no estimate
    hist = "gdispatch_invite_final_response_duration_seconds"
    assert v[(f"{hist}_count", ())] == 3 and abs(v[(f"{hist}_sum", ())] - 0.62) < 1e-9
    assert v[(f"{hist}_bucket", (("le", "0.025"),))] == 1 and v[(f"{hist}_bucket", (("le", "0.5"),))] == 3
    assert v[("gdispatch_ping_round_trip_seconds_count", ())] == 0
    assert v[("gdispatch_plugin_errors_total", (("plugin", "p"),))] == 2
    hook = (("hook", "gdispatch_response"), ("plugin", "p"))
    assert v[("gdispatch_plugin_hook_duration_seconds_count", hook)] == 4
    assert v[("gdispatch_plugin_hook_duration_seconds_sum", hook)] == 0.5
    assert v[("gdispatch_reloads_total", (("result", "ok"),))] == 2
    assert v[("gdispatch_reloads_total", (("result", "failed"),))] == 1
    assert v[("gdispatch_last_reload_timestamp_seconds", ())] == 1700000500.0
    assert v[("gdispatch_last_reload_successful", ())] == 0
    assert v[("gdispatch_workers", ())] == 1


def test_openmetrics_when_the_scraper_asks_for_it():
    status, content_type, text = scrape(FakeApp(), "application/openmetrics-text; version=1.0.0")
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")


def test_without_prometheus_client_the_route_says_what_to_install(monkeypatch):
    monkeypatch.setattr(web_metrics, "_core", None)  # what a failed import of it leaves
    status, _, text = scrape(FakeApp())
    assert status == 501 and "pip install gdispatch[metrics]" in text
