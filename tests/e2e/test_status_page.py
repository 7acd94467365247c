"""The status page (`[http]`, gdispatch.web.status) in a real headless Chromium: it shows
a gateway going down, changes a state only with the token, and shows the list file's
text as text. One proxy, three SIPp gateways and one browser serve the whole module.

Skipped without Debian's `chromium` and `chromium-driver` (`make test` installs them).
GDISPATCH_SCREENSHOT=docs/status-page.png also writes a screenshot of the page, after a
short SIPp load so that its charts have calls in them.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.wait import wait_for

from . import harness, webdriver

pytestmark = pytest.mark.skipif(not webdriver.available(),
                                reason="no chromium/chromedriver (apt-get install -y chromium chromium-driver)")

HOST = harness.HOST
TOKEN = "page-test-token"
INTERVAL, PING_TIMEOUT, REFRESH = 1.0, 0.5, 0.5  # [probing] and the page's ?refresh=
# What a list file may hold in a description, shown as it is written.
DESCRIPTION = '<img src=x onerror="document.title=1"> <b>bold</b> & "carrier"'
SCREENSHOT = os.environ.get("GDISPATCH_SCREENSHOT", "")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(proxy, {duid: Uas}, page URL) with gw1 and gw2 in set 1, gw3 in set 2."""
    tmp = tmp_path_factory.mktemp("status")
    gws = {f"gw{i}": harness.Uas(tmp, "uas_ok.xml", time_limit_s=120).start() for i in (1, 2, 3)}
    http = harness.free_port("tcp")
    lines = (f"1 {gws['gw1'].uri} 0 0 duid=gw1 # Carrier A, primary\n"
             f"1 {gws['gw2'].uri} 0 0 duid=gw2 # Carrier A, backup\n"
             f"2 {gws['gw3'].uri} 0 0 duid=gw3 # {DESCRIPTION}\n")
    config = (f'[http]\nlisten = "{HOST}:{http}"\ntoken = "{TOKEN}"\n'
              f"[probing]\ninterval = {INTERVAL}\ntimeout = {PING_TIMEOUT}\n"
              "[[route]]\nset = 1\nalgorithm = 4\n")
    proxy = harness.Proxy(tmp / "proxy", lines, config)
    try:
        proxy.start()
        wait_for(lambda: set(proxy.states().values()) == {"AP"}, 5, message=proxy.states)
        yield proxy, gws, f"http://{HOST}:{http}"
    finally:
        proxy.stop()
        for g in gws.values():
            g.stop(grace_s=1.0)


@pytest.fixture(scope="module")
def browser():
    b = webdriver.Browser(harness.free_port("tcp"))
    try:
        yield b
    finally:
        b.quit()


def _post_state(url: str, body: dict, token: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + "/api/state", json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _rows(browser) -> dict[str, dict]:
    """What the page shows, by duid: state letters, description line, and the buttons."""
    return browser.run("""
        const out = {};
        for (const tr of document.querySelectorAll("tr.dest")) {
          out[tr.dataset.duid] = {state: tr.querySelector("td.state").textContent,
                                  meta: tr.querySelector(".meta").textContent,
                                  markup: tr.querySelectorAll(".who *:not(div)").length};
        }
        return out;""")


def _state_on_page(browser, duid: str) -> str:
    return (_rows(browser).get(duid) or {}).get("state", "")


def test_api_refuses_a_state_change_without_the_token(site):
    proxy, _, url = site
    status = json.load(urllib.request.urlopen(url + "/api/status", timeout=5))
    assert [s["id"] for s in status["sets"]] == [2, 1]  # dispatcher.list's order
    gw2 = next(d for s in status["sets"] for d in s["destinations"] if d["duid"] == "gw2")
    assert gw2["flags"] == "AP" and gw2["description"] == "Carrier A, backup" and status["writable"]
    body = {"set": 1, "idx": gw2["idx"], "uri": gw2["uri"], "state": "dx"}
    assert _post_state(url, body, None) == 401
    assert _post_state(url, body, "not-" + TOKEN) == 401
    assert proxy.states()["gw2"] == "AP"


def test_page_shows_a_killed_gateway_go_down(site, browser):
    proxy, gws, url = site
    load = None
    if SCREENSHOT:  # calls in the charts: gw1 dies under load, gw2 takes its calls
        load = threading.Thread(target=harness.run_uac, args=(f"{HOST}:{proxy.port}",),
                                kwargs={"calls": 300, "rate": 30, "timeout_s": 30})
        load.start()
        wait_for(lambda: gws["gw1"].counts()["INVITE"] > 60, 10)
    browser.get(f"{url}/?refresh={REFRESH}")
    wait_for(lambda: _state_on_page(browser, "gw1") == "AP", 5, message=lambda: _rows(browser))
    gws["gw1"].kill()
    # The next ping finds it gone (at most an interval and the ping's timeout), then the
    # next poll of the page shows it; the rest is slack for a busy machine.
    wait_for(lambda: _state_on_page(browser, "gw1") == "IP", INTERVAL + PING_TIMEOUT + REFRESH + 2,
             message=lambda: _rows(browser))
    assert proxy.states()["gw1"] == "IP"
    if load is not None:
        load.join(60)


def test_page_sets_a_state_only_with_the_token(site, browser):
    proxy, _, url = site
    browser.get(f"{url}/?refresh={REFRESH}")
    wait_for(lambda: _state_on_page(browser, "gw2") == "AP", 5, message=lambda: _rows(browser))
    dx = browser.find('tr.dest[data-duid="gw2"] button[data-state="dx"]')
    browser.click(dx)  # no token given yet
    message = wait_for(lambda: browser.text(browser.find("#message")), 5)
    assert "refused (401)" in message
    assert proxy.states()["gw2"] == "AP"
    # The 401 opened the token form: the token typed there is sent from now on.
    browser.type(browser.find("#token-input"), TOKEN)
    browser.click(browser.find("#token-save"))
    browser.click(browser.find('tr.dest[data-duid="gw2"] button[data-state="dx"]'))
    wait_for(lambda: proxy.states()["gw2"] == "DX", 5, message=proxy.states)
    wait_for(lambda: _state_on_page(browser, "gw2") == "DX", 5, message=lambda: _rows(browser))
    assert browser.run("return sessionStorage.getItem('gdispatch-token')") == TOKEN
    changes = browser.run("return document.getElementById('changes').textContent")
    assert "rpc dispatcher.set_state dx" in changes and "IP" in changes
    if SCREENSHOT:
        wait_for(lambda: "now DX" in browser.text(browser.find("#message")), 5)
        path = Path(SCREENSHOT)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(browser.screenshot())


def test_page_shows_the_list_files_text_as_text(site, browser):
    _, _, url = site
    browser.get(f"{url}/")
    row = wait_for(lambda: _rows(browser).get("gw3"), 5)
    assert DESCRIPTION in row["meta"]  # as written, markup characters and all
    assert row["markup"] == 0
    assert browser.run("return document.querySelectorAll('main img, main b').length") == 0
    assert browser.run("return document.title") == "gdispatch status"
