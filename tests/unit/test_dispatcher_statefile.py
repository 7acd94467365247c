"""The state file (gdispatch/dispatcher/statefile.py): which states the operator set are
kept and which records a list edit keeps, the file's text, read, written atomically, and
every way it can be wrong; the [dispatcher] keys that name it."""

from __future__ import annotations

import json
import os
import stat

import pytest

from gdispatch.config import ConfigError, from_dict, load
from gdispatch.dispatcher.destination import (
    FLAG_DISABLED,
    FLAG_INACTIVE,
    FLAG_NOPING,
    FLAG_PROBING,
    state_letters,
)
from gdispatch.dispatcher.listfile import parse_list
from gdispatch.dispatcher.statefile import (
    OperatorStates,
    Record,
    StateFileError,
    default_path,
    open_states,
    read_states,
    set_aside,
    write_states,
)

LIST = "1 sip:10.0.0.1 0 0 duid=a\n1 sip:10.0.0.2 0 0 duid=b\n2 sip:10.0.0.3 4 0\n"
WHEN = "2026-03-01T10:00:00Z"


def letters(d) -> str:
    """The state its flags say (these destinations are not resolved: no address)."""
    return state_letters(d.flags)


def by_name(dl):
    return {d.duid or d.uri: d for d in dl.destinations()}


def set_state(states: OperatorStates, dest, flags: int, by: str = "rpc dispatcher.set_state") -> bool:
    """What the proxy does on dispatcher.set_state: the flags, then the note."""
    dest.flags = flags
    return states.note(dest, by, WHEN)


# ------------------------------------------------------------------ what is kept


def test_the_operators_state_is_kept_and_setting_the_files_state_again_forgets_it():
    s = OperatorStates()
    d = by_name(parse_list(LIST, "t"))
    assert set_state(s, d["a"], FLAG_DISABLED, "rpc dispatcher.set_state dx")
    assert s.records == {(1, "sip:10.0.0.1", "a", ""): Record(FLAG_DISABLED, 0, WHEN, "rpc dispatcher.set_state dx")}
    assert not set_state(s, d["a"], FLAG_DISABLED)  # the same again: nothing to write
    assert set_state(s, d["a"], FLAG_INACTIVE | FLAG_PROBING)  # "ip"
    assert s.records[(1, "sip:10.0.0.1", "a", "")].flags == FLAG_INACTIVE | FLAG_PROBING
    assert set_state(s, d["a"], FLAG_PROBING)  # "ap": back in service, the file's letter: the record goes
    assert s.records == {}
    assert set_state(s, d["a"], FLAG_DISABLED)
    assert set_state(s, d["a"], 0)  # "a" as well
    assert s.records == {}
    assert not set_state(s, d["b"], FLAG_PROBING)  # nothing recorded, nothing to forget


def test_back_in_service_is_kept_for_a_line_the_file_disables():
    s = OperatorStates()
    d = by_name(parse_list(LIST, "t"))["sip:10.0.0.3"]
    assert set_state(s, d, FLAG_PROBING)  # "ap" on a line with flags 4
    assert s.records[(2, "sip:10.0.0.3", "", "")].flags == FLAG_PROBING
    fresh = by_name(parse_list(LIST, "t"))["sip:10.0.0.3"]
    s.restore([fresh], lambda _: True, prune=False)
    assert letters(fresh) == "AP"


def test_only_the_state_bits_are_kept_and_the_configuration_bits_stay():
    s = OperatorStates()
    d = by_name(parse_list("1 sip:10.0.0.1 32 0 duid=a\n", "t"))["a"]  # 32: no ping
    assert set_state(s, d, FLAG_NOPING | FLAG_DISABLED)
    assert s.records[(1, "sip:10.0.0.1", "a", "")].flags == FLAG_DISABLED
    assert s.records[(1, "sip:10.0.0.1", "a", "")].list_flags == FLAG_NOPING


# ------------------------------------------------------------------ applying the records


