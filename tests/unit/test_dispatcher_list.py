"""dispatcher.list: Kamailio's grammar, descriptions, errors that name file:line, load
modes and the order inside a set."""

from pathlib import Path

import pytest

from gdispatch.dispatcher.destination import FLAG_DISABLED, FLAG_PROBING, Destination
from gdispatch.dispatcher.listfile import ListError, format_line, load_list, parse_line, parse_list
from gdispatch.sip import parse_uri

LISTS = Path(__file__).parent.parent / "data" / "lists"


def uris(dset):
    return [d.uri for d in dset.destinations]


# -- the grammar ---------------------------------------------------------------------------


def test_kamailio_example_loads_to_the_same_sets_order_and_attrs():
    dl = load_list(str(LISTS / "kamailio-example.list"))
    assert list(dl.sets) == [2, 1]
    assert dl.problems == []
    s2 = dl.get(2).destinations
    assert uris(dl.get(2)) == ["sip:127.0.0.1:5080;transport=tcp", "sip:127.0.0.1:5082;px=vx"]
    assert [(d.flags, d.priority) for d in s2] == [(0, 10), (0, 5)]
    assert s2[0].transport == "tcp"
    assert s2[0].attrs == "class=4;prefix=448;strip=2"
    assert s2[0].attr_map == {"class": "4", "prefix": "448", "strip": "2"}
    assert s2[1].attr_map == {"duid": "abc", "socket": "udp:192.168.0.125:5060", "pipe": "p10"}
    assert (s2[1].duid, s2[1].socket) == ("abc", "udp:192.168.0.125:5060")
    s1 = {d.uri: d for d in dl.get(1).destinations}
    assert (s1["sip:127.0.0.1:7070"].duid, s1["sip:127.0.0.1:7070"].maxload) == ("xyz", 20)
    assert (s1["sip:127.0.0.1:7074"].flags, s1["sip:127.0.0.1:7074"].priority, s1["sip:127.0.0.1:7074"].attrs) == (
        0, 0, "")
    # Higher priority first; equal priorities in file order by default...
    assert uris(dl.get(1)) == ["sip:127.0.0.1:7072", "sip:127.0.0.1:7070", "sip:127.0.0.1:7074"]
    assert uris(dl.get(2)) == ["sip:127.0.0.1:5080;transport=tcp", "sip:127.0.0.1:5082;px=vx"]
    # ...and in reverse file order with kamailio_order, as Kamailio prints them.
    dk = load_list(str(LISTS / "kamailio-example.list"), kamailio_order=True)
    assert uris(dk.get(1)) == ["sip:127.0.0.1:7072", "sip:127.0.0.1:7074", "sip:127.0.0.1:7070"]
    assert uris(dk.get(2)) == uris(dl.get(2))


def test_kamailio_order_matches_what_kamcmd_printed_for_described_list():
    # `kamcmd dispatcher.list` with tests/data/lists/described.list loaded in Kamailio 5.6.3.
    seen_in_kamailio = [5072, 5075, 5079, 5078, 5077, 5076, 5074, 5073, 5071]
    dk = load_list(str(LISTS / "described.list"), kamailio_order=True)
    assert [d.sip_uri.port for d in dk.get(1).destinations] == seen_in_kamailio
    dl = load_list(str(LISTS / "described.list"))
    assert [d.sip_uri.port for d in dl.get(1).destinations] == [5072, 5075, 5071, 5073, 5074, 5076, 5077, 5078, 5079]


def test_optional_columns_and_hex_flags():
    d = parse_line("3 sip:10.0.0.1:5060 0x8 7 weight=50", "f:1")
    assert (d.setid, d.flags, d.priority, d.attr_map, d.weight) == (3, FLAG_PROBING, 7, {"weight": "50"}, 50)
    assert parse_line("3 sip:10.0.0.1 0x1f", "f:1").flags == 31
    d = parse_line("3 10.0.0.1:5060 4", "f:1")
    assert d.uri == "sip:10.0.0.1:5060" and d.flags == FLAG_DISABLED
    assert parse_line("1 gw.example.com", "f:1").uri == "sip:gw.example.com"
    assert parse_line("1 sips:gw.example.com", "f:1").uri == "sips:gw.example.com"
    d = parse_line("\t 12\tsip:10.0.0.1\t00021 \r\n", "f:1")
    assert (d.setid, d.flags, d.priority) == (12, 21, 0)


