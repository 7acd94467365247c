"""State carried across a reload: kept for the same destination, the file wins when it
changed the flags, new ones start from the file, Kamailio's reset on request."""

from gdispatch.dispatcher.destination import FLAG_DISABLED, FLAG_INACTIVE, FLAG_PROBING
from gdispatch.dispatcher.listfile import parse_list
from gdispatch.dispatcher.reload import carry_state
from gdispatch.probing.policy import ProbeState

OLD = "1 sip:10.0.0.1 0 0 duid=a\n1 sip:10.0.0.2 0 0 duid=b\n1 sip:10.0.0.3 0 0 duid=c\n"


def loaded(text):
    dl = parse_list(text, "t")
    for d in dl.destinations():
        d.address = (d.sip_uri.host, 5060)
    return dl


def by_duid(dl):
    return {d.duid: d for d in dl.destinations()}


def test_same_destination_keeps_runtime_state():
    old = loaded(OLD)
    o = by_duid(old)
    o["a"].flags = FLAG_DISABLED  # set_state dx
    o["b"].flags = FLAG_INACTIVE | FLAG_PROBING  # IP after failed pings
    o["a"].load = 3
    o["a"].probe = ProbeState("7")
    new = loaded(OLD.replace("duid=c", "duid=c;weight=50") + "1 sip:10.0.0.4 0 0 duid=d\n")
    s = carry_state(old, new)
    n = by_duid(new)
    assert n["a"].state_letters() == "DX" and n["a"].load == 3 and n["a"].probe.iuid == "7"
    assert n["b"].state_letters() == "IP"
    assert n["d"].state_letters() == "AX" and n["d"] in s.added
    assert s.replaced[id(o["a"])] is n["a"]
    # Selection sees the carried state at once.
    assert [d.duid for d in new.get(1).active] == ["c", "d"]


def test_file_change_of_flags_wins_but_keeps_statistics():
    old = loaded(OLD)
    by_duid(old)["a"].flags = FLAG_DISABLED
    by_duid(old)["a"].load = 2
    new = loaded(OLD.replace("sip:10.0.0.1 0 0", "sip:10.0.0.1 8 0"))
    s = carry_state(old, new)
    a = by_duid(new)["a"]
    assert a.state_letters() == "AP" and a.load == 2 and a in s.file_changed


def test_removed_and_changed_identity():
    old = loaded(OLD)
    new = loaded("1 sip:10.0.0.1 0 0 duid=a2\n1 sip:10.0.0.2 0 0 duid=b\n")
    s = carry_state(old, new)
    assert {d.duid for d in s.removed} == {"a", "c"}
    assert [d.duid for d in s.added] == ["a2"]


def test_kamailio_reset():
    old = loaded(OLD)
    by_duid(old)["a"].flags = FLAG_DISABLED
    by_duid(old)["a"].load = 5
    new = loaded(OLD)
    carry_state(old, new, keep_state=False)
    assert by_duid(new)["a"].state_letters() == "AX" and by_duid(new)["a"].load == 0
