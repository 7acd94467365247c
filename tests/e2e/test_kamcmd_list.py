"""`gdispatch rpc dispatcher.list` next to `kamcmd dispatcher.list`, as an operator checks a
migration: the same list (tests/data/kamailio/dispatcher.list) in Kamailio 5.6 and in
gdispatch, both probing two gateways, and the text each prints compared line by line in
every mode (none, short, full), after a dispatcher.add too; and, live, what each prints
for a fault and its exit status.

What is compared: the lines, their order and indentation, every field name, the sets'
order, every value that comes from the list (URI, PRIORITY, ATTRS, HOST, PORT, ...).
What is compared by its shape only, being measured at run time: FLAGS (two letters;
Kamailio applies a ping's answer to the first destination of a URI only), the LATENCY
figures (AVG, STD, EST as kamcmd prints a double, MAX and TIMEOUT whole numbers).

Kamailio's side is live when Kamailio 5.6 and kamcmd are installed, else the text kamcmd
printed for this list, committed in tests/data/kamailio/kamcmd-dispatcher.list*.txt
(with the gateways' ports as {A}, {B}, {K}). GDISPATCH_RECORD_KAMCMD=1 writes those files
again from the live Kamailio.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.wait import wait_for

from . import harness
from .kamailio import LIST_CFG, Kamailio

DATA = harness.REPO / "tests" / "data" / "kamailio"
MODES = ("", "short", "full")
# Ping every second in both, every destination (Kamailio's ds_probing_mode 1); equal
# priorities in Kamailio's order.
GDISPATCH_CONFIG = "[dispatcher]\nkamailio_order = true\n[probing]\ninterval = 1\nmode = 1\n"

# Fields measured at run time: compared by the shape of their value.
SHAPES = {
    "FLAGS": r"[AITD][PXN]",
    "AVG": r"-?\d+(\.\d{6})?", "STD": r"-?\d+(\.\d{6})?", "EST": r"-?\d+(\.\d{6})?",  # kamcmd's doubles
    "MAX": r"\d+", "TIMEOUT": r"\d+",  # whole numbers (milliseconds, a count)
}


def expected_file(mode: str) -> Path:
    return DATA / f"kamcmd-dispatcher.list{'-' + mode if mode else ''}.txt"


def kamailio_56() -> str | None:
    """Why the live comparison cannot run, or None when it can."""
    if not (shutil.which("kamailio") and shutil.which("kamcmd")):
        return "Kamailio is not installed (apt-get install -y kamailio): compared with the committed kamcmd text"
    out = subprocess.run(["kamailio", "-v"], capture_output=True, text=True, timeout=10).stdout
    if not re.search(r"kamailio 5\.6\.", out):
        return f"the installed Kamailio is not 5.6 ({out.splitlines()[0] if out else '?'}): compared with " \
               "the committed kamcmd text"
    return None


def placeholders(text: str, ports: dict[str, int]) -> str:
    """The ports of this run back to {A}, {B}, {K}, where the list put them."""
    for name, port in ports.items():
        text = re.sub(rf"(?<=127\.0\.0\.1:){port}\b", "{" + name + "}", text)
        text = re.sub(rf"(?m)^(\t*PORT: ){port}$", r"\g<1>{" + name + "}", text)
    return text


def shape(text: str) -> list[str]:
    """The lines of a kamcmd-style answer, the values measured at run time replaced by
    <FIELD>, after checking that each has its field's shape."""
    lines = []
    for line in text.splitlines():
        m = re.fullmatch(r"(\t*)([A-Z_]+): (.*)", line)
        if m and m.group(2) in SHAPES:
            assert re.fullmatch(SHAPES[m.group(2)], m.group(3)), f"{line.strip()!r}: not the shape of {m.group(2)}"
            line = f"{m.group(1)}{m.group(2)}: <{m.group(2)}>"
        lines.append(line)
    return lines


def same_shape(ours: str, theirs: str, what: str) -> None:
    a, b = shape(ours), shape(theirs)
    assert a == b, f"gdispatch rpc and {what} differ:\n" + "\n".join(
        difflib.unified_diff(b, a, what, "gdispatch rpc", lineterm=""))


def probed(text: str) -> bool:
    """Set 3's one destination has had its first ping answered (AX at start, then AP)."""
    m = re.search(r"\tID: 3\n.*?FLAGS: (\S+)", text, re.DOTALL)
    return bool(m) and m.group(1) == "AP"


