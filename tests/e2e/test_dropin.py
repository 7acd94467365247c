"""A Kamailio operator's list moved over unchanged: calls go where Kamailio sent them.

The same dispatcher.list, the same Call-IDs and the same algorithm, once through Kamailio
(tests/e2e/kamailio.py, the seed tutorial's script) and once through gdispatch with its
default settings: each call must reach the same gateway. Without Kamailio the choices are
compared with Kamailio's, recorded in tests/data/kamailio/selection.json (regenerate it
with GDISPATCH_RECORD_KAMAILIO=1 on a machine with Kamailio).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tests.support.wait import wait_for

from . import harness
from .kamailio import Kamailio, kamailio_path

HOST = harness.HOST
RECORDED = Path(__file__).resolve().parents[1] / "data" / "kamailio" / "selection.json"
CALL_IDS = [f"dropin-{i}@192.0.2.10" for i in range(30)]
# Three gateways of equal priority: Kamailio orders them in reverse file order, and that
# order decides where hashing (0), round robin (4) and priority (8) send a call.
ALGORITHMS = (0, 4, 8)


def _choices(port: int, gateways: list[harness.Answerer]) -> list[int]:
    """Send one INVITE per Call-ID to the proxy on `port`, each after the previous one's
    200, and say which gateway (its line in the list, from 0) received each."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.settimeout(0.2)
    lp = s.getsockname()[1]
    try:
        for cid in CALL_IDS:
            s.sendto(harness.build_request("INVITE", f"sip:1111111@{HOST}:{port}", local_port=lp, call_id=cid),
                     (HOST, port))
            assert 200 in harness.statuses_until(s, 200, 3.0), cid
    finally:
        s.close()

    def where(cid: str) -> list[int]:
        key = f"Call-ID: {cid}".encode()
        return [i for i, g in enumerate(gateways) if any(key in inv for inv in g.invites)]

    found = [where(cid) for cid in CALL_IDS]
    assert all(len(f) == 1 for f in found), found
    return [f[0] for f in found]


def _list(gateways: list[harness.Answerer]) -> str:
    return "".join(f"1 {g.uri} 0 0 duid=gw{i}\n" for i, g in enumerate(gateways))


def _kamailio_choices(tmp_path: Path, algorithm: int) -> list[int]:
    gateways = [harness.Answerer() for _ in range(3)]
    try:
        with Kamailio(tmp_path / f"kamailio{algorithm}", _list(gateways), algorithm=algorithm) as k:
            return _choices(k.port, gateways)
    finally:
        for g in gateways:
            g.close()


@pytest.fixture(scope="module")
def kamailio_choices(tmp_path_factory) -> dict[int, list[int]]:
    """Kamailio's choice per algorithm: live when it is installed, else the recording."""
    if kamailio_path() is None or os.environ.get("GDISPATCH_NO_KAMAILIO"):
        recorded = json.loads(RECORDED.read_text())
        assert recorded["call_ids"] == CALL_IDS
        return {int(a): v for a, v in recorded["choices"].items()}
    tmp = tmp_path_factory.mktemp("kamailio")
    live = {a: _kamailio_choices(tmp, a) for a in ALGORITHMS}
    if os.environ.get("GDISPATCH_RECORD_KAMAILIO"):
        RECORDED.write_text(json.dumps({"kamailio": "5.6, tests/data/kamailio/dispatcher.cfg",
                                        "call_ids": CALL_IDS, "choices": live}, indent=1) + "\n")
    return live


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_calls_reach_the_gateway_kamailio_chose(proxy, kamailio_choices, algorithm):
    gateways = [harness.Answerer() for _ in range(3)]
    try:
        config = f'[[route]]\nmethods = ["INVITE"]\nset = 1\nalgorithm = {algorithm}\n'
        p = proxy(_list(gateways), config=config)
        wait_for(lambda: set(p.states().values()) <= {"AP", "AX"}, 5)
        got = _choices(p.port, gateways)
    finally:
        for g in gateways:
            g.close()
    want = kamailio_choices[algorithm]
    same = sum(a == b for a, b in zip(got, want))
    assert got == want, f"{same} of {len(want)} calls reached Kamailio's gateway"


# -- the seed's failover: MG1 refuses, the call goes on to MG2 -----------------------------------

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "gdispatch.toml"


