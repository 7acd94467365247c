"""dispatcher.list parsing: Kamailio's grammar, and errors that name file:line."""

import pytest

from gdispatch.dispatcher.destination import FLAG_DISABLED, FLAG_PROBING
from gdispatch.dispatcher.listfile import ListError, parse_line, parse_list

EXAMPLE = """\
# setid destination flags priority attrs
2 sip:127.0.0.1:5080;transport=tcp 0 10 class=4;prefix=448;strip=2
2 sip:127.0.0.1:5082;px=vx 0 5 duid=abc;socket=udp:192.168.0.125:5060;pipe=p10

1 sip:127.0.0.1:7070 0 0 duid=xyz;maxload=20
1 sip:127.0.0.1:7072 0 5
1 sip:127.0.0.1:7074
"""


def test_example_list_loads():
    dl = parse_list(EXAMPLE, "ex.list")
    assert sorted(dl.sets) == [1, 2]
    s2 = dl.get(2).destinations
    assert [d.uri for d in s2] == ["sip:127.0.0.1:5080;transport=tcp", "sip:127.0.0.1:5082;px=vx"]
    assert s2[0].transport == "tcp"
    assert s2[0].attr_map == {"class": "4", "prefix": "448", "strip": "2"}
    assert s2[1].attr_map["duid"] == "abc"
    # Higher priority first; equal priorities in file order.
    assert [d.uri for d in dl.get(1).destinations] == [
        "sip:127.0.0.1:7072", "sip:127.0.0.1:7070", "sip:127.0.0.1:7074"]


def test_optional_columns_and_hex_flags():
    d = parse_line("3 sip:10.0.0.1:5060 0x8 7 weight=50", "f:1")
    assert (d.setid, d.flags, d.priority, d.attr_map) == (3, FLAG_PROBING, 7, {"weight": "50"})
    d = parse_line("3 10.0.0.1:5060 4", "f:1")
    assert d.uri == "sip:10.0.0.1:5060" and d.flags == FLAG_DISABLED
    d = parse_line("1 sip:[2001:db8::1]:5070", "f:1")
    assert d.sip_uri.host == "2001:db8::1" and d.sip_uri.port == 5070


def test_comments_and_inline_hash():
    assert parse_line("   # comment", "f:1") is None
    assert parse_line("", "f:1") is None
    d = parse_line("1 sip:10.0.0.1#trailing comment", "f:1")
    assert d.uri == "sip:10.0.0.1" and d.flags == 0
    # Inside the attrs token '#' is literal, as in Kamailio.
    d = parse_line("1 sip:10.0.0.1 0 0 a=b#c", "f:1")
    assert d.attrs == "a=b#c"


def test_no_line_length_limit():
    attrs = "x=" + "y" * 5000
    d = parse_line(f"1 sip:10.0.0.1 0 0 {attrs}", "f:1")
    assert d.attrs == attrs


@pytest.mark.parametrize("line,words", [
    ("x sip:10.0.0.1", "set id"),
    ("1", "without a destination"),
    ("1 # only comment", "without a destination"),
    ("1 sip:10.0.0.1 zz", "bad flags"),
    ("1 sip:10.0.0.1 0 -5", "bad priority"),
    ("1 sip:[::1", "bad destination URI"),
])
def test_bad_lines_name_file_and_line(line, words):
    with pytest.raises(ListError) as e:
        parse_list("# ok\n1 sip:10.0.0.9\n" + line + "\n", "my.list")
    assert len(e.value.problems) == 1
    assert e.value.problems[0].startswith("my.list:3: ")
    assert words in e.value.problems[0]


def test_every_bad_line_is_reported():
    with pytest.raises(ListError) as e:
        parse_list("x\n1 sip:10.0.0.1\ny\n1 sip:10.0.0.1\n", "l")
    assert [p.split(":")[1] for p in e.value.problems] == ["1", "3", "4"]
    assert "duplicate" in e.value.problems[2]
