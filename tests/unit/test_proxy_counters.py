"""CallCounters: the INVITEs per destination, kept by the destination's identity across
reloads, with the other workers' tables added in."""

from gdispatch.dispatcher.listfile import parse_list
from gdispatch.proxy.counters import ANSWERED, FAILED, SENT, CallCounters

LIST = "1 sip:10.0.0.1:5060 0 0 duid=a\n1 sip:10.0.0.2:5060 0 0 duid=b\n"


def _dests(text: str = LIST):
    return list(parse_list(text, "dispatcher.list").destinations())


def test_counts_follow_a_destination_into_the_next_list():
    counters = CallCounters()
    a, b = _dests()
    counters.of(a)[SENT] += 3
    counters.of(a)[ANSWERED] += 2
    counters.of(a)[FAILED] += 1
    counters.of(b)[SENT] += 1
    # A reload makes new Destination objects: the same set, URI, duid and socket keep the counts.
    a2, b2 = _dests()
    assert a2 is not a
    assert counters.summed(a2) == {"CALLS_SENT": 3, "CALLS_ANSWERED": 2, "CALLS_FAILED": 1}
    assert counters.summed(b2) == {"CALLS_SENT": 1, "CALLS_ANSWERED": 0, "CALLS_FAILED": 0}
    # Another duid for the same URI is another destination.
    (moved, _b) = _dests(LIST.replace("duid=a", "duid=c"))
    assert counters.summed(moved) == {"CALLS_SENT": 0, "CALLS_ANSWERED": 0, "CALLS_FAILED": 0}


def test_the_other_workers_tables_are_added_in():
    mine, theirs = CallCounters(), CallCounters()
    a, b = _dests()
    mine.of(a)[SENT] += 2
    theirs.of(a)[SENT] += 5
    theirs.of(a)[FAILED] += 5
    theirs.of(b)[ANSWERED] += 1
    # What a worker's Report carries: its table as a plain dict.
    others = [dict(theirs.table)]
    assert mine.summed(a, others) == {"CALLS_SENT": 7, "CALLS_ANSWERED": 0, "CALLS_FAILED": 5}
    assert mine.summed(b, others) == {"CALLS_SENT": 0, "CALLS_ANSWERED": 1, "CALLS_FAILED": 0}
    assert mine.summed(a) == {"CALLS_SENT": 2, "CALLS_ANSWERED": 0, "CALLS_FAILED": 0}
