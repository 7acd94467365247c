"""The socket attrs of a list line read against the listen addresses, as Kamailio reads
them (grep_sock_info, socket names), and what a line that names no listen address does
to a load: strict refuses the file, skip leaves the line out with the reason."""

from __future__ import annotations

import pytest

from gdispatch.cli import main
from gdispatch.config import Listen
from gdispatch.dispatcher.listfile import ListError, parse_line, parse_list
from gdispatch.dispatcher.sockets import SocketTable, parse_socket

A = Listen("udp", "127.0.0.1", 5060)
B = Listen("udp", "127.0.0.2", 5060, name="carrier")
BT = Listen("tcp", "127.0.0.2", 5060)
V6 = Listen("udp", "::1", 5060, name="six")
TABLE = SocketTable((A, B, BT, V6))


@pytest.mark.parametrize("text,parsed", [
    ("udp:127.0.0.2:5060", ("udp", "127.0.0.2", 5060)),
    ("127.0.0.2:5060", ("", "127.0.0.2", 5060)),
    ("TCP:127.0.0.2", ("tcp", "127.0.0.2", 0)),
    ("udp:[::1]:5060", ("udp", "::1", 5060)),
    ("[::1]", ("", "::1", 0)),
    ("udp:gw.example.com:5060", ("udp", "gw.example.com", 5060)),
])
def test_socket_forms(text, parsed):
    assert parse_socket(text) == parsed


def test_a_socket_is_found_by_address_with_or_without_proto_and_port():
    assert TABLE.by_address("udp:127.0.0.2:5060") == B
    assert TABLE.by_address("tcp:127.0.0.2:5060") == BT
    assert TABLE.by_address("127.0.0.2") == B  # any proto (UDP first), any port
    assert TABLE.by_address("127.0.0.2", "tcp") == BT  # the destination's transport first
    assert TABLE.by_address("udp:[0:0::1]:5060") == V6  # IPv6 compared as addresses
    assert TABLE.by_name("carrier") == B


@pytest.mark.parametrize("text", ["udp:127.0.0.3:5060", "udp:127.0.0.2:5061", "tls:127.0.0.2:5060",
                                  "udp:localhost:5060"])
def test_what_is_not_a_listen_address(text):
    with pytest.raises(ValueError, match=r"not a listen address of this proxy \(listening on: udp:127.0.0.1:5060, "
                                         r'udp:127.0.0.2:5060 name "carrier"'):
        TABLE.by_address(text)


def test_a_destination_gets_the_socket_of_its_attrs():
    def sockets(line: str):
        d = parse_line(line, "t", TABLE)
        assert d is not None
        return d.send_socket, d.ping_socket

    assert sockets("1 sip:10.0.0.1 0 0") == (None, None)
    assert sockets("1 sip:10.0.0.1 0 0 socket=udp:127.0.0.2:5060") == (B, B)
    assert sockets("1 sip:10.0.0.1 0 0 sockname=carrier;socket=udp:127.0.0.1:5060") == (B, B)
    assert sockets("1 sip:10.0.0.1 0 0 socket=udp:127.0.0.2:5060;ping_socket=udp:127.0.0.1:5060") == (B, A)
    assert sockets("1 sip:10.0.0.1 0 0 ping_socket=udp:127.0.0.1:5060") == (None, A)
    # Another transport: the same address in the destination's (Kamailio's get_send_socket).
    assert sockets("1 sip:10.0.0.1;transport=tcp 0 0 socket=udp:127.0.0.2:5060") == (BT, BT)
    assert sockets("1 sip:[::2] 0 0 sockname=six") == (V6, V6)
    # Without the listen addresses (a file checked offline) only the form is checked.
    d = parse_line("1 sip:10.0.0.1 0 0 socket=udp:192.0.2.9:5060", "t")
    assert d is not None and d.send_socket is None


