"""`Leases`: the call slots of ``maxload`` destinations (algorithm 10) that this node
holds, reserved in Redis, so that the nodes together never pass a destination's
``maxload``.

Each destination with a ``maxload`` has a hash in Redis, node -> ``held|used|expiry``;
a Lua script (`_LEASE`, atomic) sets this node's entry to what it asks for, capped by
``maxload`` minus the slots the other nodes hold (their entries past their expiry,
`TTL`, are dropped first: a dead node's slots come back). The node admits a call on a
destination while its calls there are below its lease (`Destination.load_nodes` is set
to ``maxload - held``, so `has_capacity` is unchanged and costs nothing more), so the
common call never waits on Redis.

One greenlet talks to Redis (one request in flight, through gevent's thread pool as in
gdispatch.ha.store), every `INTERVAL` and whenever a call waits: it asks, per
destination, for the calls it has plus the calls waiting plus a spare (`spare`), the
spare only while the destination has room for twice that much more, so that near the
limit no node sits on idle slots another needs; what a node asks for below what it
holds gives slots back. While a request is in flight the node admits no more calls than
it asked for, so that what Redis grants always covers them.

A call whose destination is full by this node's lease (but not by ``maxload``) waits,
in its own greenlet and at most `WAIT`, for the next answer; other messages go on. When
the answer grants no slot and no other node holds an idle one, the destination is full
for everyone: the following calls do not wait for `INTERVAL`.

Redis unreachable: the leases are dropped and algorithm 10 counts this node's calls and
the other nodes' as last heard of (gdispatch.ha.node), as without leases; the leases
come back with Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from gevent.event import Event

from gdispatch.dispatcher.destination import Destination, DispatcherSet
from gdispatch.ha import shared
from gdispatch.ha.store import BACKOFF_MAX, INTERVAL, PREFIX, TTL

log = logging.getLogger("gdispatch")

WAIT = 0.25  # seconds a call may wait for slots
RETRY = 0.05  # seconds between asks while another node holds idle slots

LEASE = PREFIX + "lease:"

# KEYS: one lease hash per destination. ARGV: node, ttl (ms), then per key: used, need,
# spare, maxload. Returns per key: the slots granted, the idle slots the others hold.
_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node, ttl = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS do
  local used, need = tonumber(ARGV[4 * i - 1]), tonumber(ARGV[4 * i])
  local spare, maxload = tonumber(ARGV[4 * i + 1]), tonumber(ARGV[4 * i + 2])
  local others, idle = 0, 0
  local all = redis.call('HGETALL', KEYS[i])
  for j = 1, #all, 2 do
    if all[j] ~= node then
      local h, u, e = string.match(all[j + 1], '^(%d+)|(%d+)|(%d+)$')
      if (not e) or tonumber(e) <= now then
        redis.call('HDEL', KEYS[i], all[j])
      else
        others = others + tonumber(h)
        idle = idle + math.max(tonumber(h) - tonumber(u), 0)
      end
    end
  end
  local free = maxload - others
  local grant = math.max(math.min(need, free), 0)
  if grant == need and free - need >= 2 * spare then grant = need + spare end
  redis.call('HSET', KEYS[i], node, grant .. '|' .. used .. '|' .. (now + ttl))
  redis.call('PEXPIRE', KEYS[i], ttl)
  out[#out + 1] = grant
  out[#out + 1] = idle
end
return out
"""


