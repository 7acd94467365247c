"""`Store`: this node's link to Redis (``[cluster] redis``), owned by one greenlet.

redis-py is a blocking client and gdispatch does not monkey-patch the standard library,
so its calls run in gevent's thread pool (``get_hub().threadpool``): the hub keeps
serving SIP while a thread waits on Redis, whatever redis-py does inside (TLS for
``rediss://``, its connection pool, its parser), which a gevent socket slipped under
redis-py's connection class would have to follow from version to version. A round trip
costs one hand-off to a thread, done once per `INTERVAL`, not per call.

Every `INTERVAL` one round trip (a MULTI/EXEC pipeline): this node's heartbeat (a key
with a `TTL`), its call loads (a hash with the same TTL, so that a dead node's calls age
out), the values changed here since the last round (through a Lua script that keeps the
newest stamp, gdispatch.ha.shared); and it reads the shared version counter, the nodes,
their last heartbeats and their loads. With the heartbeat, or as soon as a letter
changes, this node's view of its destinations (`view`: letters, latency estimate, active
calls; a hash with the same TTL), which ``dispatcher.list cluster`` reads from every node
on demand (`read_views`), not each round. When the version moved, the shared values are
read in a second round trip. Events travel through that polling rather than pub/sub:
they reach every node within about two intervals, and a node that was cut off reads
the same hashes when it is back, so there is one path for both.

Nothing waits on the store: `put` stores a value in the outbox (a dict, the last value
per field, so a long outage holds one entry per field, not a queue of events). Redis
unreachable: logged once, retried with back-off up to `BACKOFF_MAX`; when it answers
again, the node writes all it holds (`snapshot`) under its stamps, so that a Redis
restarted empty gets the state back and the newest value wins everywhere.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent

log = logging.getLogger("gdispatch")

INTERVAL = 0.1  # seconds between round trips: how stale the other nodes' call loads are
HEARTBEAT = 1.0  # seconds between heartbeats
TTL = 3  # seconds a node's heartbeat and call loads live without being written again
BACKOFF_MAX = 5.0  # seconds between attempts while Redis does not answer
TIMEOUT = 1.0  # seconds a connection or a reply may take

PREFIX = "gdispatch:"
VALUES, STAMPS, VERSION = PREFIX + "values", PREFIX + "stamps", PREFIX + "version"
NODES, SEEN = PREFIX + "nodes", PREFIX + "seen"

# KEYS: values, stamps, version. ARGV: field, stamp, value, field, stamp, value...
# A value is written only over an older stamp; the version moves when one was.
_WRITE = """
local changed = 0
for i = 1, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[2], ARGV[i])
  if (not cur) or cur < ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    changed = 1
  end
end
if changed == 1 then redis.call('INCR', KEYS[3]) end
return changed
"""


class MissingClient(Exception):
    """``[cluster] redis`` is set but the redis package is not installed."""


def client(url: str) -> Any:
    """A redis-py client for `url` (redis://, rediss://, unix://; password in the URL)."""
    try:
        import redis
    except ImportError:
        raise MissingClient("[cluster] redis is set but the redis client library is not installed: "
                            "pip install 'gdispatch[cluster]'") from None
    return redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT,
                                decode_responses=True)


@dataclass
class NodeSeen:
    """A node as the last round saw it."""

    last_heartbeat: float  # wall clock of its last heartbeat (0: never)
    alive: bool  # its heartbeat key has not expired
    info: dict = field(default_factory=dict)


@dataclass
class Round:
    """What one round trip read."""

    version: str | None = None
    nodes: dict[str, NodeSeen] = field(default_factory=dict)
    loads: dict[str, dict[str, int]] = field(default_factory=dict)  # other node -> field -> calls
    values: dict[str, tuple[str, str]] | None = None  # field -> (stamp, value), when read