def test_restore_gives_fresh_destinations_their_state_and_leaves_the_others():
    s = OperatorStates()
    old = by_name(parse_list(LIST, "t"))
    set_state(s, old["a"], FLAG_DISABLED)
    set_state(s, old["b"], FLAG_INACTIVE)
    new = parse_list(LIST, "t")
    for d in new.destinations():
        d.address = (d.sip_uri.host, 5060)
    n = by_name(new)
    n["b"].flags = FLAG_PROBING  # kept across a reload, say: not fresh
    done = s.restore(new.destinations(), lambda d: d is not n["b"], prune=True)
    assert [(d.duid, r.flags) for d, r in done.applied] == [("a", FLAG_DISABLED)]
    assert letters(n["a"]) == "DX" and letters(n["b"]) == "AP"
    assert done.dropped == [] and len(s.records) == 2
    assert [d.duid for d in new.get(1).active] == ["b"]  # selection sees it at once


def test_a_list_edit_keeps_what_still_matches():
    s = OperatorStates()
    set_state(s, by_name(parse_list(LIST, "t"))["a"], FLAG_DISABLED)
    # Another priority, attrs and a new line: set, URI and duid are the same.
    edited = parse_list("1 sip:10.0.0.9 0 0 duid=z\n1 sip:10.0.0.1 0 50 duid=a;weight=10\n", "t")
    s.restore(edited.destinations(), lambda _: True, prune=True)
    assert letters(by_name(edited)["a"]) == "DX"
    assert list(s.records) == [(1, "sip:10.0.0.1", "a", "")]


def test_a_record_goes_when_the_line_changes_its_flags_or_leaves_the_list():
    s = OperatorStates()
    old = by_name(parse_list(LIST, "t"))
    set_state(s, old["a"], FLAG_DISABLED)
    set_state(s, old["b"], FLAG_DISABLED)
    set_state(s, old["sip:10.0.0.3"], 0)
    edited = parse_list("1 sip:10.0.0.1 1 0 duid=a\n2 sip:10.0.0.3 4 0\n", "t")  # a: flags 1; b gone
    done = s.restore(edited.destinations(), lambda _: True, prune=True)
    assert letters(by_name(edited)["a"]) == "IX"  # the file wins
    assert letters(by_name(edited)["sip:10.0.0.3"]) == "AX"
    why = {key[2] or key[1]: reason for key, _, reason in done.dropped}
    assert why == {"a": "the list file now gives it flags 1 (it gave 0): the file wins",
                   "b": "no longer in the list file"}
    assert list(s.records) == [(2, "sip:10.0.0.3", "", "")]


def test_without_prune_a_record_outlives_a_destination_removed_by_hand():
    s = OperatorStates()
    set_state(s, by_name(parse_list(LIST, "t"))["b"], FLAG_DISABLED)
    without_b = parse_list("1 sip:10.0.0.1 0 0 duid=a\n", "t")  # dispatcher.remove without PERSIST
    assert s.restore(without_b.destinations(), lambda _: True, prune=False).dropped == []
    assert list(s.records) == [(1, "sip:10.0.0.2", "b", "")]


# ------------------------------------------------------------------ the file


def test_the_text_is_readable_json_and_reads_back():
    s = OperatorStates()
    d = by_name(parse_list(LIST, "t"))
    set_state(s, d["a"], FLAG_DISABLED, "rpc dispatcher.set_state dx")
    set_state(s, d["sip:10.0.0.3"], FLAG_INACTIVE | FLAG_PROBING, "rpc dispatcher.set_state ip")
    text = s.to_text()
    data = json.loads(text)
    assert data["version"] == 1 and "set by the operator" in data["about"]
    assert data["states"][0] == {"set": 1, "uri": "sip:10.0.0.1", "duid": "a", "state": "DX", "flags": 4,
                                 "list_flags": 0, "since": WHEN, "by": "rpc dispatcher.set_state dx"}
    assert data["states"][1]["state"] == "IP" and data["states"][1]["list_flags"] == 4
    assert text.count("\n") > 10  # one key a line: a person reads it
    assert OperatorStates.from_text(text).records == s.records


def test_a_hand_written_record_needs_only_set_uri_flags_and_list_flags():
    text = '{"states": [{"set": 3, "uri": "sip:gw", "flags": 4, "list_flags": 0}]}'
    assert OperatorStates.from_text(text).records == {(3, "sip:gw", "", ""): Record(4, 0, "", "")}


