"""Whole calls of every caller shape the benchmark uses (bench/bench.sh `SHAPES`), through
a real gdispatch process with 1 and with 2 workers.

A shape is how a caller writes the same dialog (INVITE, 100/180/200, ACK and BYE
loose-routed by the stored Record-Route, 200): the project's own UAC, SIPp's built-in
one, compact forms with three Vias, a desk phone's large INVITE. Each must complete end
to end, every gateway must see the INVITE, the ACK and the BYE of each of its calls, and
the caller must get back in each response exactly the Vias it wrote (the proxy removes
its own only, RFC 3261 §16.7 step 3).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from . import harness

HOST = "127.0.0.1"
CALLS = 20

# shape name (as in bench.sh) -> (caller scenario, Via values in each of its requests)
SHAPES = {
    "own": ("uac.xml", 1),
    "builtin": ("uac_sipp_builtin.xml", 1),
    "compact": ("uac_compact.xml", 3),
    "phone": ("uac_phone.xml", 1),
}
# The gateway copies compact Vias too (see its comment); for the other shapes it answers
# as uas_ok.xml does.
GATEWAY = str(harness.REPO / "bench" / "scenarios" / "uas_shapes.xml")


def received_responses(workdir: Path) -> list[list[str]]:
    """The header lines of every response the SIPp caller received (its -trace_msg log)."""
    out = []
    for log in workdir.glob("*_messages.log"):
        for block in re.split(r"\n-{10,}[^\n]*\n", log.read_text(errors="replace")):
            head, _, msg = block.partition("\n\n")
            if "message received" not in head:
                continue
            lines = msg.strip("\n").split("\n\n", 1)[0].splitlines()
            if lines and lines[0].startswith("SIP/2.0 "):
                out.append(lines)
    return out


def via_values(lines: list[str]) -> list[str]:
    vias = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() in ("via", "v"):
            vias += [v.strip() for v in value.split(",")]
    return vias


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_shape_completes_through_the_proxy(proxy, uas, uac, shape, workers):
    scenario, n_vias = SHAPES[shape]
    gws = [uas(GATEWAY), uas(GATEWAY)]
    p = proxy(harness.dispatcher_list(*gws), args=["--workers", str(workers)])
    res = uac(f"{HOST}:{p.port}", scenario, calls=CALLS, rate=20, timeout_s=30, extra_args=["-trace_msg"])
    assert (res.successful, res.failed) == (CALLS, 0), res
    for g in gws:
        g.stop()
    counts = [g.counts() for g in gws]
    assert sum(c["INVITE"] for c in counts) == CALLS, counts
    for c in counts:
        assert c["BYE"] == c["INVITE"], counts
        if workers == 1:
            assert c["ACK"] == c["INVITE"] and c["unexpected"] == 0, counts
        else:
            # The ACK and the BYE of a call may be forwarded by the two workers (as by two
            # of Kamailio's children): a BYE that overtakes its ACK leaves the ACK to reach
            # the gateway after the BYE's 200, which its scenario counts as unexpected.
            assert c["ACK"] + c["unexpected"] == c["INVITE"] and c["unexpected"] <= 2, counts
    assert p.alive()

    responses = received_responses(res.dir)
    # 100 (the proxy's), 180, 200 for each INVITE and 200 for each BYE, at least
    assert len(responses) >= 4 * CALLS, len(responses)
    for lines in responses:
        vias = via_values(lines)
        assert len(vias) == n_vias and f":{p.port};" not in vias[0], lines
