"""Several worker processes on one SIP address (``gdispatch run --workers N``).

The modules, from the bottom up:

- `steering`: which worker a datagram belongs to, decided by the kernel: the BPF program
  of the SO_REUSEPORT group (`call_owner`, `program`, `attach`) and the group's sockets
  (`shared_udp_sockets`);
- `relay`: `call_id_owner`, and `Relay`, which hands a datagram the kernel gave to the
  wrong worker to the one that owns its call;
- `channel`: `Channel`, the primary's socketpair to each worker, and the messages over
  it (dataclasses);
- `supervisor`: `Supervisor`, the primary's hold on the other workers as processes;
- `roles`: what each process does among the workers (`Single`, `Primary`, `Worker`),
  behind the one seam the application calls (`Role`);
- `__main__`: ``python -m gdispatch.cluster FD``, a worker the primary started.

How the work is split
=====================

The process ``gdispatch run`` starts is worker 0, the *primary*. It starts workers 1..N-1
as child processes (``python -m gdispatch.cluster``), each a complete proxy with its own
transactions. On each UDP listen address the primary binds one socket per worker, in
worker order, in one SO_REUSEPORT group, and hands worker i its socket i
(`steering.shared_udp_sockets`); TCP listen addresses each worker binds itself with
SO_REUSEPORT.

A call belongs to one worker: the one `relay.call_id_owner()` picks from its Call-ID.
The kernel delivers each datagram to the socket of that worker, chosen by a BPF program
of the group (`steering`), so the calls of a single peer, a trunk or a load generator,
are spread over the workers with no hop between them. What the program cannot read (a
compact Call-ID header, one past its first bytes) or where the kernel does not run it,
the kernel hashes the sender's address instead, and a worker that receives a datagram of
a call it does not own hands it, unparsed, to the owner over a loopback socket
(`relay.Relay`). Either way an INVITE, its retransmissions, its CANCEL, its responses
and the BYE later all meet the transactions of one worker (RFC 3261 §17.1.3, §17.2.3).

The primary keeps every worker's sockets open for its whole life: a worker that dies
leaves its socket in the group, where the new one finds its place (the kernel's index of
a socket changes when one leaves). Until then the primary reads that socket itself
(`Supervisor.on_lost`, `Primary._cover`): what belongs to a live worker goes to it at
once, what was the dead worker's waits in its relay socket.

Each worker sends its requests from a UDP socket of its own, an ephemeral port on the
listen IP that goes into its Via, so their responses come straight back to it (RFC 3261
§18.2.2 sends them to the Via's sent-by); Record-Route names the shared address
(gdispatch.net.udp: `UdpListener.private`). A TCP connection stays with the worker that
accepted or opened it.

What only the primary does
==========================

Probing, the list watcher, SIGHUP, the control socket and sd_notify: one state per
destination, as the operator sees it. It tells the others, over a socketpair per child
(`channel.Channel`, pickled dataclasses):

- `Hello` once, at start: the config, the worker's index, its relay socket and its
  listen sockets (inherited file descriptors), the list text, every destination's
  state and the dialog keys of gdispatch.recordroute, so that every worker signs and
  verifies alike;
- `ListSwapped`: the list it swapped in (reload, RPC add or remove), with every
  destination's state;
- `StateChanged`: a destination's new state (ping, traffic failure, set_state);
- `KeysChanged`: the dialog keys, read again on a reload;
- `TlsReload`: read the `[tls]` certificates and keys again (a reload);
- `Latencies` every second, for the latency algorithm (11);
- `Stop`: drain and exit.

Each child sends:

- `Ready` once it listens;
- `TrafficFailure`: a request to a destination failed in that worker (the primary's
  prober counts it, as it does its own);
- `Report` every second, for ``dispatcher.list`` and ``stats``.

A destination is named by `channel.dest_key`: (set id, position in its set, URI). Every
worker parses the same text, so the positions agree.

gdispatch.net knows nothing of this package: the transports are given the sockets to
use and a `Handoff` (the relay); gdispatch.app builds one process around a `Role`.
"""