@pytest.mark.parametrize("text, message", [
    ("", "not valid JSON"),
    ("{\"states\": [", "not valid JSON"),
    ("[]", "expected an object with a list \"states\""),
    ("{\"states\": {}}", "expected an object with a list \"states\""),
    ("{\"version\": 2, \"states\": []}", "version 2 (this gdispatch reads version 1)"),
    ("{\"states\": [7]}", "states[0]: expected an object"),
    ("{\"states\": [{\"uri\": \"sip:a\", \"flags\": 4, \"list_flags\": 0}]}", "states[0]: \"set\": expected a set id"),
    ("{\"states\": [{\"set\": -1, \"uri\": \"sip:a\", \"flags\": 4, \"list_flags\": 0}]}", "\"set\""),
    ("{\"states\": [{\"set\": true, \"uri\": \"sip:a\", \"flags\": 4, \"list_flags\": 0}]}", "\"set\""),
    ("{\"states\": [{\"set\": 1, \"uri\": \"\", \"flags\": 4, \"list_flags\": 0}]}", "\"uri\": expected"),
    ("{\"states\": [{\"set\": 1, \"uri\": \"sip:a\", \"flags\": 16, \"list_flags\": 0}]}",
     "\"flags\": expected state bits 0-15"),
    ("{\"states\": [{\"set\": 1, \"uri\": \"sip:a\", \"flags\": \"DX\", \"list_flags\": 0}]}", "\"flags\""),
    ("{\"states\": [{\"set\": 1, \"uri\": \"sip:a\", \"flags\": 4}]}", "\"list_flags\": expected flags 0-63"),
    ("{\"states\": [{\"set\": 1, \"uri\": \"sip:a\", \"duid\": 3, \"flags\": 4, \"list_flags\": 0}]}", "\"duid\""),
    ("{\"states\": [{\"set\": 1, \"uri\": \"sip:a\", \"flags\": 4, \"list_flags\": 0, \"by\": 1}]}", "\"by\""),
    ("{\"states\": [{\"set\": 1, \"uri\": \"sip:a\", \"flags\": 4, \"list_flags\": 0},"
     " {\"set\": 1, \"uri\": \"sip:a\", \"flags\": 1, \"list_flags\": 0}]}",
     "states[1]: set 1, sip:a, duid '', socket '' appears twice"),
])
def test_a_bad_file_is_refused_with_what_is_wrong(text, message):
    with pytest.raises(StateFileError) as e:
        OperatorStates.from_text(text, "/x/dispatcher.list.state")
    assert str(e.value).startswith("/x/dispatcher.list.state: ") and message in str(e.value)


def test_read_and_write(tmp_path):
    path = tmp_path / "dispatcher.list.state"
    assert read_states(str(path)).records == {}  # no file: nothing recorded
    s = OperatorStates({(1, "sip:a", "", ""): Record(4, 0, WHEN, "rpc")})
    write_states(str(path), s)
    assert read_states(str(path)).records == s.records
    assert [p.name for p in tmp_path.iterdir()] == ["dispatcher.list.state"]  # no temporary file left
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    # The next write keeps the file's mode; a symlink stays a symlink.
    path.chmod(0o600)
    target = tmp_path / "real.state"
    os.replace(path, target)
    path.symlink_to(target)
    write_states(str(path), OperatorStates())
    assert path.is_symlink() and read_states(str(path)).records == {}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    # A directory that is not there yet is made.
    write_states(str(tmp_path / "state" / "x.state"), s)
    assert read_states(str(tmp_path / "state" / "x.state")).records == s.records


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_a_corrupt_file_is_an_error_and_is_set_aside_whole(tmp_path):
    path = tmp_path / "dispatcher.list.state"
    path.write_bytes(b"{\"states\": [\xff")
    with pytest.raises(StateFileError, match="not UTF-8 text"):
        read_states(str(path))
    path.write_text("{\"states\": [{\"set\": 1}")
    with pytest.raises(StateFileError, match="not valid JSON"):
        read_states(str(path))
    assert set_aside(str(path)) == str(path) + ".bad"
    assert not path.exists() and (tmp_path / "dispatcher.list.state.bad").read_text() == "{\"states\": [{\"set\": 1}"
    assert set_aside(str(path)) == ""  # nothing there to set aside


def test_a_file_that_cannot_be_read_is_an_os_error(tmp_path):
    (tmp_path / "dispatcher.list.state").mkdir()
    with pytest.raises(OSError):
        read_states(str(tmp_path / "dispatcher.list.state"))