def test_ipv6_and_transport():
    d = parse_line("1 sip:[2001:db8::1]:5070;transport=tcp 0 0", "f:1")
    assert d.sip_uri.host == "2001:db8::1" and d.sip_uri.port == 5070 and d.transport == "tcp"
    assert parse_line("1 [2001:db8::2]", "f:1").uri == "sip:[2001:db8::2]"
    assert parse_line("1 sip:10.0.0.1;transport=TLS", "f:1").transport == "tls"


def test_attrs_names_are_case_insensitive_and_kept_verbatim():
    d = parse_line("1 sip:10.0.0.1 0 0 DUID=Up;Weight=7;X-Custom=AbC;", "f:1")
    assert d.attrs == "DUID=Up;Weight=7;X-Custom=AbC;"
    assert d.attr_map == {"duid": "Up", "weight": "7", "x-custom": "AbC"}
    assert (d.duid, d.weight) == ("Up", 7)
    d = parse_line('1 sip:10.0.0.1 0 0 desc="Media";flag;;x=', "f:1")
    assert d.attr_map == {"desc": "Media", "flag": "", "x": ""}


def test_comments_and_inline_hash():
    assert parse_line("   # comment", "f:1") is None
    assert parse_line("", "f:1") is None
    assert parse_line(" \t\r", "f:1") is None
    d = parse_line("1 sip:10.0.0.1#trailing comment", "f:1")
    assert d.uri == "sip:10.0.0.1" and d.flags == 0 and d.description == "trailing comment"
    # Inside the attrs token '#' is literal, as in Kamailio.
    d = parse_line("1 sip:10.0.0.1 0 0 a=b#c", "f:1")
    assert d.attrs == "a=b#c" and d.attr_map == {"a": "b#c"} and d.description == ""


def test_no_line_length_limit():
    attrs = "x=" + "y" * 5000
    d = parse_line(f"1 sip:10.0.0.1 0 0 {attrs}", "f:1")
    assert d.attrs == attrs


def test_empty_file_is_valid():
    assert parse_list("", "l").sets == {}
    assert parse_list("# nothing\n\n", "l").sets == {}


# -- descriptions ----------------------------------------------------------------------------


def test_descriptions_in_every_form_kamailio_loads():
    dl = load_list(str(LISTS / "described.list"))
    by_port = {d.sip_uri.port: d for d in dl.get(1).destinations}
    assert {p: d.description for p, d in by_port.items()} == {
        5071: "Media Gateway 1",
        5072: "Media Gateway 2",
        5073: "Media Gateway 3, probed",
        5074: "Media Gateway 4",
        5075: "Media Gateway 5",
        5076: "Media Gateway 6 (the attrs hold a '#')",
        5077: "",
        5078: "",  # the comment line above it is just a comment
        5079: "",
    }
    assert (by_port[5071].attrs, by_port[5072].attrs, by_port[5076].attrs) == ("duid=mg1", "", "duid=mg6#literal")
    assert (by_port[5072].priority, by_port[5073].flags, by_port[5075].priority) == (5, FLAG_PROBING, 3)


def test_format_line_writes_the_description_kamailio_ignores():
    d = parse_line("1 sip:mg1:5060 0 0 duid=mg1 # Media Gateway 1", "f:1")
    assert format_line(d) == "1 sip:mg1:5060 0 0 duid=mg1 # Media Gateway 1"
    d = parse_line("1 mg2 # Media Gateway 2", "f:1")
    assert format_line(d) == "1 sip:mg2 0 0 # Media Gateway 2"
    d = parse_line("7 sip:10.0.0.1 0x8 3", "f:1")
    assert format_line(d) == "7 sip:10.0.0.1 8 3"