@pytest.fixture
def gdispatch_lists(proxy, answerers):
    """gdispatch with the list, its two gateways answering: (list(mode) -> its text,
    rpc(*args), the ports, the list's text)."""
    a, b = answerers(), answerers()
    ports = {"A": a.port, "B": b.port, "K": harness.free_port("udp")}
    text = (DATA / "dispatcher.list").read_text()
    for name, port in ports.items():
        text = text.replace("{" + name + "}", str(port))
    # The list's socket= attr names {K}: a listen address of gdispatch here, of Kamailio there.
    p = proxy(text, config=GDISPATCH_CONFIG, listen=("udp:127.0.0.1:{port}", f"udp:127.0.0.1:{ports['K']}"))

    def listed(mode: str) -> str:
        out = p.rpc("dispatcher.list", *([mode] if mode else []))
        assert out.returncode == 0 and not out.stderr, out
        return out.stdout

    wait_for(lambda: probed(listed("")), 10, 0.1, message=lambda: listed(""))
    return listed, p.rpc, ports, text


@pytest.mark.parametrize("mode", MODES)
def test_as_kamcmd_printed_for_the_same_list(gdispatch_lists, mode):
    listed, _, ports, _ = gdispatch_lists
    committed = expected_file(mode).read_text()
    same_shape(placeholders(listed(mode), ports), committed,
               f"kamcmd dispatcher.list {mode} ({expected_file(mode).relative_to(harness.REPO)})")


def test_as_kamcmd_prints_now_for_the_same_list(gdispatch_lists, tmp_path):
    why_not = kamailio_56()
    if why_not:
        pytest.skip(why_not)
    listed, rpc, ports, text = gdispatch_lists
    kports = dict(ports, K=harness.free_port("both"))  # Kamailio's own listen address for {K}
    ktext = text.replace(f"127.0.0.1:{ports['K']}", f"127.0.0.1:{kports['K']}")
    kam = Kamailio(tmp_path / "kamailio", ktext, cfg=LIST_CFG, port=kports["K"]).start()
    try:
        wait_for(lambda: probed(kam.kamcmd("dispatcher.list")), 10, 0.1,
                 message=lambda: kam.kamcmd("dispatcher.list") + kam.log())
        for mode in MODES:
            theirs = placeholders(kam.kamcmd("dispatcher.list", *([mode] if mode else [])), kports)
            if os.environ.get("GDISPATCH_RECORD_KAMCMD"):
                expected_file(mode).write_text(theirs)
            same_shape(placeholders(listed(mode), ports), theirs, f"kamcmd dispatcher.list {mode} (live)")
            # The committed text stays what this Kamailio prints.
            same_shape(expected_file(mode).read_text(), theirs, f"the committed {expected_file(mode).name}")
        # Faults, and what Kamailio does not count as one: the same text where kamcmd
        # prints it, and the same exit status.
        for command in (["dispatcher.set_state", "xx", "1", "all"], ["dispatcher.set_state", "dx", "9", "sip:x"],
                        ["no.such.method"]):
            k, g = kam.rpc(*command), rpc(*command)
            assert (g.returncode, g.stdout) == (k.returncode, k.stdout), command
        # dispatcher.add rebuilds Kamailio's list from the old one: its sets and its equal
        # priorities move; gdispatch's move the same way.
        add = ["dispatcher.add", "8", f"sip:127.0.0.1:{ports['A']}", "0", "0", "duid=new"]
        assert kam.kamcmd(*add) == "Ok. Dispatcher destination added.\n"
        assert rpc(*add).stdout == "Ok. Dispatcher destination added.\n"
        theirs = placeholders(kam.kamcmd("dispatcher.list"), kports)
        assert re.findall(r"ID: (\d+)", theirs) == ["1", "4", "3", "2", "6", "8", "7", "5"]  # moved
        same_shape(placeholders(listed(""), ports), theirs, "kamcmd dispatcher.list after dispatcher.add (live)")
        # Nothing to remove: Ok. (Kamailio rebuilds its list all the same, and its sets
        # move again; gdispatch leaves its list as it is.)
        command = ["dispatcher.remove", "1", "sip:127.0.0.9:5060"]
        k, g = kam.rpc(*command), rpc(*command)
        assert (g.returncode, g.stdout) == (k.returncode, k.stdout) == (0, "Ok. Dispatcher destination removed.\n")
    finally:
        kam.stop()
