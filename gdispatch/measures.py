"""What a proxy process measures beyond its flat counters, for the Prometheus metrics
(gdispatch.web.metrics): the latency histograms, and `samples`, which flattens this
process's labelled counters and histograms into one dict that sums over workers.

A `Histogram` has fixed buckets and costs the code that observes a clock difference, one
bisection and two additions: no lock (a process is one thread of greenlets), no
allocation. The metrics library is not used on the SIP path: the metric families are
built when /metrics is scraped, from what the process keeps here and in its counters.

Several workers: each worker sends `samples` to the primary every second in its
`Report` (gdispatch.cluster.channel), next to its flat counters, and the primary adds
them key by key (`add_samples`) to its own. A sample's key is a tuple, the sample's name
then its label values; a histogram is its buckets (not cumulative: each worker's count
of observations that fell in that bucket alone, so that the sum over workers is the
same kind of count), its sum and its count. This module imports nothing of the metrics
library, so that a worker without it still reports.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

# Upper bounds in seconds. A dispatched INVITE's final response comes after the callee
# rang (up to fr_inv_timer, 120 s by default) or at once (a refusal, a 2xx of an
# automaton); a ping's reply comes within [probing].timeout.
INVITE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
PING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

Samples = dict[tuple, float]


class Histogram:
    """Observations counted in fixed buckets (`bounds`, increasing upper bounds: a value
    equal to a bound counts in that bucket, as Prometheus' ``le``), the last bucket
    being everything above the last bound."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def flatten(self, name: str, out: Samples) -> None:
        """Its buckets, sum and count into `out` under `name`."""
        for i, n in enumerate(self.counts):
            if n:
                out[(name, "bucket", i)] = n
        out[(name, "sum")] = self.sum
        out[(name, "count")] = sum(self.counts)


def cumulative(samples: Samples, name: str, bounds: tuple[float, ...]) -> tuple[list[tuple[str, float]], float]:
    """The histogram `name` of `samples` as Prometheus writes it: (``le``, cumulative
    count) for every bound and ``+Inf``, and its sum."""
    buckets = []
    total = 0.0
    for i, bound in enumerate((*bounds, float("inf"))):
        total += samples.get((name, "bucket", i), 0)
        buckets.append(("+Inf" if i == len(bounds) else repr(bound), total))
    return buckets, samples.get((name, "sum"), 0.0)


def add_samples(into: Samples, more: Samples) -> None:
    """Add a worker's `more` to `into`, key by key."""
    for key, value in more.items():
        into[key] = into.get(key, 0) + value


def samples(proxy: Any, plugins: Any, prober: Any = None) -> Samples:
    """This process's labelled counters and histograms (gdispatch.proxy.Proxy,
    gdispatch.plugins.PluginHost, the prober when this process pings): requests by
    method, responses sent upstream by origin and class, the INVITE and ping
    histograms, the plugins' errors and time in their hooks."""
    out: Samples = {}
    for method, n in proxy.requests_by_method.items():
        if n:
            out[("requests", method)] = n
    for origin, counts in (("local", proxy.replies_local), ("relayed", proxy.replies_relayed)):
        for cls, n in enumerate(counts):
            if n:
                out[("responses", origin, f"{cls}xx")] = n
    proxy.invite_times.flatten("invite_final", out)
    if prober is not None:
        prober.round_trips.flatten("ping", out)
    for name, n in plugins.errors.items():
        out[("plugin_errors", name)] = n
    for name, n in plugins.slow.items():
        out[("plugin_slow", name)] = n
    for (name, hook), (calls, seconds) in plugins.timing.items():
        out[("hook_calls", name, hook)] = calls
        out[("hook_seconds", name, hook)] = seconds
    return out