def test_format_line_round_trips_every_destination():
    for name in ("described.list", "kamailio-example.list"):
        for d in load_list(str(LISTS / name)).destinations():
            back = parse_line(format_line(d), "again:1")
            assert (back.setid, back.uri, back.flags, back.priority, back.attrs, back.description) == (
                d.setid, d.uri, d.flags, d.priority, d.attrs, d.description)


def test_format_line_writes_file_flags_not_runtime_state():
    d = parse_line("1 sip:10.0.0.1 8 0", "f:1")
    d.flags = 1 | 8  # the prober marked it inactive
    assert format_line(d) == "1 sip:10.0.0.1 8 0"


def test_format_line_of_a_new_destination_and_what_cannot_be_written():
    d = Destination(4, "sip:gw.example.com", parse_uri("sip:gw.example.com"), 0, 2, "duid=gw",
                    description="  Carrier   gateway ")
    assert format_line(d) == "4 sip:gw.example.com 0 2 duid=gw # Carrier   gateway"
    assert parse_line(format_line(d), "f:1").description == "Carrier   gateway"
    for bad in (
        Destination(1, "sip:a", parse_uri("sip:a"), attrs="a=b c=d"),
        Destination(1, "sip:a", parse_uri("sip:a"), attrs="#x"),
        Destination(1, "sip:a", parse_uri("sip:a"), description="two\nlines"),
    ):
        with pytest.raises(ValueError):
            format_line(bad)


# -- errors ----------------------------------------------------------------------------------

# Each bad line of tests/data/lists/bad.list and words its message must hold.
BAD_LINES = {
    3: ["must start with a set id", "'x'"],
    4: ["set id 4 must be followed by white space"],
    5: ["set id 5 without a destination"],
    6: ["bad destination URI", "'sip:[::1'"],
    7: ["bad destination URI", "'tel:+4930123'"],
    8: ["bad flags '8abc'"],
    9: ["bad flags '0X8'"],
    10: ["bad flags '64'", "at most 63"],
    11: ["bad priority '-5'", "whole number"],
    12: ["bad attr weight=abc", "from 1 to 100"],
    13: ["bad attr weight=150", "from 1 to 100"],
    14: ["bad attr rweight=0", "from 1 to 100"],
    15: ["bad attr maxload=lots", ">= 0", "0 = unlimited"],
    16: ["bad attr cc=2", "from 0 to 1"],
    17: ["duid is given twice"],
    18: ["unterminated quoted value"],
    19: ["unexpected text after the attrs", "'duid=x'"],
    20: ["bad attr socket=udp:192.0.2.1:notaport", "[proto:]host[:port]"],
    21: ["bad attr ping_from=nonsense", "SIP URI"],
    22: ["attr without a name"],
    23: ["duplicate destination sip:10.0.0.1:5060 in set 1", "bad.list:2"],
    24: ["set id 99999999999 is too large"],
    25: ["bad priority '99999999999'"],
}


def test_bad_list_reports_every_problem_with_file_and_line():
    path = str(LISTS / "bad.list")
    with pytest.raises(ListError) as e:
        load_list(path)
    problems = e.value.problems
    assert [int(p[len(path) + 1 :].split(":")[0]) for p in problems] == sorted(BAD_LINES)
    for p in problems:
        line = int(p[len(path) + 1 :].split(":")[0])
        assert p.startswith(f"{path}:{line}: ")
        for words in BAD_LINES[line]:
            assert words in p, (p, words)
    assert str(e.value) == "\n".join(problems)


def test_skip_mode_loads_the_good_lines_and_returns_the_problems():
    path = str(LISTS / "bad.list")
    dl = load_list(path, mode="skip")
    assert [d.where for d in dl.destinations()] == [f"{path}:2", f"{path}:26"]
    assert [d.setid for d in dl.destinations()] == [1, 2]
    assert len(dl.problems) == len(BAD_LINES)
    assert all(p.startswith(f"{path}:") for p in dl.problems)