def test_open_states_warns_and_never_fails(tmp_path):
    path = tmp_path / "dispatcher.list.state"
    assert (open_states(str(path))[0].records, open_states(str(path))[1]) == ({}, "")  # no file yet
    write_states(str(path), OperatorStates({(1, "sip:a", "", ""): Record(4, 0)}))
    states, problem = open_states(str(path))
    assert states is not None and list(states.records) == [(1, "sip:a", "", "")] and problem == ""
    path.write_text("DX")
    states, problem = open_states(str(path))
    assert states is not None and states.records == {}  # kept from now on
    assert problem.startswith(f"{path}: not valid JSON") and problem.endswith(f"the file is kept as {path}.bad")
    assert (tmp_path / "dispatcher.list.state.bad").read_text() == "DX"
    path.write_text("[" * 200000)  # nested past Python's stack: set aside too, not a failed start
    states, problem = open_states(str(path))
    assert states is not None and states.records == {} and "not valid JSON" in problem  # set aside
    path.mkdir()  # cannot be read: left alone, nothing kept this run
    states, problem = open_states(str(path))
    assert states is None and problem.startswith(f"{path}: cannot read the operator's states (")
    assert problem.endswith("they are not restored, and not kept this run") and path.is_dir()


def test_two_lines_of_one_uri_told_apart_by_their_socket_keep_their_own_states():
    """What a reload tells apart (set, URI, duid, socket), the state file does too: the
    maintenance of one path of a multi-homed box does not come back on the other."""
    text = "1 sip:10.0.0.1 0 0 socket=udp:192.0.2.1:5060\n1 sip:10.0.0.1 0 0 socket=udp:192.0.2.2:5060\n"
    s = OperatorStates()
    first = next(d for d in parse_list(text, "t").destinations() if d.socket.startswith("udp:192.0.2.1"))
    set_state(s, first, FLAG_DISABLED)
    again = OperatorStates.from_text(s.to_text())
    fresh = parse_list(text, "t")
    again.restore(fresh.destinations(), lambda _: True, prune=True)
    assert {d.socket: letters(d) for d in fresh.destinations()} == {"udp:192.0.2.1:5060": "DX",
                                                                     "udp:192.0.2.2:5060": "AX"}
    assert '"socket": "udp:192.0.2.1:5060"' in s.to_text()


def test_the_report_names_each_state_restored_or_forgotten():
    s = OperatorStates({(1, "sip:10.0.0.1", "a", ""): Record(4, 0, WHEN, "rpc dispatcher.set_state dx"),
                        (1, "sip:10.0.0.2", "b", ""): Record(1, 0)})
    dl = parse_list("1 sip:10.0.0.1 0 0 duid=a\n", "t")
    assert s.restore(dl.destinations(), lambda _: True, prune=True).report("/s") == [
        f"destination sip:10.0.0.1 (set 1, duid a) is DX as the operator set it (rpc dispatcher.set_state dx "
        f"at {WHEN}; /s)",
        "the state IX the operator set on sip:10.0.0.2 (set 1, duid b) is forgotten: no longer in the list file",
    ]


def test_the_default_place_is_beside_the_list_or_in_systemds_state_directory(tmp_path, monkeypatch):
    assert default_path("/etc/gdispatch/dispatcher.list", {}) == "/etc/gdispatch/dispatcher.list.state"
    assert default_path("/etc/gdispatch/gw.list", {"STATE_DIRECTORY": "/var/lib/gdispatch:/var/lib/x"}) \
        == "/var/lib/gdispatch/gw.list.state"
    monkeypatch.chdir(tmp_path)
    assert default_path("dispatcher.list", {}) == str(tmp_path / "dispatcher.list.state")


# ------------------------------------------------------------------ gdispatch.toml


def test_the_dispatcher_keys(tmp_path):
    cfg = from_dict({})
    assert cfg.persistent_state is True and cfg.state_file == ""  # kept by default (OpenSIPS's choice)
    toml = tmp_path / "gdispatch.toml"
    toml.write_text("[dispatcher]\npersistent_state = false\nstate_file = \"run/states.json\"\n")
    cfg = load(str(toml))
    assert cfg.persistent_state is False and cfg.state_file == str(tmp_path / "run" / "states.json")
    assert from_dict({"dispatcher": {"state_file": "/abs/s.json"}}, str(toml)).state_file == "/abs/s.json"
    with pytest.raises(ConfigError, match=r"\[dispatcher\].persistent_state: expected true or false"):
        from_dict({"dispatcher": {"persistent_state": 1}})
    with pytest.raises(ConfigError, match=r"\[dispatcher\].state_file: expected a file path"):
        from_dict({"dispatcher": {"state_file": 3}})