def _seed_gateways(tmp_path: Path, uas, code: int, reason: str):
    """The tutorial's MG1 (priority 10) refusing every call with `code`, MG2 (priority 5).
    MG1 is uas_503.xml answering `code` instead (SIPp reads the code when it loads the
    scenario, so it cannot come from a -key)."""
    refuse = tmp_path / f"uas_{code}.xml"
    refuse.write_text((harness.SCENARIOS / "uas_503.xml").read_text().replace("503 Service Unavailable",
                                                                                f"{code} {reason}"))
    mg1 = uas(str(refuse))
    mg2 = uas()
    return mg1, mg2, f"1 {mg1.uri} 0 10 duid=mg1\n1 {mg2.uri} 0 5 duid=mg2\n"


@pytest.mark.parametrize("code,reason,retried", [
    (404, "Not Found", True),  # the tutorial's case (5xx: tests/e2e/test_algorithms.py)
    (486, "Busy Here", False),  # the callee is busy: another gateway would ring it again
    (603, "Decline", False),  # RFC 3261 §16.7: a 6xx ends the search (401, 407...: test_config.py)
])
def test_the_shipped_configuration_fails_over_as_the_seed_expects(tmp_path, proxy, uas, uac, code, reason, retried):
    mg1, mg2, lst = _seed_gateways(tmp_path, uas, code, reason)
    p = proxy(lst, config=SHIPPED_CONFIG.read_text())  # both AX (active) until their first ping
    res = uac(f"{HOST}:{p.port}", calls=10, rate=20, timeout_s=30)
    mg1.stop()
    mg2.stop()
    tried_mg1 = mg1.counts()["INVITE"]
    assert tried_mg1 >= 3, tried_mg1  # round robin (the shipped route) starts about half there
    if retried:
        assert (res.successful, res.failed) == (10, 0), res
        assert mg2.counts()["INVITE"] == 10
    else:
        assert (res.successful, res.failed) == (10 - tried_mg1, tried_mg1), res
        assert mg2.counts()["INVITE"] == 10 - tried_mg1


def test_kamailio_fails_over_on_the_seeds_404_too(tmp_path, uas, uac):
    mg1, mg2, lst = _seed_gateways(tmp_path, uas, 404, "Not Found")
    with Kamailio(tmp_path / "kamailio", lst, algorithm=4) as k:
        res = uac(f"{HOST}:{k.port}", calls=10, rate=20, timeout_s=30)
    mg1.stop()
    mg2.stop()
    assert (res.successful, res.failed) == (10, 0), res
    assert mg1.counts()["INVITE"] >= 3 and mg2.counts()["INVITE"] == 10


# -- logs: which record, and at what level --------------------------------------------------------


def _log_lines(p, text: str) -> list[str]:
    return [line for line in p.log().splitlines() if text in line]


def test_logs_tell_same_address_records_apart_and_routine_events_are_info(proxy):
    """The seed's Bronze/Silver/Gold: one SBC, three records of one set told apart by their
    duid (and tech prefix). A state change names the record, not just the URI; an
    operator's change, a reload and a destination coming up are routine (INFO), a
    destination going down is a WARNING."""
    sbc = harness.Answerer()
    try:
        lst = "".join(f"1 {sbc.uri} 0 {prio} duid={name};prefix={prio}\n"
                      for name, prio in (("gold", 30), ("silver", 20), ("bronze", 10)))
        p = proxy(lst, config="[probing]\ninterval = 1\n")
        wait_for(lambda: set(p.states().values()) == {"AP"}, 10, message=p.states)
        assert p.rpc("dispatcher.set_duid_state", "dx", "1", "silver").returncode == 0
        changed = wait_for(lambda: _log_lines(p, "-> DX"), 5)
        assert len(changed) == 1 and f"destination {sbc.uri} (set 1, duid silver) AP -> DX" in changed[0], changed
        assert " INFO " in changed[0], changed
        assert p.rpc("dispatcher.reload").returncode == 0
        reloaded = wait_for(lambda: _log_lines(p, " reloaded ("), 5)
        assert all(" INFO " in line for line in reloaded), reloaded
        sbc.close()  # the SBC stops answering: the two active records go down
        down = wait_for(lambda: len(_log_lines(p, " is down ")) == 2 and _log_lines(p, " is down "), 10)
        assert all(" WARNING " in line for line in down), down
        assert sorted(line.split("(set 1, duid ")[1].split(")")[0] for line in down) == ["bronze", "gold"], down
        assert not [line for line in p.log().splitlines() if " WARNING " in line and " is down " not in line]
    finally:
        sbc.close()
