"""Editing dispatcher.list in place (`gdispatch list show|add|rm`): the other lines stay
byte for byte, the file is replaced atomically and only when it still loads."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from gdispatch import listedit
from gdispatch.cli import main
from gdispatch.dispatcher.listfile import load_list
from gdispatch.listedit import ListEditError

ORIGINAL = (
    b"# Media gateways\n"
    b"\n"
    b"1  sip:mg1:5060\t0 0   duid=mg1 # Media Gateway 1\n"
    b"   # indented comment, kept as it is\n"
    b"1 sip:mg2:5060 0 0 # Media Gateway 2\n"
    b"\n"
    b"# carriers\n"
    b"2 sip:carrier.example.net 8 5\n"
    b"# trailing comment\n"
)


@pytest.fixture
def listfile(tmp_path):
    p = tmp_path / "dispatcher.list"
    p.write_bytes(ORIGINAL)
    os.chmod(p, 0o640)
    return p


def no_temp_files(directory) -> bool:
    return [n for n in os.listdir(directory) if n.endswith(".tmp")] == []


def test_the_seeds_add_command_keeps_every_other_line(listfile, capsys):
    # kamctl dispatcher add 1 sip:mg3:5060 0 0 '' 'Media Gateway 3', on the file:
    rc = main(["list", "add", "1", "sip:mg3:5060", "0", "0", "", "Media Gateway 3", "--list", str(listfile)])
    assert rc == 0
    assert capsys.readouterr().out == f"{listfile}:6: added: 1 sip:mg3:5060 0 0 # Media Gateway 3\n"
    lines = ORIGINAL.splitlines(keepends=True)
    assert listfile.read_bytes() == b"".join(lines[:5] + [b"1 sip:mg3:5060 0 0 # Media Gateway 3\n"] + lines[5:])
    added = [d for d in load_list(str(listfile)).get(1).destinations if d.uri == "sip:mg3:5060"]
    assert added[0].description == "Media Gateway 3" and added[0].attrs == ""


def test_add_with_attrs_and_a_new_set_goes_at_the_end(listfile):
    lineno, line = listedit.add_destination(str(listfile), 7, "sip:10.0.0.7:5080;transport=tcp", 8, 3,
                                            "duid=g7;weight=50")
    assert (lineno, line) == (10, "7 sip:10.0.0.7:5080;transport=tcp 8 3 duid=g7;weight=50")
    assert listfile.read_bytes() == ORIGINAL + line.encode() + b"\n"


def test_a_last_line_without_newline_gets_one(tmp_path):
    p = tmp_path / "d.list"
    p.write_bytes(b"1 sip:a:5060")
    listedit.add_destination(str(p), 1, "sip:b:5060")
    assert p.read_bytes() == b"1 sip:a:5060\n1 sip:b:5060 0 0\n"


def test_crlf_and_byte_order_mark_are_kept(tmp_path):
    p = tmp_path / "d.list"
    original = b"\xef\xbb\xbf# win\r\n1 sip:a:5060 0 0\r\n# end\r\n"
    p.write_bytes(original)
    listedit.add_destination(str(p), 1, "sip:b:5060")
    assert p.read_bytes() == b"\xef\xbb\xbf# win\r\n1 sip:a:5060 0 0\r\n1 sip:b:5060 0 0\r\n# end\r\n"
    listedit.remove_destination(str(p), 1, "sip:b:5060")
    assert p.read_bytes() == original


def test_byte_order_mark_stays_when_the_first_line_goes(tmp_path):
    p = tmp_path / "d.list"
    p.write_bytes(b"\xef\xbb\xbf1 sip:a:5060\n1 sip:b:5060\n")
    listedit.remove_destination(str(p), 1, "sip:a:5060")
    assert p.read_bytes() == b"\xef\xbb\xbf1 sip:b:5060\n"


def test_the_file_is_replaced_atomically_keeping_its_mode(listfile):
    before = os.stat(listfile)
    listedit.add_destination(str(listfile), 1, "sip:mg3:5060")
    after = os.stat(listfile)
    assert after.st_ino != before.st_ino  # a new file renamed over the old one, not rewritten in place
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert no_temp_files(listfile.parent)


def test_a_failed_replace_leaves_the_file_and_no_temp_file(listfile, monkeypatch):
    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(listedit.os, "replace", broken)
    with pytest.raises(OSError, match="No space"):
        listedit.add_destination(str(listfile), 1, "sip:mg3:5060")
    assert listfile.read_bytes() == ORIGINAL
    assert no_temp_files(listfile.parent)


@pytest.mark.parametrize("args,message", [
    ((1, "sip:mg1:5060", 0, 0, "duid=mg1"), "duplicate destination sip:mg1:5060 in set 1"),
    ((1, "sip:mg3:5060", 0, 0, "weight=500"), "bad attr weight=500"),
    ((1, "sip:mg3:5060", 64), "bad flags '64'"),
    ((1, "sip:mg 3"), "one word"),
    ((1, "sip:mg3:5060", 0, 0, "", "two\nlines"), "one line"),
])
def test_an_edit_that_would_not_load_is_refused_and_nothing_changes(listfile, args, message):
    before = os.stat(listfile)
    with pytest.raises(ListEditError, match=message):
        listedit.add_destination(str(listfile), *args)
    assert listfile.read_bytes() == ORIGINAL
    assert os.stat(listfile).st_ino == before.st_ino
    assert no_temp_files(listfile.parent)


def test_a_file_that_does_not_load_must_be_fixed_first(tmp_path, capsys):
    p = tmp_path / "d.list"
    p.write_bytes(b"1 sip:a:5060 0 high\n")
    rc = main(["list", "add", "1", "sip:b:5060", "--list", str(p)])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"{p}:1: bad priority 'high'" in err and "not changed" in err
    assert p.read_bytes() == b"1 sip:a:5060 0 high\n"


def test_rm_removes_every_match_without_regard_to_case(listfile, capsys):
    listedit.add_destination(str(listfile), 1, "sip:mg2:5060", 0, 0, "duid=second")
    rc = main(["list", "rm", "1", "SIP:MG2:5060", "--list", str(listfile)])
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{listfile}:5: removed: 1 sip:mg2:5060 0 0 # Media Gateway 2",
                   f"{listfile}:6: removed: 1 sip:mg2:5060 0 0 duid=second"]
    lines = ORIGINAL.splitlines(keepends=True)
    assert listfile.read_bytes() == b"".join(lines[:4] + lines[5:])


def test_rm_of_what_is_not_there_fails(listfile, capsys):
    assert main(["list", "rm", "2", "sip:mg1:5060", "--list", str(listfile)]) == 1
    assert "no destination sip:mg1:5060 in set 2" in capsys.readouterr().err
    assert listfile.read_bytes() == ORIGINAL


def test_a_symlinked_list_is_edited_at_its_target(tmp_path, listfile):
    link = tmp_path / "link.list"
    link.symlink_to(listfile)
    listedit.add_destination(str(link), 3, "sip:c:5060")
    assert link.is_symlink()
    assert listfile.read_bytes().endswith(b"3 sip:c:5060 0 0\n")


def test_concurrent_edits_all_land(listfile):
    errors = []

    def add(n):
        try:
            listedit.add_destination(str(listfile), 9, f"sip:10.0.0.{n}:5060")
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=add, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    uris = {d.uri for d in load_list(str(listfile)).get(9).destinations}
    assert uris == {f"sip:10.0.0.{n}:5060" for n in range(12)}


def test_show(listfile, capsys):
    assert main(["list", "show", "--list", str(listfile)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["LINE", "SETID", "DESTINATION", "FLAGS", "PRIORITY", "ATTRS", "DESCRIPTION"]
    assert out[1].split() == ["3", "1", "sip:mg1:5060", "0", "0", "duid=mg1", "Media", "Gateway", "1"]
    assert out[3].split() == ["8", "2", "sip:carrier.example.net", "8", "5"]
    assert len(out) == 4


def test_show_takes_the_file_as_its_argument_too(listfile, capsys):
    assert main(["list", "show", str(listfile)]) == 0
    by_argument = capsys.readouterr().out
    assert main(["list", "show", "--list", str(listfile)]) == 0
    assert capsys.readouterr().out == by_argument
    assert "sip:carrier.example.net" in by_argument
    assert main(["list", "show", str(listfile), "--list", "other.list"]) == 1
    assert "two list files" in capsys.readouterr().err


def test_show_of_a_bad_file_lists_the_problems_and_fails(tmp_path, capsys):
    p = tmp_path / "d.list"
    p.write_text("1 sip:a:5060\n1 sip:b:5060 0 high\n1 sip:a:5060\n")
    assert main(["list", "show", "--list", str(p)]) == 1
    captured = capsys.readouterr()
    assert "sip:a:5060" in captured.out
    assert f"{p}:2: bad priority 'high'" in captured.err
    assert f"{p}:3: duplicate destination" in captured.err


def test_missing_file_is_an_error(tmp_path, capsys):
    p = tmp_path / "none.list"
    assert main(["list", "add", "1", "sip:a", "--list", str(p)]) == 1
    assert "no such file" in capsys.readouterr().err
    assert not p.exists()
    assert main(["list", "show", "--list", str(p)]) == 1


def test_the_file_comes_from_the_config_else_the_current_directory(tmp_path, monkeypatch, capsys):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "gw.list").write_text("1 sip:a:5060\n")
    (conf_dir / "gdispatch.toml").write_text('[dispatcher]\nlist_file = "gw.list"\n')
    assert main(["list", "add", "1", "sip:b:5060", "--config", str(conf_dir / "gdispatch.toml")]) == 0
    assert (conf_dir / "gw.list").read_text() == "1 sip:a:5060\n1 sip:b:5060 0 0\n"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dispatcher.list").write_text("")
    assert main(["list", "add", "4", "sip:c:5060"]) == 0
    assert (tmp_path / "dispatcher.list").read_text() == "4 sip:c:5060 0 0\n"
    capsys.readouterr()
    assert main(["list", "show", "--config", str(tmp_path / "missing.toml")]) == 1
    assert "configuration error" in capsys.readouterr().err