def spare(maxload: int) -> int:
    """Slots a node holds beyond its calls, while there is room: calls up to that many
    per `INTERVAL` take a slot without asking."""
    return max(1, maxload // 5)


class Leases:
    """This node's slots on the ``maxload`` destinations, and the calls waiting for one."""

    def __init__(self, redis: Any, node: str, destinations: Callable[[], Iterable[Destination]],
                 on_lost: Callable[[], None]):
        """`destinations`: the current list's; `on_lost`: Redis stopped answering (the
        leases are dropped: the node counts calls as without them)."""
        self.redis = redis
        self.node = node
        self.destinations = destinations
        self.on_lost = on_lost
        self.held: dict[str, int] = {}  # destination field -> slots leased here
        self.idle_elsewhere: dict[str, int] = {}  # field -> idle slots the others hold
        self.waiting: dict[str, int] = {}  # field -> calls waiting for a slot
        self.full_until: dict[str, float] = {}  # field -> until when no call waits (monotonic)
        self.connected = False
        self.requests = 0  # asks begun
        self.completed = 0  # asks answered (or failed)
        self.waited = 0  # calls that waited for an answer
        self._wake = Event()
        self._answer = Event()
        self._greenlet: gevent.Greenlet | None = None
        self._pool = gevent.get_hub().threadpool

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    # ------------------------------------------------------------- the SIP path

    def short(self, dset: DispatcherSet) -> list[Destination]:
        """The destinations of `dset` a call could take if this node held more slots:
        full by its lease, not by ``maxload``, not known full everywhere."""
        if not self.connected:
            return []
        out = []
        now = time.monotonic()
        for d in dset.active:
            if d.maxload and d.load < d.maxload <= d.load + d.load_nodes \
                    and self.full_until.get(shared.dest_field(d), 0.0) <= now:
                out.append(d)
        return out

    def wait(self, dests: list[Destination]) -> None:
        """Wait (at most `WAIT`) until one of `dests` has a slot here, or is known full
        everywhere, or Redis does not answer. In the call's own greenlet."""
        self.waited += 1
        fields = [shared.dest_field(d) for d in dests]
        for f in fields:
            self.waiting[f] = self.waiting.get(f, 0) + 1
        deadline = time.monotonic() + WAIT
        try:
            while True:
                # An answer to an ask made after this call began waiting (counting it).
                want = self.requests + 1
                self._wake.set()
                while self.completed < want:
                    if not self._answer.wait(max(deadline - time.monotonic(), 0.0)):
                        return
                if not self.connected or any(d.has_capacity for d in dests):
                    return
                if not any(self.idle_elsewhere.get(f, 0) for f in fields):
                    until = time.monotonic() + INTERVAL
                    for f in fields:
                        self.full_until[f] = until
                    return
                # Another node sits on idle slots: its next ask (within `INTERVAL`) gives
                # them back, since the destination has no room for spares.
                if time.monotonic() + RETRY >= deadline:
                    return
                gevent.sleep(RETRY)
        finally:
            for f in fields:
                n = self.waiting.get(f, 0) - 1
                if n > 0:
                    self.waiting[f] = n
                else:
                    self.waiting.pop(f, None)

    # ------------------------------------------------------------- Redis

    def _run(self) -> None:
        backoff = INTERVAL
        while True:
            self._wake.wait(INTERVAL)
            self._wake.clear()
            try:
                self._ask()
            except Exception as e:  # redis-py's errors, OSError: Redis away
                if self.connected:
                    log.warning("call slots: Redis unreachable (%s); algorithm 10 counts "
                                "calls locally until it does", e)
                self.connected = False
                self.held.clear()
                self.on_lost()
                self._answered()
                backoff = min(max(backoff * 2, 0.5), BACKOFF_MAX)
                gevent.sleep(backoff)
                continue
            backoff = INTERVAL

    def _ask(self) -> None:
        self.requests += 1
        dests = {shared.dest_field(d): d for d in self.destinations() if d.maxload}
        if not dests:
            self._answered()
            return
        keys: list[str] = []
        args: list[Any] = [self.node, int(TTL * 1000)]
        for f, d in dests.items():
            used = d.load + d.load_elsewhere
            need = used + self.waiting.get(f, 0)
            keys.append(LEASE + f)
            args += [used, need, spare(d.maxload), d.maxload]
            if self.connected:
                # In flight: no more calls than asked for, which Redis grants at least
                # (what this node held is not the others' to take meanwhile).
                self.held[f] = min(self.held.get(f, 0), need)
                d.load_nodes = d.maxload - self.held[f]
        out = self._pool.spawn(self.redis.eval, _LEASE, len(keys), *keys, *args).get()
        current = {shared.dest_field(d): d for d in self.destinations() if d.maxload}
        if not self.connected:
            log.info("Redis answers: algorithm 10 counts calls by the slots leased to node %s", self.node)
        self.connected = True
        for i, f in enumerate(dests):
            grant, idle = int(out[2 * i]), int(out[2 * i + 1])
            self.held[f] = grant
            self.idle_elsewhere[f] = idle
            now_d = current.get(f)
            if now_d is not None:
                now_d.load_nodes = now_d.maxload - grant
        for f in [f for f in self.held if f not in dests]:
            del self.held[f]
        self._answered()

    def _answered(self) -> None:
        self.completed = self.requests
        done, self._answer = self._answer, Event()
        done.set()

    def apply(self, dests: Iterable[Destination]) -> None:
        """The leases onto `dests` (a list swapped in: new objects), while connected."""
        if not self.connected:
            return
        for d in dests:
            if d.maxload:
                d.load_nodes = d.maxload - self.held.get(shared.dest_field(d), 0)

    def describe(self) -> dict:
        return {f: {"HELD": n, "IDLE_ELSEWHERE": self.idle_elsewhere.get(f, 0)} for f, n in self.held.items()}