class Store:
    """This node's heartbeat, loads and shared values, to and from Redis."""

    def __init__(self, redis: Any, node: str, *, info: Callable[[], dict], loads: Callable[[], dict[str, int]],
                 snapshot: Callable[[], dict[str, tuple[str, str]]], on_values: Callable[[dict], None],
                 on_round: Callable[[Round], None], url: str = "",
                 view: Callable[[], dict[str, str]] | None = None):
        """`redis`: a client (`client`); `info`: what the heartbeat says of this node;
        `loads`: this node's active calls per destination field; `snapshot`: every value
        this node holds (field -> (stamp, value)); `on_values`: the shared values, each
        time they changed; `on_round`: every round's view of the nodes; `view`: this
        node's view of its destinations (field -> "LETTERS|EST|CALLS")."""
        self.redis = redis
        self.node = node
        self.url = url
        self._info, self._loads, self._snapshot = info, loads, snapshot
        self._on_values, self._on_round = on_values, on_round
        self._view = view
        self.outbox: dict[str, tuple[str, str]] = {}
        self.connected = False
        self.error = ""  # why Redis did not answer, while it does not
        self.rounds = 0
        self.failures = 0
        self._version: str | None = None
        self._known: list[str] = []  # the nodes, as of the last round
        self._last_loads: dict[str, int] | None = None
        self._last_letters: dict[str, str] | None = None
        self._last_beat = 0.0
        self._republish = True  # write everything at the first round and after an outage
        self._greenlet: gevent.Greenlet | None = None
        self._pool = gevent.get_hub().threadpool

    def put(self, name: str, stamp: str, value: str) -> None:
        """Share `value` (never waits: the next round writes it)."""
        self.outbox[name] = (stamp, value)

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _run(self) -> None:
        backoff = INTERVAL
        while True:
            try:
                self._round()
            except Exception as e:  # redis-py's errors, OSError: the same outage
                self.failures += 1
                if self.connected or self.rounds == 0 and self.failures == 1:
                    log.warning("Redis %s does not answer (%s); serving on this node's state, retrying",
                                self.url, e)
                self.connected = False
                self.error = str(e)
                self._republish = True
                backoff = min(max(backoff * 2, 0.5), BACKOFF_MAX)
                gevent.sleep(backoff)
                continue
            if not self.connected:
                log.info("Redis %s answers; node %s shares its state again", self.url, self.node)
            self.connected = True
            self.error = ""
            backoff = INTERVAL
            gevent.sleep(INTERVAL)

    def _round(self) -> None:
        now = time.time()
        beat = self._republish or now - self._last_beat >= HEARTBEAT
        loads = self._loads()
        if loads == self._last_loads and not beat:
            loads_out = None
        else:
            loads_out = loads
        writes = dict(self.outbox)
        if self._republish:
            writes = {**self._snapshot(), **writes}
        info = json.dumps({**self._info(), "t": now}) if beat else None
        view = self._view() if self._view is not None else None
        letters = {k: v.partition("|")[0] for k, v in view.items()} if view is not None else None
        view_out = view if beat or letters != self._last_letters else None
        result = self._pool.spawn(self._exchange, now, info, loads_out, writes, list(self._known),
                                  view_out).get()
        self._last_letters = letters
        for k, sv in writes.items():  # written: gone from the outbox unless set again meanwhile
            if self.outbox.get(k) == sv:
                del self.outbox[k]
        if beat:
            self._last_beat = now
        self._last_loads = loads
        republished = self._republish
        self._republish = False
        self._known = [n for n in result.nodes if n != self.node]
        if result.version is None and not republished:
            self._republish = True  # Redis lost its data (restarted without persistence)
        if result.values is not None:
            self._version = result.version
            self._on_values(result.values)
        self.rounds += 1
        self._on_round(result)

    # In a thread of the pool: nothing here touches the node's state.
    def _exchange(self, now: float, info: str | None, loads: dict[str, int] | None,
                  writes: dict[str, tuple[str, str]], known: list[str],
                  view: dict[str, str] | None = None) -> Round:
        r = self.redis
        if writes:
            args: list[str] = []
            for k, (st, v) in writes.items():
                args += [k, st, v]
            r.eval(_WRITE, 3, VALUES, STAMPS, VERSION, *args)
        pipe = r.pipeline(transaction=True)
        if info is not None:
            pipe.set(PREFIX + "heartbeat:" + self.node, info, ex=TTL)
            pipe.hset(SEEN, self.node, info)
            pipe.sadd(NODES, self.node)
        if loads is not None:
            key = PREFIX + "load:" + self.node
            pipe.delete(key)
            if loads:
                pipe.hset(key, mapping=loads)
                pipe.expire(key, TTL)
        if view is not None:
            key = PREFIX + "view:" + self.node
            pipe.delete(key)
            if view:
                pipe.hset(key, mapping=view)
                pipe.expire(key, TTL)
        pipe.get(VERSION)
        pipe.smembers(NODES)
        pipe.hgetall(SEEN)
        for n in known:
            pipe.exists(PREFIX + "heartbeat:" + n)
            pipe.hgetall(PREFIX + "load:" + n)
        out = pipe.execute()
        ver, members, seen = out[-3 - 2 * len(known):len(out) - 2 * len(known)]
        tail = out[len(out) - 2 * len(known):]
        alive = {n: bool(tail[2 * i]) for i, n in enumerate(known)}
        alive[self.node] = True
        got = Round(version=ver)
        for n in sorted(members):
            raw = seen.get(n)
            try:
                inf = json.loads(raw) if raw else {}
            except ValueError:
                inf = {}
            got.nodes[n] = NodeSeen(float(inf.get("t", 0) or 0), alive.get(n, False), inf)
        for i, n in enumerate(known):
            got.loads[n] = {k: int(v) for k, v in tail[2 * i + 1].items()}
        if ver is not None and (ver != self._version or writes):
            pipe = r.pipeline(transaction=True)
            pipe.get(VERSION)
            pipe.hgetall(VALUES)
            pipe.hgetall(STAMPS)
            ver, values, stamps = pipe.execute()
            got.version = ver
            got.values = {k: (stamps.get(k, ""), v) for k, v in values.items()}
        return got

    def read_views(self, nodes: list[str]) -> dict[str, dict[str, str]]:
        """The views `nodes` last wrote (field -> "LETTERS|EST|CALLS"; empty once a
        node's expired), read now in one round trip. Blocks the calling greenlet (not
        the hub) for at most about `TIMEOUT`; raises what redis-py raises."""
        return self._pool.spawn(self._read_views, list(nodes)).get()

    # In a thread of the pool.
    def _read_views(self, nodes: list[str]) -> dict[str, dict[str, str]]:
        pipe = self.redis.pipeline(transaction=False)
        for n in nodes:
            pipe.hgetall(PREFIX + "view:" + n)
        return dict(zip(nodes, pipe.execute()))