@pytest.mark.parametrize("attrs,words", [
    ("socket=udp:192.0.2.9:5060", "bad attr socket=udp:192.0.2.9:5060: not a listen address"),
    ("sockname=nope", "bad attr sockname=nope: no listen address has this name (the names: \"carrier\", \"six\""),
    ("ping_socket=udp:192.0.2.9:5060", "bad attr ping_socket=udp:192.0.2.9:5060: not a listen address"),
    # The name is used, the address is checked all the same (Kamailio checks both).
    ("sockname=carrier;socket=udp:192.0.2.9:5060", "bad attr socket=udp:192.0.2.9:5060"),
    ("socket=udp:127.0.0.2:5060;transport=x", ""),  # an unknown attr: no problem
])
def test_a_socket_that_is_not_a_listen_address_is_a_bad_line(attrs, words):
    if not words:
        assert parse_line(f"1 sip:10.0.0.1 0 0 {attrs}", "t", TABLE) is not None
        return
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        parse_line(f"1 sip:10.0.0.1 0 0 {attrs}", "t", TABLE)


def test_a_socket_that_cannot_send_to_the_destination_is_a_bad_line():
    with pytest.raises(ValueError, match=r"udp:127.0.0.1:5060 is a udp listen address, the destination is sent over "
                                         r"tcp, and the proxy does not listen on tcp:127.0.0.1:5060"):
        parse_line("1 sip:10.0.0.1;transport=tcp 0 0 socket=udp:127.0.0.1:5060", "t", TABLE)
    with pytest.raises(ValueError, match="an IPv4 address cannot send to the IPv6 destination"):
        parse_line("1 sip:[2001:db8::1] 0 0 socket=udp:127.0.0.2:5060", "t", TABLE)


LIST = """\
1 sip:10.0.0.1 0 0 socket=udp:127.0.0.2:5060
1 sip:10.0.0.2 0 0 socket=udp:192.0.2.9:5060
2 sip:10.0.0.3 0 0 sockname=carrier
"""


def test_strict_refuses_the_file_skip_leaves_the_line_out_with_the_reason():
    with pytest.raises(ListError) as e:
        parse_list(LIST, "d.list", sockets=TABLE)
    assert e.value.problems == ["d.list:2: bad attr socket=udp:192.0.2.9:5060: not a listen address of this proxy "
                                '(listening on: udp:127.0.0.1:5060, udp:127.0.0.2:5060 name "carrier", '
                                'tcp:127.0.0.2:5060, udp:[::1]:5060 name "six")']
    dlist = parse_list(LIST, "d.list", mode="skip", sockets=TABLE)
    assert [d.uri for d in dlist.destinations()] == ["sip:10.0.0.1", "sip:10.0.0.3"]
    assert dlist.problems == e.value.problems
    assert [d.send_socket for d in dlist.destinations()] == [B, B]


def test_the_default_socket_by_name_first():
    assert TABLE.default("", "") is None
    assert TABLE.default("udp:127.0.0.1:5060", "") == A
    assert TABLE.default("udp:127.0.0.1:5060", "carrier") == B
    with pytest.raises(ValueError, match="not a listen address"):
        TABLE.default("udp:10.9.9.9:5060", "")


def test_list_check_with_a_config_checks_the_sockets(tmp_path, capsys):
    listfile = tmp_path / "d.list"
    listfile.write_text(LIST)
    config = tmp_path / "g.toml"
    config.write_text('[server]\nlisten = ["udp:127.0.0.1:5060", \'udp:127.0.0.2:5060 name "carrier"\']\n')
    assert main(["list", "check", str(listfile)]) == 0  # the form only
    capsys.readouterr()
    assert main(["list", "check", str(listfile), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{listfile}:2: bad attr socket=udp:192.0.2.9:5060: not a listen address of this proxy" in err
    config.write_text("[server]\nlisten = 5060\n")
    assert main(["list", "check", str(listfile), "--config", str(config)]) == 2
    assert "g.toml: [server].listen: expected" in capsys.readouterr().err
