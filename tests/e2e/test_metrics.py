"""The Prometheus metrics at GET /metrics on the `[http]` listener, end to end: calls of
a SIPp caller through gdispatch to two SIPp gateways, then a real scrape over HTTP read
by Prometheus' own parser (prometheus_client.parser): the calls counted by method, per
destination and in the INVITE histogram, the destinations' states as the operator sets
them, the reloads; with two workers, every worker's figures summed by the primary."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import gdispatch
from tests.support.wait import wait_for

from . import harness

HOST = "127.0.0.1"
HIST = "gdispatch_invite_final_response_duration_seconds"


def scrape(port: int) -> dict:
    """(sample name, sorted label items) -> value, from GET /metrics."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def dest(duid: str, uri: str) -> tuple:
    return (("duid", duid), ("set", "1"), ("uri", uri))


def per_destination(v: dict, name: str) -> dict[str, float]:
    """duid -> value of metric `name` for each destination."""
    return {dict(labels)["duid"]: value for (n, labels), value in v.items() if n == name}


@pytest.fixture(scope="module")
def gateways(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateways")
    started = [harness.Uas(tmp, "uas_ok.xml", name=f"uas{i}", time_limit_s=120) for i in (1, 2)]
    try:
        yield [g.start() for g in started]
    finally:
        for g in started:
            g.stop(grace_s=1.0)


def start_proxy(tmp, gateways, workers: int) -> tuple[harness.Proxy, int]:
    """gdispatch with its [http] listener in front of the gateways, and a third
    destination disabled in the list; returns it and the HTTP port."""
    http = harness.free_port("tcp")
    text = harness.dispatcher_list(*gateways) + f"1 sip:{HOST}:{harness.free_port()} 4 0 duid=gw3\n"
    p = harness.Proxy(tmp, text, f'[http]\nlisten = "{HOST}:{http}"\n', args=["--workers", str(workers)])
    return p.start(), http


@pytest.fixture(scope="module")
def single(tmp_path_factory, gateways):
    p, http = start_proxy(tmp_path_factory.mktemp("single"), gateways, 1)
    try:
        yield p, http
    finally:
        p.stop()


def test_the_calls_are_counted(single, gateways, tmp_path):
    p, http = single
    res = harness.run_uac(f"{HOST}:{p.port}", calls=10, rate=50, timeout_s=20, workdir=tmp_path / "uac")
    assert (res.successful, res.failed) == (10, 0), res
    v = wait_for(lambda: (lambda v: v[(f"{HIST}_count", ())] == 10 and v)(scrape(http)), 5,
                 message=lambda: scrape(http))
    for method in ("INVITE", "ACK", "BYE"):
        assert v[("gdispatch_requests_received_total", (("method", method),))] == 10, method
    assert v[("gdispatch_dispatched_total", ())] == 10
    # The 200 of each INVITE and of each BYE passed on; a 100 Trying made for each INVITE.
    assert v[("gdispatch_responses_sent_total", (("class", "2xx"), ("origin", "relayed")))] == 20
    assert v[("gdispatch_responses_sent_total", (("class", "1xx"), ("origin", "local")))] == 10
    assert v[(f"{HIST}_bucket", (("le", "+Inf"),))] == 10 and v[(f"{HIST}_sum", ())] > 0
    sent = per_destination(v, "gdispatch_destination_calls_sent_total")
    assert sent["gw1"] + sent["gw2"] == 10 and sent["gw3"] == 0, sent
    assert sum(per_destination(v, "gdispatch_destination_calls_answered_total").values()) == 10
    assert sum(per_destination(v, "gdispatch_destination_calls_failed_total").values()) == 0
    assert v[("gdispatch_calls_in_progress", ())] == 0
    build = [dict(labels) for (n, labels), value in v.items() if n == "gdispatch_build_info" and value == 1]
    assert [b["version"] for b in build] == [gdispatch.__version__], build


def states(v: dict) -> dict[str, set[str]]:
    """duid -> the states gdispatch_destination_state is 1 for."""
    out: dict[str, set[str]] = {}
    for (name, labels), value in v.items():
        if name == "gdispatch_destination_state":
            labels = dict(labels)
            out.setdefault(labels["duid"], set())
            if value == 1:
                out[labels["duid"]].add(labels["state"])
    return out


def test_the_destinations_states_are_read_at_each_scrape(single, gateways):
    p, http = single
    gw2 = gateways[1].uri
    assert states(scrape(http)) == {"gw1": {"active"}, "gw2": {"active"}, "gw3": {"disabled"}}
    out = p.rpc("dispatcher.set_state", "ip", "1", gw2)
    assert out.returncode == 0, out.stderr
    v = scrape(http)
    assert states(v) == {"gw1": {"active"}, "gw2": {"inactive"}, "gw3": {"disabled"}}
    assert v[("gdispatch_destination_probing", dest("gw2", gw2))] == 1
    assert p.rpc("dispatcher.set_state", "a", "1", gw2).returncode == 0


def test_the_reloads_are_counted_with_their_result(single):
    p, http = single
    v = scrape(http)
    assert v[("gdispatch_reloads_total", (("result", "ok"),))] == 0
    assert v[("gdispatch_last_reload_timestamp_seconds", ())] == 0
    out = p.rpc("dispatcher.reload")
    assert "successfully reloaded" in out.stdout, out
    v = scrape(http)
    assert v[("gdispatch_reloads_total", (("result", "ok"),))] == 1
    assert v[("gdispatch_last_reload_timestamp_seconds", ())] > 0 and v[("gdispatch_last_reload_successful", ())] == 1
    good = p.list_path.read_text()
    p.list_path.write_text("1 not a destination\n")
    try:
        out = p.rpc("dispatcher.reload")
        assert "Reload Failed" in out.stdout + out.stderr, out
    finally:
        p.list_path.write_text(good)
    v = scrape(http)
    assert v[("gdispatch_reloads_total", (("result", "failed"),))] == 1
    assert v[("gdispatch_last_reload_successful", ())] == 0


def test_two_workers_are_summed_by_the_primary(gateways, tmp_path):
    p, http = start_proxy(tmp_path / "proxy", gateways, 2)
    try:
        res = harness.run_uac(f"{HOST}:{p.port}", calls=20, rate=50, timeout_s=20, workdir=tmp_path / "uac")
        assert (res.successful, res.failed) == (20, 0), res
        # One caller's calls are owned by both workers (by Call-ID): 20 here needs the
        # other worker's report (every second) added to the primary's own.
        v = wait_for(lambda: (lambda v: v[(f"{HIST}_count", ())] == 20
                              and v[("gdispatch_requests_received_total", (("method", "BYE"),))] == 20
                              and v)(scrape(http)), 5, message=lambda: scrape(http))
        assert v[("gdispatch_workers", ())] == 2 and v[("gdispatch_workers_ready", ())] == 2
        assert v[("gdispatch_requests_received_total", (("method", "INVITE"),))] == 20
        assert v[("gdispatch_dispatched_total", ())] == 20
        assert v[(f"{HIST}_bucket", (("le", "+Inf"),))] == 20
        assert v[("gdispatch_responses_sent_total", (("class", "2xx"), ("origin", "relayed")))] == 40
        sent = per_destination(v, "gdispatch_destination_calls_sent_total")
        assert sent["gw1"] + sent["gw2"] == 20, sent
        assert sum(per_destination(v, "gdispatch_destination_calls_answered_total").values()) == 20
    finally:
        p.stop()
