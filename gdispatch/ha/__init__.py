"""Nodes of a pair (or more) sharing their state through Redis (``[cluster] redis``).

Not the workers of one box (gdispatch.cluster): each node here is a whole gdispatch,
its primary alone talking to Redis.

- gdispatch.ha.shared: the pure part: how a shared value is named and stamped, which of
  two values wins (last writer, by wall clock then node name), the other nodes' call
  loads summed per destination.
- gdispatch.ha.store: `Store`, the Redis connection, in gevent's thread pool: every
  `INTERVAL` one round trip writes this node's heartbeat, call loads and changed values
  and reads the others'. The SIP path only ever puts values in its outbox.
- gdispatch.ha.leases: `Leases`, the call slots of ``maxload`` destinations this node
  holds, reserved in Redis (a Lua script capping all nodes' slots at ``maxload``), so
  that algorithm 10 is exact across the nodes without a call waiting on Redis, but for
  the one that finds this node's slots used up.
- gdispatch.ha.node: `Node`, between the App and the store: what an operator change,
  a reload or ``ping_active`` publishes, and how a value from another node is applied.
"""
