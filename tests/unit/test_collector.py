"""The garbage collection policy: off at start, a full pass on growth only."""

from gdispatch.collector import CollectorPolicy


class FakeGc:
    def __init__(self):
        self.count = 0
        self.live = 0
        self.calls = []

    def collect(self, generation=2):
        self.calls.append(("collect", generation))
        self.count = 0
        return 3

    def freeze(self):
        self.calls.append(("freeze",))

    def disable(self):
        self.calls.append(("disable",))

    def get_count(self):
        return (self.count, 0, 0)

    def get_objects(self, generation=None):
        return [None] * self.live


def test_start_collects_freezes_and_turns_automatic_passes_off():
    fake = FakeGc()
    CollectorPolicy(fake).start()
    assert fake.calls == [("collect", 2), ("freeze",), ("disable",)]


def test_a_pass_runs_only_past_the_floor_then_past_the_live_count():
    fake = FakeGc()
    policy = CollectorPolicy(fake, floor=1000, growth=1.0)
    fake.count = 1000
    assert not policy.maybe_collect() and fake.calls == []
    fake.count, fake.live = 1001, 5000
    assert policy.maybe_collect() and fake.calls == [("collect", 2)]
    assert policy.limit == 5000 and policy.passes == 1 and policy.found == 3
    fake.count = 4000
    assert not policy.maybe_collect()  # growth below what was live after the last pass
    fake.count, fake.live = 5001, 200
    assert policy.maybe_collect()
    assert policy.limit == 1000  # back to the floor when little is live
