"""gdispatch.web.status without a browser: the ring buffer of changes and the sampler stay
bounded, calls/s and round-trips are per sample, the page's files are package data with
a policy that runs no inline script, and POST /api/state changes a state only with the
token (the same path as ``dispatcher.set_state``)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from gdispatch.dispatcher.listfile import parse_list
from gdispatch.probing.policy import ProbeState
from gdispatch.web import status
from gdispatch.web.server import Request, serve

TOKEN = "t0ken"
LIST = "1 sip:127.0.0.1:5071 0 0 duid=a # <b>Carrier</b>\n1 sip:127.0.0.1:5072\n2 sip:127.0.0.1:5073\n"


def _resolved(dlist):
    """`dlist` as the App has it: addresses resolved, probe states attached."""
    for i, d in enumerate(dlist.destinations()):
        d.address = (d.sip_uri.host, d.sip_uri.port or 5060)
        d.probe = ProbeState(str(i))
    return dlist


class CallCounters:
    def __init__(self):
        self.sent: dict[str, int] = {}

    def summed(self, dest, others=()):
        return {"CALLS_SENT": self.sent.get(dest.uri, 0), "CALLS_ANSWERED": 0, "CALLS_FAILED": 0}


class Proxy:
    def __init__(self):
        self.call_counts = CallCounters()
        self.sent = self.call_counts.sent


class App:
    """What the status routes read of gdispatch.app.App, and the ControlApi that
    ``dispatcher.set_state`` needs."""

    version = "0"
    sockets = None
    ping_active = True
    call_load_routing = False

    def __init__(self, token: str = TOKEN, text: str = LIST):
        self.dlist = _resolved(parse_list(text, "t.list"))
        self.config = SimpleNamespace(http=SimpleNamespace(token=token))
        self.proxy = Proxy()
        self.cluster = SimpleNamespace(merge_stats=lambda out: [])
        self.changes = status.Changes()
        self.started_at = 0.0
        self.web = None
        self.notified: list[tuple] = []

    def current_list(self):
        return self.dlist

    def state_changed(self, dest, old_flags, reason):
        self.notified.append((dest.uri, dest.state_letters(old_flags), dest.state_letters(), reason))


def _request(method: str, path: str, body: object = b"", token: str | None = None) -> Request:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Request(method, path, {}, headers, data, "127.0.0.1")


def test_changes_keep_the_last_ones_and_skip_first_reports():
    clock = iter(range(1000))
    changes = status.Changes(size=3, clock=lambda: next(clock))
    dest = App().dlist.get(1).destinations[0]
    changes.state(dest, None, "AP", "initial state")  # the prober took it on: no change
    changes.state(dest, "AP", "AP", "same")
    for i in range(4):
        changes.state(dest, "AP", "IP", "x" * 500 if i == 3 else f"down {i}")
    changes.reload("SIGHUP", "1 kept")
    entries = list(changes.entries)
    assert len(entries) == 3
    assert [e["kind"] for e in entries] == ["state", "state", "reload"]
    assert entries[0]["reason"] == "down 2" and len(entries[1]["reason"]) == status.MAX_TEXT


def test_sampler_measures_each_interval_and_stays_bounded():
    app = App()
    now = [100.0]
    sampler = status.Sampler(app, interval=2, window=10, clock=lambda: now[0])
    a = app.dlist.get(1).destinations[0]
    assert sampler.points == 5
    for i in range(8):
        app.proxy.sent[a.uri] = 10 * i  # 10 calls every 2 s
        if i == 3:
            a.probe.latency.add(4.0, 0.1)
            a.probe.latency.add(6.0, 0.1)
        sampler.sample()
        now[0] += 2
    s = sampler.series[status.identity(a)]
    assert len(sampler.times) == len(s.cps) == len(s.rtt) == 5
    assert list(s.cps) == [5.0] * 5
    assert list(s.rtt) == [5.0, None, None, None, None]  # the mean of the pings answered meanwhile
    assert set(s.state) == {"A"}
    # A destination that leaves the list leaves the sampler; a new one is aligned.
    app.dlist = _resolved(parse_list("1 sip:127.0.0.1:5071 0 0 duid=a\n3 sip:127.0.0.1:5099\n", "t.list"))
    sampler.sample()
    assert len(sampler.series) == 2
    new = sampler.series[status.identity(app.dlist.get(3).destinations[0])]
    assert list(new.cps) == [None] * 5 and len(new.rtt) == 5


def test_the_page_and_its_files_are_served_with_a_strict_policy():
    app = App()
    for path, kind in (("/", "text/html"), ("/status.js", "text/javascript"), ("/status.css", "text/css")):
        r = serve(app, _request("GET", path))
        assert r.status == 200 and r.content_type.startswith(kind) and r.body
        policy = dict(r.headers)["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    # Nothing from another site (the one URL of the script is the SVG namespace's name).
    for path in status.STATIC:
        text = serve(app, _request("GET", path)).body.decode().replace("http://www.w3.org/2000/svg", "")
        assert "://" not in text and "@import" not in text, path


def test_status_json_lists_sets_as_dispatcher_list_does():
    app = App()
    body = json.loads(serve(app, _request("GET", "/api/status")).body)
    assert [s["id"] for s in body["sets"]] == [2, 1]
    a = body["sets"][1]["destinations"][0]
    assert (a["uri"], a["flags"], a["duid"], a["description"]) == ("sip:127.0.0.1:5071", "AX", "a", "<b>Carrier</b>")
    assert body["writable"] is True and body["changes"] == []


def test_state_is_set_only_with_the_token():
    app = App()
    a = app.dlist.get(1).destinations[0]
    want = {"set": 1, "idx": 0, "uri": a.uri, "state": "dx"}
    for token, code in ((None, 401), ("wrong", 401), ("", 401)):
        r = serve(app, _request("POST", "/api/state", want, token))
        assert r.status == code and dict(r.headers).get("WWW-Authenticate", "").startswith("Bearer")
    assert a.state_letters() == "AX" and not app.notified
    # Without [http] token the page is read-only, whatever a request carries.
    ro = App(token="")
    r = serve(ro, _request("POST", "/api/state", want, ""))
    assert r.status == 403 and ro.dlist.get(1).destinations[0].state_letters() == "AX"
    # The list moved on since the page showed it: refused.
    assert serve(app, _request("POST", "/api/state", {**want, "idx": 1}, TOKEN)).status == 409
    assert serve(app, _request("POST", "/api/state", b"{", TOKEN)).status == 400
    assert serve(app, _request("POST", "/api/state", {**want, "state": "zz"}, TOKEN)).status == 400
    r = serve(app, _request("POST", "/api/state", want, TOKEN))
    assert r.status == 200 and json.loads(r.body)["flags"] == "DX"
    assert app.notified == [(a.uri, "AX", "DX", "rpc dispatcher.set_state dx")]