def test_strict_is_the_default_and_modes_are_checked():
    with pytest.raises(ListError):
        parse_list("1 sip:a\nx\n", "l")
    assert parse_list("1 sip:a\nx\n", "l", mode="skip").problems == ["l:2: a line must start with a set id "
                                                                      "(a decimal number), not 'x'"]
    with pytest.raises(ValueError):
        parse_list("", "l", mode="lenient")


@pytest.mark.parametrize("line,words", [
    ("x sip:10.0.0.1", "set id"),
    ("1", "without a destination"),
    ("1 # only comment", "without a destination"),
    ("1 sip:10.0.0.1 zz", "bad flags"),
    ("1 sip:10.0.0.1 0xA 1", None),  # uppercase hex digits are fine; only the prefix is lowercase
    ("1 sip:10.0.0.1 0x", "bad flags"),
    ("1 sip:10.0.0.1 0 -5", "bad priority"),
    ("1 sip:10.0.0.1 0 5x", "bad priority"),
    ("1 sip:[::1", "bad destination URI"),
    ("1 sip:", "bad destination URI"),
])
def test_bad_lines_name_file_and_line(line, words):
    text = "# ok\n1 sip:10.0.0.9\n" + line + "\n"
    if words is None:
        assert parse_list(text, "my.list").get(1) is not None
        return
    with pytest.raises(ListError) as e:
        parse_list(text, "my.list")
    assert len(e.value.problems) == 1
    assert e.value.problems[0].startswith("my.list:3: ")
    assert words in e.value.problems[0]


def test_duplicates_are_same_set_uri_duid_and_socket():
    ok = (
        "1 sip:10.0.0.1 0 0 duid=a\n"
        "1 sip:10.0.0.1 0 0 duid=b\n"  # another duid
        "1 sip:10.0.0.1 0 0 socket=udp:192.0.2.1:5060\n"  # another socket
        "2 sip:10.0.0.1 0 0 duid=a\n"  # another set
    )
    assert len(list(parse_list(ok, "l").destinations())) == 4
    with pytest.raises(ListError) as e:
        parse_list("1 sip:10.0.0.1\n1 10.0.0.1 0 9\n", "l")
    assert e.value.problems == ["l:2: duplicate destination sip:10.0.0.1 in set 1: same URI, duid and socket "
                                "as l:1; give each a distinct duid= attr"]


def test_a_duid_names_one_destination_of_its_set():
    text = "1 sip:10.0.0.1 0 0 duid=gold\n1 sip:10.0.0.2 0 0 duid=gold\n2 sip:10.0.0.3 0 0 duid=gold\n"
    with pytest.raises(ListError) as e:
        parse_list(text, "l")
    assert e.value.problems == ["l:2: duplicate duid=gold in set 1, also at l:1; a duid names one destination "
                                "of its set"]
    with pytest.raises(ListError, match="duplicate duid=GOLD in set 1"):  # set_duid_state ignores case
        parse_list("1 sip:10.0.0.1 0 0 duid=gold\n1 sip:10.0.0.2 0 0 duid=GOLD\n", "l")
    skipped = parse_list(text, "l", mode="skip")
    assert [d.uri for d in skipped.destinations()] == ["sip:10.0.0.1", "sip:10.0.0.3"]


def test_every_bad_line_is_reported():
    with pytest.raises(ListError) as e:
        parse_list("x\n1 sip:10.0.0.1\ny\n1 sip:10.0.0.1\n", "l")
    assert [p.split(":")[1] for p in e.value.problems] == ["1", "3", "4"]
    assert "duplicate" in e.value.problems[2]


def test_unreadable_file_is_a_list_error(tmp_path):
    with pytest.raises(ListError) as e:
        load_list(str(tmp_path / "missing.list"))
    assert e.value.problems[0].startswith(str(tmp_path / "missing.list") + ": cannot read")
    bom = tmp_path / "bom.list"
    bom.write_bytes(b"\xef\xbb\xbf1 sip:10.0.0.1\n")
    assert load_list(str(bom)).get(1) is not None
