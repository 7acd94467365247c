"""The RPC methods against a fake application: Kamailio's names, arguments, structures and
fault texts; gdispatch's stricter state strings; PERSIST of add and remove; the
kamcmd-like client helpers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gdispatch.config import Listen
from gdispatch.control.client import convert_arg, format_fault, format_tree
from gdispatch.control.jsonrpc import METHOD_NOT_FOUND, RpcError
from gdispatch.control.listing import kamailio_set_order
from gdispatch.control.methods import METHODS, call, parse_state
from gdispatch.dispatcher.destination import FLAG_DISABLED, FLAG_INACTIVE, FLAG_NOPING, FLAG_PROBING, FLAG_TRYING
from gdispatch.dispatcher.listfile import ListError, load_list, parse_list
from gdispatch.dispatcher.sockets import SocketTable

DATA = Path(__file__).parent.parent / "data"

EXAMPLE = """\
# set 2: proxies
2 sip:127.0.0.1:5080;transport=tcp 0 10 class=4;prefix=448;strip=2
2 sip:127.0.0.1:5082;px=vx 0 5 duid=abc;socket=udp:192.168.0.125:5060;pipe=p10
# set 1: gateways
1 sip:127.0.0.1:7070 0 0 duid=xyz;maxload=20 # Media Gateway 1
1 sip:127.0.0.1:7072 0 5
1 sip:127.0.0.1:7074 0 40
"""


class FakeProbe:
    """What the prober attaches (gdispatch.probing.policy.ProbeState), with latency."""

    def __init__(self, iuid: str):
        from gdispatch.probing.policy import ProbeState

        state = ProbeState(iuid)
        for rtt in (1.0, 2.0, 3.75):
            state.latency.add(rtt, 0.1)
        state.latency.timeouts = 2
        state.failures = 1
        self.__dict__.update({k: getattr(state, k) for k in ProbeState.__slots__})


def resolved(dlist):
    for d in dlist.destinations():  # resolved, as the application leaves them
        d.address = (d.sip_uri.host, d.sip_uri.port or 5060)
    return dlist


class FakeApi:
    """A ControlApi over a parsed list (and `list_file`, which reload reads); records
    what the methods asked of it."""

    version = "9.8.7"
    call_load_routing = False
    sockets = None  # the socket attrs are not checked, unless a test sets a SocketTable

    def __init__(self, text: str = EXAMPLE, list_file: str = "test.list"):
        self.list_file = list_file
        self.dlist = resolved(parse_list(text, list_file))
        self.started_at = time.time() - 42
        self.ping_active = True
        self.changes: list[tuple] = []
        self.replaced: list[tuple[str, str]] = []  # (text, reason)
        self.reload_error: Exception | None = None
        self.reloads: list[str] = []  # their reasons

    def current_list(self):
        return self.dlist

    def reload(self, reason="reload requested"):
        if self.reload_error is not None:
            raise self.reload_error
        self.reloads.append(reason)
        self.dlist = resolved(load_list(self.list_file))

    def replace_list(self, text, reason):
        self.replaced.append((text, reason))
        self.dlist = resolved(parse_list(text, self.list_file))

    def state_changed(self, dest, old_flags, reason):
        self.changes.append((dest.uri, old_flags, dest.flags, reason))

    def stats(self):
        return {"requests": {"INVITE": 12}, "up": True}


@pytest.fixture
def api(tmp_path):
    path = tmp_path / "d.list"
    path.write_text(EXAMPLE)
    return FakeApi(EXAMPLE, str(path))


def rows(api, setid):
    """Set `setid` of the running list as (uri, flags, priority, attrs, description)."""
    dset = api.dlist.get(setid)
    return sorted((d.uri, d.flags, d.priority, d.attrs, d.description) for d in dset.destinations) if dset else []


def fault(api, method, *params):
    with pytest.raises(RpcError) as info:
        call(api, method, list(params))
    return info.value


def dest(api, setid, uri):
    return next(d for d in api.dlist.get(setid).destinations if d.uri == uri)


# -- dispatcher.list ---------------------------------------------------------------------------


ZERO_LATENCY = {"AVG": 0.0, "STD": 0.0, "EST": 0.0, "MAX": 0, "TIMEOUT": 0}


def test_list_has_kamailio_56s_structure_fields_and_order(api):
    out = call(api, "dispatcher.list")
    assert list(out) == ["NRSETS", "RECORDS"]
    assert out["NRSETS"] == 2
    assert [r["SET"]["ID"] for r in out["RECORDS"]] == [1, 2]  # set 2 first in the file: Kamailio's tree
    targets = out["RECORDS"][0]["SET"]["TARGETS"]
    assert [t["DEST"]["URI"] for t in targets] == ["sip:127.0.0.1:7074", "sip:127.0.0.1:7072", "sip:127.0.0.1:7070"]
    # No attrs: no ATTRS; LATENCY always (gdispatch measures as ds_ping_latency_stats=1);
    # no RUNTIME without a call-load route (Kamailio's ds_hash_size); nothing else.
    assert targets[0]["DEST"] == {"URI": "sip:127.0.0.1:7074", "FLAGS": "AX", "PRIORITY": 40,
                                  "LATENCY": ZERO_LATENCY}
    with_attrs = targets[2]["DEST"]
    assert list(with_attrs) == ["URI", "FLAGS", "PRIORITY", "ATTRS", "LATENCY"]
    assert list(with_attrs["ATTRS"].items()) == [
        ("BODY", "duid=xyz;maxload=20"), ("DUID", "xyz"), ("MAXLOAD", 20), ("WEIGHT", 0), ("RWEIGHT", 0),
        ("SOCKET", None), ("SOCKNAME", None), ("OBPROXY", None)]
    socket_dest = out["RECORDS"][1]["SET"]["TARGETS"][1]["DEST"]
    assert socket_dest["ATTRS"]["SOCKET"] == "udp:192.168.0.125:5060"


def test_list_short_leaves_out_attrs(api):
    out = call(api, "dispatcher.list", ["short"])
    for rec in out["RECORDS"]:
        for t in rec["SET"]["TARGETS"]:
            assert list(t["DEST"]) == ["URI", "FLAGS", "PRIORITY", "LATENCY"]
    assert call(api, "dispatcher.list", ["SHORT"]) == out  # the mode is case-insensitive, as in Kamailio


def test_list_full_adds_the_address_fields(api):
    dest(api, 1, "sip:127.0.0.1:7074").address = None
    out = call(api, "dispatcher.list", ["full"])
    targets = out["RECORDS"][0]["SET"]["TARGETS"]
    d = targets[1]["DEST"]
    assert list(d) == ["URI", "FLAGS", "PRIORITY", "HOST", "IPADDR", "PORT", "PROTOID", "DNSTIME_SEC",
                       "DNSTIME_USEC", "LATENCY"]  # Kamailio 5.6: ATTRS in full too only with attrs
    assert (d["HOST"], d["IPADDR"], d["PORT"], d["PROTOID"]) == ("127.0.0.1", "127.0.0.1", 7072, 0)
    assert list(targets[2]["DEST"])[-2:] == ["ATTRS", "LATENCY"]
    unresolved = targets[0]["DEST"]
    assert (unresolved["IPADDR"], unresolved["PORT"]) == ("", 7074)
    tcp = out["RECORDS"][1]["SET"]["TARGETS"][0]["DEST"]
    assert tcp["PROTOID"] == 2  # Kamailio's PROTO_TCP


def test_list_shows_a_destination_without_an_address_ix_and_why_in_full_mode(api):
    d = dest(api, 1, "sip:127.0.0.1:7072")
    d.address = None
    d.unusable = "no UDP IPv4 listen address to send from (add one to [server].listen)"
    normal = call(api, "dispatcher.list")["RECORDS"][0]["SET"]["TARGETS"][1]["DEST"]
    assert normal["FLAGS"] == "IX" and "REASON" not in normal
    full = call(api, "dispatcher.list", ["full"])["RECORDS"][0]["SET"]["TARGETS"]
    assert full[1]["DEST"]["FLAGS"] == "IX" and full[1]["DEST"]["REASON"] == d.unusable
    assert list(full[1]["DEST"])[list(full[1]["DEST"]).index("DNSTIME_USEC") + 1] == "REASON"
    assert all("REASON" not in t["DEST"] for i, t in enumerate(full) if i != 1)  # the usable ones


def test_list_full_port_and_proto_are_the_uris_as_kamailio_shows_them():
    # What kamcmd printed for these lines: PORT 0 when the URI names none, PROTOID from
    # the transport parameter only (0 for a sips: URI without one).
    api = FakeApi("1 sip:127.0.0.2\n1 sips:127.0.0.1:5061\n1 sip:gw@127.0.0.1:5062;transport=udp\n")
    shown = [(t["DEST"]["URI"], t["DEST"]["PORT"], t["DEST"]["PROTOID"])
             for t in call(api, "dispatcher.list", ["full"])["RECORDS"][0]["SET"]["TARGETS"]]
    assert shown == [("sip:127.0.0.2", 0, 0), ("sips:127.0.0.1:5061", 5061, 0),
                     ("sip:gw@127.0.0.1:5062;transport=udp", 5062, 1)]


def test_list_latency_in_kamailios_units_and_types(api):
    d = dest(api, 1, "sip:127.0.0.1:7072")
    d.probe = FakeProbe("1f")
    shown = call(api, "dispatcher.list")["RECORDS"][0]["SET"]["TARGETS"][1]["DEST"]
    assert list(shown) == ["URI", "FLAGS", "PRIORITY", "LATENCY"]
    lat = shown["LATENCY"]
    assert list(lat) == ["AVG", "STD", "EST", "MAX", "TIMEOUT"]
    assert lat == {"AVG": 2.25, "STD": 1.392, "EST": 2.25, "MAX": 3, "TIMEOUT": 2}  # milliseconds
    assert [type(v) for v in lat.values()] == [float, float, float, int, int]  # binrpc's f, f, f, d, d


def test_list_shows_runtime_when_a_route_dispatches_by_call_load(api):
    dest(api, 1, "sip:127.0.0.1:7072").load = 3
    api.call_load_routing = True  # Kamailio: ds_hash_size set, as its algorithm 10 needs
    shown = call(api, "dispatcher.list")["RECORDS"][0]["SET"]["TARGETS"][1]["DEST"]
    assert list(shown) == ["URI", "FLAGS", "PRIORITY", "LATENCY", "RUNTIME"]
    assert shown["RUNTIME"] == {"DLGLOAD": 3}
    assert list(call(api, "dispatcher.list", ["short"])["RECORDS"][0]["SET"]["TARGETS"][1]["DEST"]) == [
        "URI", "FLAGS", "PRIORITY", "LATENCY", "RUNTIME"]


def test_list_extended_adds_gdispatchs_own_fields_after_kamailios(api):
    d = dest(api, 1, "sip:127.0.0.1:7070")
    d.probe = FakeProbe("1f")
    d.load = 2
    targets = call(api, "dispatcher.list", ["extended"])["RECORDS"][0]["SET"]["TARGETS"]
    shown = targets[2]["DEST"]
    assert list(shown) == ["URI", "FLAGS", "PRIORITY", "HOST", "IPADDR", "PORT", "PROTOID", "DNSTIME_SEC",
                           "DNSTIME_USEC", "ATTRS", "LATENCY", "RUNTIME", "IDX", "IUID", "PROBING_COUNT",
                           "DESCRIPTION"]
    assert (shown["IDX"], shown["IUID"], shown["PROBING_COUNT"], shown["DESCRIPTION"]) == (2, "1f", 1,
                                                                                            "Media Gateway 1")
    assert shown["RUNTIME"] == {"DLGLOAD": 2}
    bare = targets[0]["DEST"]  # ATTRS, RUNTIME and the extras always, for machines
    assert (bare["ATTRS"]["BODY"], bare["ATTRS"]["DUID"], bare["IDX"], bare["IUID"], bare["DESCRIPTION"]) == (
        "", None, 0, None, None)


def test_list_of_no_sets_is_kamailios_fault():
    err = fault(FakeApi(""), "dispatcher.list")
    assert (err.code, err.message) == (500, "No Destination Sets")


def test_list_refuses_an_unknown_mode(api):
    err = fault(api, "dispatcher.list", "fll")
    assert (err.code, err.message) == (500, "Invalid Parameters")
    assert "short, full, extended or cluster" in err.data


@pytest.mark.parametrize("first_named,printed", [
    # As kamcmd printed them, the sets named in this order by the list file.
    ([3, 1, 2, 5, 4], [1, 3, 5, 4, 2]),
    ([3, 1, 2, 5, 4, 6, 7], [1, 3, 2, 5, 7, 6, 4]),
    ([1, 2], [2, 1]),
    ([2, 1], [1, 2]),
    ([1], [1]),
    ([], []),
])
def test_sets_in_the_order_kamailio_prints_them(first_named, printed):
    assert kamailio_set_order(first_named) == printed


def test_set_order_is_a_balanced_tree_walked_children_first():
    import random

    rng = random.Random(7)
    for _ in range(200):
        ids = rng.sample(range(1000), rng.randint(1, 60))
        order = kamailio_set_order(ids)
        assert sorted(order) == sorted(ids)

        def check(seq):  # a post-order of a binary search tree, heights within one
            if not seq:
                return 0
            root, rest = seq[-1], seq[:-1]
            left = [x for x in rest if x < root]
            assert rest == left + [x for x in rest if x > root]
            hl, hr = check(left), check(rest[len(left):])
            assert abs(hl - hr) <= 1
            return 1 + max(hl, hr)

        check(order)


def test_list_sets_follow_the_file_order_as_kamailios_tree():
    api = FakeApi("3 sip:10.0.0.3\n1 sip:10.0.0.1\n2 sip:10.0.0.2\n5 sip:10.0.0.5\n4 sip:10.0.0.4\n"
                  "1 sip:10.0.0.11\n")
    assert [r["SET"]["ID"] for r in call(api, "dispatcher.list")["RECORDS"]] == [1, 3, 5, 4, 2]


# -- state strings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text,bits", [
    # Kamailio's RPC forms: a digit or a letter, then an optional p
    ("0", FLAG_INACTIVE), ("0p", FLAG_INACTIVE | FLAG_PROBING), ("1", 0), ("1p", FLAG_PROBING),
    ("2", FLAG_DISABLED), ("2p", FLAG_DISABLED), ("3", FLAG_TRYING), ("3P", FLAG_TRYING | FLAG_PROBING),
    ("a", 0), ("ap", FLAG_PROBING), ("i", FLAG_INACTIVE), ("ip", FLAG_INACTIVE | FLAG_PROBING),
    ("d", FLAG_DISABLED), ("t", FLAG_TRYING), ("tp", FLAG_TRYING | FLAG_PROBING),
    # what dispatcher.list shows, typed back (the seed: `set_state dx 1 sip:mg1:5060`)
    ("dx", FLAG_DISABLED), ("DX", FLAG_DISABLED), ("AP", FLAG_PROBING), ("IX", FLAG_INACTIVE), ("AN", 0),
    ("1x", 0),
    # letters combine like Kamailio's script functions; a clears what came before
    ("it", FLAG_INACTIVE | FLAG_TRYING), ("ipa", 0), ("dap", FLAG_PROBING), ("p", FLAG_PROBING),
    (" Ip ", FLAG_INACTIVE | FLAG_PROBING),
])
def test_state_strings(text, bits):
    assert parse_state(text) == bits


@pytest.mark.parametrize("text", ["xx", "4", "1q", "z", "apx1", "0pp", "x", "-1", "ab"])
def test_unknown_state_strings_are_refused(text):
    with pytest.raises(RpcError) as info:
        parse_state(text)
    assert (info.value.code, info.value.message) == (500, "Unknown State Value")


def test_empty_state_is_an_invalid_state_parameter():
    with pytest.raises(RpcError) as info:
        parse_state("")
    assert info.value.message == "Invalid State Parameter"


# -- set_state / set_duid_state ---------------------------------------------------------------------


def test_set_state_disables_one_destination_and_tells_the_application(api):
    d = dest(api, 1, "sip:127.0.0.1:7072")
    assert d in api.dlist.get(1).active
    assert call(api, "dispatcher.set_state", ["dx", 1, "sip:127.0.0.1:7072"]) == "Ok. Dispatcher state updated."
    assert d.state_letters() == "DX"
    assert d not in api.dlist.get(1).active
    assert api.changes == [("sip:127.0.0.1:7072", 0, FLAG_DISABLED, "rpc dispatcher.set_state dx")]
    assert call(api, "dispatcher.set_state", ["ap", 1, "sip:127.0.0.1:7072"])
    assert d.state_letters() == "AP" and d in api.dlist.get(1).active


def test_set_state_matches_the_uri_without_case_and_adds_the_scheme(api):
    call(api, "dispatcher.set_state", ["i", 1, "SIP:127.0.0.1:7072"])
    call(api, "dispatcher.set_state", ["t", 1, "127.0.0.1:7074"])
    assert dest(api, 1, "sip:127.0.0.1:7072").state_letters() == "IX"
    assert dest(api, 1, "sip:127.0.0.1:7074").state_letters() == "TX"


def test_set_state_all_and_only_changed_destinations_are_reported(api):
    call(api, "dispatcher.set_state", ["ip", 2, "sip:127.0.0.1:5080;transport=tcp"])
    api.changes.clear()
    call(api, "dispatcher.set_state", ["ip", 2, "all"])
    assert [d.state_letters() for d in api.dlist.get(2).destinations] == ["IP", "IP"]
    assert [c[0] for c in api.changes] == ["sip:127.0.0.1:5082;px=vx"]
    assert api.dlist.get(2).active == ()


def test_set_state_keeps_the_no_ping_and_no_dns_bits():
    api = FakeApi("1 sip:127.0.0.1:7070 48\n")
    call(api, "dispatcher.set_state", ["ip", 1, "all"])
    assert dest(api, 1, "sip:127.0.0.1:7070").flags == 48 | FLAG_INACTIVE | FLAG_PROBING
    call(api, "dispatcher.set_state", ["a", 1, "all"])
    assert dest(api, 1, "sip:127.0.0.1:7070").flags == 48
    assert dest(api, 1, "sip:127.0.0.1:7070").state_letters() == "AN"
    assert FLAG_NOPING & 48


@pytest.mark.parametrize("params,detail", [
    (["dx", 7, "all"], "no set 7"),
    (["dx", 1, "sip:127.0.0.1:9999"], "no destination sip:127.0.0.1:9999 in set 1"),
])
def test_set_state_of_what_is_not_there_fails(api, params, detail):
    err = fault(api, "dispatcher.set_state", *params)
    assert (err.code, err.message, err.data) == (500, "State Update Failed", detail)
    assert api.changes == []


def test_set_state_needs_three_parameters_of_the_right_kind(api):
    assert fault(api, "dispatcher.set_state", "dx", 1).message == "Invalid Parameters"
    err = fault(api, "dispatcher.set_state", "dx", "one", "all")
    assert (err.message, err.data) == ("Invalid Parameters", "GROUP: expected a whole number, got 'one'")
    assert fault(api, "dispatcher.set_state", "dx", 1, "all", "extra").message == "Invalid Parameters"
    assert fault(api, "dispatcher.set_state", "zz", 1, "all").message == "Unknown State Value"


def test_set_state_takes_the_group_as_text_and_the_address_as_a_number():
    # kamcmd sends "1" as a number; a client may send it as text. Both are fine.
    api = FakeApi("5 sip:10.0.0.1 0 0 duid=7\n")
    call(api, "dispatcher.set_state", ["d", "5", "all"])
    call(api, "dispatcher.set_duid_state", ["i", 5, 7])
    assert api.dlist.get(5).destinations[0].flags == FLAG_INACTIVE


SAME_GATEWAY = """\
1 sip:127.0.0.1:5060 0 5 duid=bronze;weight=20
1 sip:127.0.0.1:5060 0 5 duid=silver;weight=30
1 sip:127.0.0.1:5060 0 5 duid=gold;weight=50
1 sip:127.0.0.1:5070 0 0
"""


def test_set_state_by_address_changes_every_destination_of_that_uri():
    api = FakeApi(SAME_GATEWAY)
    call(api, "dispatcher.set_state", ["dx", 1, "sip:127.0.0.1:5060"])
    assert [d.state_letters() for d in api.dlist.get(1).destinations] == ["DX", "DX", "DX", "AX"]


def test_set_state_by_idx_changes_one_destination_of_a_shared_uri():
    api = FakeApi(SAME_GATEWAY)
    listed = call(api, "dispatcher.list", ["extended"])["RECORDS"][0]["SET"]["TARGETS"]
    silver = next(t["DEST"]["IDX"] for t in listed if t["DEST"]["ATTRS"]["DUID"] == "silver")
    assert call(api, "dispatcher.set_state", ["dx", 1, f"idx={silver}"]) == "Ok. Dispatcher state updated."
    assert [(d.duid, d.state_letters()) for d in api.dlist.get(1).destinations] == [
        ("bronze", "AX"), ("silver", "DX"), ("gold", "AX"), ("", "AX")]
    assert api.changes == [("sip:127.0.0.1:5060", 0, FLAG_DISABLED, "rpc dispatcher.set_state dx")]


def test_set_state_by_duid_form_changes_that_destination():
    api = FakeApi(SAME_GATEWAY)
    call(api, "dispatcher.set_state", ["ip", 1, "duid=Gold"])  # duids compared without case, as set_duid_state
    assert [d.state_letters() for d in api.dlist.get(1).destinations] == ["AX", "AX", "IP", "AX"]


@pytest.mark.parametrize("target,message,detail", [
    ("idx=4", "State Update Failed", "no destination idx=4 in set 1"),
    ("duid=platinum", "State Update Failed", "no destination duid=platinum in set 1"),
    ("idx=x", "Invalid Parameters", "ADDRESS 'idx=x': idx= takes the IDX that dispatcher.list extended shows "
                                    "(0, 1, ...)"),
    ("idx=-1", "Invalid Parameters", "ADDRESS 'idx=-1': idx= takes the IDX that dispatcher.list extended shows "
                                     "(0, 1, ...)"),
    ("idx=\u00b2", "Invalid Parameters", "ADDRESS 'idx=\u00b2': idx= takes the IDX that dispatcher.list extended "
                                         "shows (0, 1, ...)"),  # a digit to str.isdigit, not to int()
])
def test_set_state_by_idx_or_duid_of_what_is_not_there(target, message, detail):
    api = FakeApi(SAME_GATEWAY)
    err = fault(api, "dispatcher.set_state", "dx", 1, target)
    assert (err.message, err.data) == (message, detail)
    assert api.changes == []


def test_set_duid_state(api):
    call(api, "dispatcher.set_duid_state", ["dx", 2, "ABC"])
    assert dest(api, 2, "sip:127.0.0.1:5082;px=vx").state_letters() == "DX"
    assert api.changes[0][3] == "rpc dispatcher.set_duid_state dx"
    err = fault(api, "dispatcher.set_duid_state", "dx", 2, "nope")
    assert (err.message, err.data) == ("State Update Failed", "no destination with duid nope in set 2")


# -- ping_active, reload, add, remove ----------------------------------------------------------------


def test_ping_active_reads_and_sets(api):
    assert call(api, "dispatcher.ping_active") == {"OldPingState": 1}
    assert call(api, "dispatcher.ping_active", [0]) == {"NewPingState": 0, "OldPingState": 1}
    assert api.ping_active is False
    assert call(api, "dispatcher.ping_active", ["1"]) == {"NewPingState": 1, "OldPingState": 0}
    assert fault(api, "dispatcher.ping_active", 5).message == "Invalid Parameters"
    assert api.ping_active is True


def test_reload(api):
    assert call(api, "dispatcher.reload") == "Ok. Dispatcher successfully reloaded."
    assert len(api.reloads) == 1


def test_reload_names_the_destinations_it_cannot_use_after_kamailios_answer(api):
    def unresolved(dlist):
        for d in dlist.destinations():
            if d.uri == "sip:127.0.0.1:7072":
                d.address, d.unusable = None, "cannot resolve gw.test: no such name (NXDOMAIN)"
            elif d.uri == "sip:127.0.0.1:7074":
                d.address = None
        return dlist

    loads = api.reload

    def reload(reason="reload requested"):
        loads(reason)
        unresolved(api.dlist)

    api.reload = reload
    assert call(api, "dispatcher.reload").splitlines() == [
        "Ok. Dispatcher successfully reloaded.",  # what kamcmd scripts match, alone on its line
        "not usable: set 1 sip:127.0.0.1:7074: no address",  # in try order: priority 40 first
        "not usable: set 1 sip:127.0.0.1:7072: cannot resolve gw.test: no such name (NXDOMAIN)"]


def test_reload_of_a_bad_file_is_kamailios_fault_with_each_problem_once(api):
    api.reload_error = ListError(["d.list:3: bad flags 'x'", "d.list:9: set id 1 without a destination"])
    err = fault(api, "dispatcher.reload")
    assert (err.code, err.message) == (500, "Reload Failed")
    assert err.data == ["d.list:3: bad flags 'x'", "d.list:9: set id 1 without a destination"]
    api.reload_error = RpcError(500, "Reload Failed", ["d.list:4: bad priority"])
    assert fault(api, "dispatcher.reload").data == ["d.list:4: bad priority"]


def test_add_with_kamailios_arguments_goes_to_the_running_list_only(api):
    assert call(api, "dispatcher.add", [3, "sip:mg3:5060"]) == "Ok. Dispatcher destination added."
    call(api, "dispatcher.add", [3, "mg4:5060", 8, 5, "duid=mg4;weight=50"])
    assert rows(api, 3) == [("sip:mg3:5060", 0, 0, "", ""), ("sip:mg4:5060", 8, 5, "duid=mg4;weight=50", "")]
    assert [reason for _, reason in api.replaced] == ["dispatcher.add", "dispatcher.add"]
    assert len(rows(api, 1)) == 3 and len(rows(api, 2)) == 2  # the others kept
    assert api.reloads == []
    assert open(api.list_file).read() == EXAMPLE


def test_add_with_description_and_persist_edits_the_file_and_reloads_it(api):
    # The seed's kamctl line, as an RPC: empty attrs, a description; then PERSIST=1.
    call(api, "dispatcher.add", [1, "sip:mg3:5060", 0, 0, "", "Media Gateway 3", 1])
    assert "1 sip:mg3:5060 0 0 # Media Gateway 3\n" in open(api.list_file).read()
    assert (api.reloads, api.replaced) == (["dispatcher.add"], [])
    assert ("sip:mg3:5060", 0, 0, "", "Media Gateway 3") in rows(api, 1)


def test_add_by_name(api):
    call(api, "dispatcher.add", {"group": 4, "address": "sip:a", "flags": "0x8"})
    assert rows(api, 4) == [("sip:a", 8, 0, "", "")]
    assert fault(api, "dispatcher.add", *[]).message == "Invalid Parameters"
    with pytest.raises(RpcError, match="Invalid Parameters"):
        call(api, "dispatcher.add", {"group": 4, "address": "sip:a", "priority": 1})  # FLAGS left out


@pytest.mark.parametrize("params,detail", [
    ([1, "sip:a b"], "one word"),
    ([1, "sip:[bad"], "bad destination URI"),
    ([1, "sip:a", 99], "bad flags"),
    ([1, "sip:a", 0, 0, "weight=500"], "bad attr weight=500"),
    ([1, "sip:a", 0, 0, "", "two\nlines"], "one line"),
    ([1, "sip:127.0.0.1:7070", 0, 0, "duid=xyz"], "already in set 1"),
    ([1, "sip:127.0.0.9:5060", 0, 0, "duid=XYZ"], "duid=XYZ already names sip:127.0.0.1:7070 in set 1"),
    ([1, "sip:a", 0, 0, "", "", 2], "PERSIST"),
])
def test_add_refuses_what_the_list_file_would_refuse(api, params, detail):
    err = fault(api, "dispatcher.add", *params)
    assert err.message in ("Adding dispatcher dst failed", "Invalid Parameters")
    assert detail in err.data
    assert (api.replaced, api.reloads) == ([], [])


@pytest.mark.parametrize("persist", [0, 1])
def test_add_refuses_a_socket_that_is_not_a_listen_address(api, persist):
    """As a reload of the file would refuse the line: nothing changes, the file neither."""
    api.sockets = SocketTable((Listen("udp", "127.0.0.1", 5060), Listen("udp", "127.0.0.2", 5060, "carrier")))
    err = fault(api, "dispatcher.add", 1, "sip:127.0.0.1:7076", 0, 0, "socket=udp:192.0.2.9:5060", "", persist)
    assert err.message == "Adding dispatcher dst failed"
    assert "bad attr socket=udp:192.0.2.9:5060: not a listen address of this proxy" in err.data
    assert (api.replaced, api.reloads) == ([], [])
    assert open(api.list_file).read() == EXAMPLE
    call(api, "dispatcher.add", [1, "sip:127.0.0.1:7076", 0, 0, "sockname=carrier", "", persist])
    assert ("sip:127.0.0.1:7076", 0, 0, "sockname=carrier", "") in rows(api, 1)


def test_add_of_the_same_uri_with_another_duid_is_fine(api):
    call(api, "dispatcher.add", [1, "sip:127.0.0.1:7070", 0, 0, "duid=other"])
    assert len(api.replaced) == 1
    assert [r[0] for r in rows(api, 1)].count("sip:127.0.0.1:7070") == 2


def test_a_list_file_that_cannot_be_edited_is_a_fault(api):
    with open(api.list_file, "a") as f:
        f.write("1 sip:127.0.0.1:7076 x\n")  # the file does not load: listedit leaves it alone
    err = fault(api, "dispatcher.add", 1, "sip:mg9", 0, 0, "", "", 1)
    assert err.message == "Adding dispatcher dst failed"
    assert err.data.endswith("d.list: not changed: the file would not load after this edit")
    err = fault(api, "dispatcher.remove", 1, "sip:127.0.0.1:7072", 1)
    assert err.message == "Removing dispatcher dst failed"
    assert err.data.endswith("d.list: not changed: the file would not load after this edit")
    assert (api.replaced, api.reloads) == ([], [])


def test_remove_from_the_running_list_and_with_persist_from_the_file(api):
    assert call(api, "dispatcher.remove", [1, "sip:127.0.0.1:7072"]) == "Ok. Dispatcher destination removed."
    assert [r[0] for r in rows(api, 1)] == ["sip:127.0.0.1:7070", "sip:127.0.0.1:7074"]
    assert [reason for _, reason in api.replaced] == ["dispatcher.remove"]
    assert open(api.list_file).read() == EXAMPLE
    call(api, "dispatcher.remove", [1, "127.0.0.1:7074", 1])
    assert "7074" not in open(api.list_file).read()
    assert api.reloads == ["dispatcher.remove"]
    assert [r[0] for r in rows(api, 1)] == ["sip:127.0.0.1:7070", "sip:127.0.0.1:7072"]  # as the file says


def test_remove_of_what_is_not_there_is_ok_and_changes_nothing(api):
    # Kamailio answers Ok: there is nothing to remove.
    for params in ([1, "sip:nowhere"], [7, "sip:127.0.0.1:7072"], [1, "sip:nowhere", 1]):
        assert call(api, "dispatcher.remove", params) == "Ok. Dispatcher destination removed."
    assert (api.replaced, api.reloads) == ([], [])
    assert open(api.list_file).read() == EXAMPLE


def test_remove_with_persist_of_what_only_the_file_still_has(api):
    call(api, "dispatcher.remove", [1, "sip:127.0.0.1:7072"])  # from the running list only
    assert call(api, "dispatcher.remove", [1, "sip:127.0.0.1:7072", 1]) == "Ok. Dispatcher destination removed."
    assert "7072" not in open(api.list_file).read()
    assert api.reloads == ["dispatcher.remove"]


def test_add_and_remove_rebuild_the_list_in_kamailios_set_order():
    # Kamailio rebuilds its tree from the old one walked as dispatcher.list prints it, so
    # its set order changes after an add or a remove; the running list is written back
    # that way. The orders are what kamcmd printed after the same commands.
    api = FakeApi("3 sip:10.0.0.3\n1 sip:10.0.0.1\n2 sip:10.0.0.2\n5 sip:10.0.0.5\n4 sip:10.0.0.4\n")

    def printed():
        return [r["SET"]["ID"] for r in call(api, "dispatcher.list")["RECORDS"]]

    assert printed() == [1, 3, 5, 4, 2]
    call(api, "dispatcher.add", [6, "sip:10.0.0.6"])
    assert [line.split()[0] for line in api.replaced[-1][0].splitlines()] == ["1", "3", "5", "4", "2", "6"]
    assert printed() == [2, 1, 4, 6, 5, 3]
    call(api, "dispatcher.remove", [2, "sip:10.0.0.2"])
    assert printed() == [3, 1, 5, 6, 4]


# -- hash --------------------------------------------------------------------------------------------


def _vectors(n_rows: int):
    rows = []
    for line in (DATA / "kamailio-hash-vectors.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        nslots, key1, key2, hashid, slot = line.split("\t")
        if hashid != "None":
            rows.append((int(nslots), key1, key2, int(hashid), int(slot)))
    return rows[:: max(1, len(rows) // n_rows)]


@pytest.mark.parametrize("nslots,key1,key2,hashid,slot", _vectors(12))
def test_hash_prints_what_kamailio_printed(api, nslots, key1, key2, hashid, slot):
    params = [nslots, key1] + ([key2] if key2 else [])
    assert call(api, "dispatcher.hash", params) == {"hashid": hashid, "slot": slot}


def test_hash_of_numbers_hashes_their_text_and_zero_slots_is_slot_0(api):
    assert call(api, "dispatcher.hash", [10, 123]) == call(api, "dispatcher.hash", [10, "123"])
    assert call(api, "dispatcher.hash", [0, "alice", "example.com"]) == {"hashid": 1442294598, "slot": 0}
    assert call(api, "dispatcher.hash", [10, "alice", "example.com"]) == {"hashid": 1442294598, "slot": 8}
    assert fault(api, "dispatcher.hash", 10).message == "Invalid Parameters"


# -- core, stats, system -----------------------------------------------------------------------------


def test_core_version_and_uptime(api):
    assert call(api, "core.version").startswith("gdispatch 9.8.7 (")
    up = call(api, "core.uptime")
    assert list(up) == ["now", "up_since", "uptime"]
    assert 41 <= up["uptime"] <= 44
    assert up["up_since"] == time.ctime(api.started_at)


def test_stats_passes_the_applications_dict_through(api):
    assert call(api, "stats") == {"requests": {"INVITE": 12}, "up": True}


def test_system_methods(api):
    names = call(api, "system.listMethods")
    assert names == sorted(METHODS)
    for name in ("dispatcher.list", "dispatcher.reload", "dispatcher.set_state", "dispatcher.set_duid_state",
                 "dispatcher.ping_active", "dispatcher.add", "dispatcher.remove", "dispatcher.hash",
                 "core.version", "core.uptime", "stats", "system.listMethods"):
        assert name in names
    assert call(api, "system.methodHelp", ["dispatcher.set_state"]).startswith(
        "dispatcher.set_state STATE GROUP ADDRESS\n")
    assert "[FLAGS [PRIORITY [ATTRS [DESCRIPTION [PERSIST]]]]]" in call(api, "system.methodHelp", ["dispatcher.add"])


def test_unknown_method(api):
    err = fault(api, "dispatcher.nope")
    assert (err.code, err.message) == (METHOD_NOT_FOUND, "command dispatcher.nope not found")
    assert err.as_error() == {"code": METHOD_NOT_FOUND, "message": "command dispatcher.nope not found"}


# -- the client's helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize("word,value", [
    ("1", 1), ("5060", 5060), ("-3", -3), ("0", 0),
    ("007", "007"), ("+5", "+5"), ("-0", "-0"), ("1.5", "1.5"), ("dx", "dx"), ("", ""),
    ("sip:mg1:5060", "sip:mg1:5060"), ("s:123", "123"), ("i:42", 42), ("i:0x10", 16), ("١", "١"),
])
def test_convert_arg_like_kamcmd(word, value):
    assert convert_arg(word) == value
    assert type(convert_arg(word)) is type(value)


def test_format_tree_prints_like_kamcmd():
    result = {"NRSETS": 1, "RECORDS": [{"SET": {"ID": 1, "TARGETS": [
        {"DEST": {"URI": "sip:a", "FLAGS": "AP", "ATTRS": {"DUID": None}}},
        {"DEST": {"URI": "sip:b", "FLAGS": "DX"}},
    ]}}]}
    assert format_tree(result) == (
        "{\n"
        "\tNRSETS: 1\n"
        "\tRECORDS: {\n"
        "\t\tSET: {\n"
        "\t\t\tID: 1\n"
        "\t\t\tTARGETS: {\n"
        "\t\t\t\tDEST: {\n"
        "\t\t\t\t\tURI: sip:a\n"
        "\t\t\t\t\tFLAGS: AP\n"
        "\t\t\t\t\tATTRS: {\n"
        "\t\t\t\t\t\tDUID: <null string>\n"
        "\t\t\t\t\t}\n"
        "\t\t\t\t}\n"
        "\t\t\t\tDEST: {\n"
        "\t\t\t\t\tURI: sip:b\n"
        "\t\t\t\t\tFLAGS: DX\n"
        "\t\t\t\t}\n"
        "\t\t\t}\n"
        "\t\t}\n"
        "\t}\n"
        "}"
    )


def test_format_tree_of_text_lists_and_structs_in_arrays():
    assert format_tree("Ok. Dispatcher state updated.") == "Ok. Dispatcher state updated."
    assert format_tree(["core.uptime", "stats"]) == "core.uptime\nstats"
    assert format_tree({"hashid": -389237290, "slot": 0}) == "{\n\thashid: -389237290\n\tslot: 0\n}"
    assert format_tree([{"a": 1, "b": 2}]) == "{\n\ta: 1\n\tb: 2\n}"
    assert format_tree({"x": [1, [2, 3]], "ok": True}) == (
        "{\n\tx: {\n\t\t1\n\t\t{\n\t\t\t2\n\t\t\t3\n\t\t}\n\t}\n\tok: true\n}")


@pytest.mark.parametrize("value,printed", [
    # What kamcmd printed for Kamailio's doubles (LATENCY): whole numbers bare, others
    # with six decimals of the three binrpc carries.
    (0.0, "0"), (21.0, "21"), (6.25, "6.250000"), (10.964, "10.964000"), (0.7071, "0.707000"),
    (0.0004, "0"), (-1.5, "-1.500000"), (-2.0, "-2"),
])
def test_format_tree_prints_doubles_as_kamcmd(value, printed):
    assert format_tree({"AVG": value, "MAX": 24}) == f"{{\n\tAVG: {printed}\n\tMAX: 24\n}}"


def test_format_fault_as_kamcmd_and_the_details_apart():
    assert format_fault(RpcError(500, "Reload Failed", ["d.list:3: bad flags 'x'", "d.list:4: bad uri"])) == (
        "error: 500 - Reload Failed", ["d.list:3: bad flags 'x'", "d.list:4: bad uri"])
    assert format_fault(RpcError(500, "State Update Failed", "no set 7")) == (
        "error: 500 - State Update Failed", ["no set 7"])
    assert format_fault(RpcError(500, "Removing dispatcher dst failed")) == (
        "error: 500 - Removing dispatcher dst failed", [])
    # Kamailio's ctl answers an unknown command with 500; JSON-RPC's own code shows as that.
    assert format_fault(RpcError(METHOD_NOT_FOUND, "command no.such not found")) == (
        "error: 500 - command no.such not found", [])
    assert format_fault(RpcError(-32001, "Unauthorized")) == ("error: -32001 - Unauthorized", [])


def test_list_cluster_shows_every_nodes_view_of_each_destination(api):
    """``dispatcher.list cluster``: each DEST gets NODES, one entry per node that has
    it (gdispatch.ha.node.Node.views), and the rest is the list without a mode."""
    from gdispatch.ha.shared import dest_field

    first = api.dlist.sets[kamailio_set_order(list(api.dlist.sets))[0]].destinations[0]
    views = {"a": {dest_field(first): "AP|1.500|3"}, "b": {dest_field(first): "IP|0.000|0", "other": "AP|0|0"}}
    api.node_views = lambda: ("a", views, "")
    tree = call(api, "dispatcher.list", ["cluster"])
    plain = call(api, "dispatcher.list", [])
    targets = tree["RECORDS"][0]["SET"]["TARGETS"]
    assert targets[0]["DEST"]["NODES"] == [{"NODE": "a", "FLAGS": "AP", "EST": 1.5, "DLGLOAD": 3},
                                           {"NODE": "b", "FLAGS": "IP", "EST": 0.0, "DLGLOAD": 0}]
    assert all(t["DEST"]["NODES"] == [] for t in targets[1:])
    assert tree["NODE"] == "a" and "ERROR" not in tree
    assert "NODE: b" in format_tree(tree)  # as kamcmd prints it
    for rec in tree["RECORDS"]:
        for t in rec["SET"]["TARGETS"]:
            t["DEST"].pop("NODES")
    assert {k: v for k, v in tree.items() if k != "NODE"} == plain
