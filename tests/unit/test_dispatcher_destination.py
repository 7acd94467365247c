"""Destinations and sets: typed attrs, state letters, the active view and its refresh."""

import pytest

from gdispatch.dispatcher.destination import (
    FLAG_DISABLED,
    FLAG_INACTIVE,
    FLAG_NODNSARES,
    FLAG_NOPING,
    FLAG_PROBING,
    FLAG_TRYING,
    Destination,
    DispatcherSet,
    parse_attrs,
    split_attrs,
)
from gdispatch.sip import parse_uri


def dest(port, attrs="", priority=0, flags=0):
    uri = f"sip:127.0.0.1:{port}"
    return Destination(1, uri, parse_uri(uri), flags, priority, attrs, address=("127.0.0.1", port))


def test_split_attrs_reads_like_kamailios_param_parser():
    assert split_attrs('a=1;B="x;y";flag;;c= 2 ;') == [("a", "1"), ("b", "x;y"), ("flag", ""), ("c", "2")]
    assert parse_attrs("w=1;W=2") == {"w": "2"}
    assert split_attrs("") == []
    with pytest.raises(ValueError, match="unterminated"):
        split_attrs('desc="Media')


def test_typed_attrs_are_read_once_with_kamailios_fallbacks():
    d = dest(1, "duid=gw1;weight=40;rweight=7;maxload=3;socket=udp:192.0.2.1:5060;cc=1;x=y")
    assert (d.duid, d.weight, d.rweight, d.maxload, d.socket, d.cc) == ("gw1", 40, 7, 3, "udp:192.0.2.1:5060", 1)
    assert d.attr_map["x"] == "y"
    # Built by hand with unusable values (the list parser refuses them): 0, as Kamailio.
    d = dest(2, "weight=150;rweight=abc;maxload=-1")
    assert (d.weight, d.rweight, d.maxload, d.latency_est_ms) == (0, 0, 0, None)
    assert dest(3, "latency=25").latency_est_ms == 25.0


@pytest.mark.parametrize("flags,letters", [
    (0, "AX"), (FLAG_PROBING, "AP"), (FLAG_INACTIVE, "IX"), (FLAG_INACTIVE | FLAG_PROBING, "IP"),
    (FLAG_TRYING | FLAG_PROBING, "TP"), (FLAG_DISABLED, "DX"), (FLAG_INACTIVE | FLAG_DISABLED, "IX"),
    (FLAG_NOPING, "AN"),
])
def test_state_letters_are_kamailios(flags, letters):
    assert dest(1, flags=flags).state_letters() == letters


@pytest.mark.parametrize("flags,letters", [
    (0, "IX"), (FLAG_PROBING, "IX"), (FLAG_TRYING | FLAG_PROBING, "IX"), (FLAG_INACTIVE | FLAG_PROBING, "IX"),
    (FLAG_NOPING, "IN"), (FLAG_DISABLED, "DX"), (FLAG_NODNSARES, "AX"),
])
def test_a_destination_without_an_address_shows_inactive_and_not_probed(flags, letters):
    """No address to send to (a name that does not resolve, no listen address for its
    transport): it gets no call and no ping, and shows so, unless the operator disabled it;
    a flag 16 destination is resolved when a request goes there, so it is usable."""
    d = dest(1, flags=flags)
    d.address = None
    d.unusable = "cannot resolve gw.test: no such name (NXDOMAIN)"
    assert d.state_letters() == letters
    assert d.usable == bool(flags & FLAG_NODNSARES) and d.selectable == d.usable
    if not d.usable:
        assert d.state_letters(FLAG_PROBING) == "IX"  # what it showed with other flags: unusable as well
    d.address = ("192.0.2.1", 5060)  # it resolves at last: its own flags show again
    assert d.state_letters() == dest(1, flags=flags).state_letters()


def test_capacity_and_load_helpers():
    s = DispatcherSet(1, [dest(1, "maxload=1"), dest(2), dest(3, "maxload=2")])
    a, b, c = s.destinations
    assert a.has_capacity and s.least_loaded() is a
    a.load = 1
    b.load = 4
    c.load = 1
    assert not a.has_capacity and b.has_capacity
    assert s.least_loaded() is c and s.total_load() == 6
    c.flags = FLAG_INACTIVE
    assert s.least_loaded() is b


def test_active_view_and_where_the_linear_probe_lands():
    s = DispatcherSet(1, [dest(p) for p in range(1, 6)])
    assert [d.index for d in s.destinations] == [0, 1, 2, 3, 4]
    assert s.active_from == [0, 1, 2, 3, 4]
    s.destinations[1].flags = FLAG_INACTIVE
    s.destinations[4].address = None
    assert [d.sip_uri.port for d in s.active] == [1, 3, 4]
    assert s.active_from == [0, 1, 1, 2, 0]  # index 1 probes to port 3; index 4 wraps to port 1


def test_tables_are_rebuilt_after_a_state_change_and_fixed_ones_kept():
    s = DispatcherSet(1, [dest(1), dest(2)])
    built = []
    table = s.cached("t", lambda st: built.append(len(st.active)) or object())
    assert s.cached("t", lambda st: 1 / 0) is table
    fixed = s.cached("f", lambda st: object(), fixed=True)
    s.destinations[0].flags = FLAG_DISABLED
    assert s.cached("t", lambda st: built.append(len(st.active)) or object()) is not table
    assert built == [2, 1]
    assert s.cached("f", lambda st: 1 / 0, fixed=True) is fixed


def test_rr_serial_needs_equal_positive_priorities():
    assert DispatcherSet(1, [dest(1, priority=3), dest(2, priority=3)]).rr_serial
    assert not DispatcherSet(1, [dest(1), dest(2)]).rr_serial
    assert not DispatcherSet(1, [dest(1, priority=3), dest(2, priority=2)]).rr_serial
    assert not DispatcherSet(1, []).rr_serial
