"""The part a process plays among the workers, behind the one seam gdispatch.app.App
calls whatever the number of workers: `Role`.

- `Single` (``workers = 1``): the process is the whole proxy. The seam does nothing but
  hand the proxy's traffic failures to the prober.
- `Primary` (worker 0 of several): binds the shared UDP sockets and the relay, starts
  the other workers (gdispatch.cluster.supervisor), tells them what only it decides (the
  list, every destination's state, the dialog keys, the latency estimates, stop), counts
  their traffic failures with its prober, sums their reports into ``stats`` and reads
  the sockets of a worker that died until it is back.
- `Worker` (worker 1..N-1): starts from the primary's `Hello`, applies what the primary
  tells it, sends it its traffic failures and, every second, a `Report`.

How App uses a role, in order: `sockets()` before it builds the transports, then
`start(...)` once the proxy, the transports and the prober exist and the transports read
their private sockets, then `ready(...)` when the process is set up (the listen sockets
are read after it), and `drain()`, `stop()` on SIGTERM. In between it tells the role
what changed: `list_loaded`, `state_changed`, `keys_changed`; the proxy reports its
traffic failures to `traffic_failure`; `counters` and `merge_stats` go into ``stats``,
`merge_metrics` into the metrics.
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import gevent
import gevent.event

from gdispatch.cluster.channel import (
    Channel,
    DestKey,
    Hello,
    KeysChanged,
    Latencies,
    ListSwapped,
    Message,
    Ready,
    Report,
    StateChanged,
    Stop,
    TlsReload,
    TrafficFailure,
    dest_key,
    keyed,
    states_of,
)
from gdispatch.cluster.relay import Relay, relay_sockets
from gdispatch.cluster.steering import shared_udp_sockets
from gdispatch.cluster.supervisor import Supervisor
from gdispatch.config import Config
from gdispatch.dispatcher.destination import Destination, DispatcherList
from gdispatch.measures import Samples, add_samples
from gdispatch.net import Transports, UdpListener, ensure_free

if TYPE_CHECKING:
    from gdispatch.probing.pinger import Prober
    from gdispatch.proxy import Proxy

# The application's logger: an operator filters one name for everything the proxy decides.
log = logging.getLogger("gdispatch")

WORKER_START_TIMEOUT = 15.0  # how long the primary waits for the other workers to listen
SYNC_INTERVAL = 1.0  # seconds between latency broadcasts (primary) and reports (workers)


class Host(Protocol):
    """What a worker's role asks of the process it runs in (gdispatch.app.App)."""

    stopping: gevent.event.Event  # set: drain and exit

    def local_stats(self) -> dict[str, int]:
        """This process's counters, for its `Report`."""
        ...

    def local_metrics(self) -> Samples:
        """This process's labelled counters and histograms, for its `Report`."""
        ...

    def take_list(self, text: str, reason: str, states: dict[DestKey, int]) -> None:
        """Swap in the list the primary swapped in, with the primary's states."""
        ...

    def use_keys(self, keys: list[tuple[str, bytes]]) -> None:
        """Sign and verify Record-Route with these dialog keys from now on."""
        ...

    def reload_tls(self) -> str:
        """Read the `[tls]` certificates and keys again ('' or what happened)."""
        ...

    def tls_connections(self) -> list[dict]:
        """This process's TLS connections, for ``tls.list``."""
        ...


@dataclass(frozen=True)
class Sockets:
    """What the transports are built on (gdispatch.net.Transports). `shared`: several
    workers listen on the same addresses (SO_REUSEPORT, and a private twin socket per
    UDP listener); `udp`: this worker's sockets of the primary's groups, by listen
    index (None: the transports bind their own); `relay`: their `Handoff`."""

    shared: bool = False
    udp: dict[int, socket.socket] | None = None
    relay: Relay | None = None


class Role:
    """The seam, every method a no-op: what a process with no other worker and no
    prober would do (a subclass is one of the roles above)."""

    tag = ""  # what each log line of this process carries ("w0", "w1"...), "" alone

    def sockets(self) -> Sockets:
        """Bind what must be bound before the transports. Raises TransportError."""
        return Sockets()

    def start(self, host: Host, proxy: Proxy, transports: Transports, prober: Prober | None) -> None:
        """The proxy is built and the transports read their private sockets."""

    def ready(self, abort: gevent.event.Event) -> None:
        """This process is set up; its listen sockets are read once this returns."""

    def traffic_failure(self, dest: Destination, reason: str) -> None:
        """The proxy's `on_traffic_failure`: a request to `dest` got no answer, could not
        be sent, or got one of the mark codes."""

    def list_loaded(self, dlist: DispatcherList, reason: str) -> None:
        """`dlist` is in use from now on (start, reload, RPC, from the primary)."""

    def state_changed(self, dest: Destination) -> None:
        """A destination's state changed here (a ping, a traffic failure, set_state)."""

    def keys_changed(self, keys: list[tuple[str, bytes]]) -> None:
        """The dialog keys were read again."""

    def tls_reloaded(self) -> None:
        """The `[tls]` files were read again: the other workers read them too."""

    def tls_connections(self) -> list[dict]:
        """The other workers' TLS connections (as of their last report), for ``tls.list``."""
        return []

    def counters(self) -> dict[str, int]:
        """This process's counters of the cluster, for ``stats``."""
        return {}

    def merge_stats(self, out: dict[str, Any]) -> list[dict]:
        """Add the other workers' counters to this process's `out`; returns their
        per-destination counters (CallCounters.table), for CallCounters.summed."""
        return []

    def merge_metrics(self, out: Samples) -> None:
        """Add the other workers' labelled counters and histograms to this process's
        `out` (gdispatch.measures)."""

    def drain(self) -> None:
        """SIGTERM: the others drain while this process does."""

    def stop(self) -> None:
        """Stop the others (bounded) and close what the role holds."""


class Single(Role):
    """``workers = 1``: the traffic failures the proxy sees go to the prober (Kamailio's
    dispatcher marks a destination from its replies the same way, ds_mark_dst)."""

    def __init__(self) -> None:
        self.prober: Prober | None = None

    def start(self, host: Host, proxy: Proxy, transports: Transports, prober: Prober | None) -> None:
        self.prober = prober

    def traffic_failure(self, dest: Destination, reason: str) -> None:
        if self.prober is not None:
            self.prober.traffic_failure(dest, reason)


class Primary(Single):
    """Worker 0 of `config.workers`: the process ``gdispatch run`` started."""

    tag = "w0"

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.n = config.workers
        self.proxy: Proxy | None = None
        self.transports: Transports | None = None
        self.supervisor: Supervisor | None = None
        self.relay: Relay | None = None
        self.relay_socks: list[socket.socket] = []  # every worker's relay socket
        # listen index -> every worker's socket on that UDP address, in worker order; held
        # for the primary's life, so that a worker started again finds its place in the
        # group unchanged.
        self.listen_socks: dict[int, list[socket.socket]] = {}
        self.steered = 0  # bytes the kernel searches for the Call-ID (0: no steering)
        self.covers: dict[int, list[UdpListener]] = {}  # a dead worker's sockets it reads
        self.reports: dict[int, Report] = {}  # worker index -> its last report
        self.by_key: dict[DestKey, Destination] = {}  # dest_key -> destination of the list
        self.greenlets: list[gevent.Greenlet] = []

    def sockets(self) -> Sockets:
        config = self.config
        ensure_free(config.listen)
        self.listen_socks, self.steered, refused = shared_udp_sockets(config.listen, self.n)
        if not self.steered and self.listen_socks:
            hint = (" (raise sysctl net.core.optmem_max to 65536 or more)"
                    if refused is not None and refused.errno == errno.ENOMEM else "")
            log.warning("the kernel does not take the program that steers datagrams by Call-ID: %s%s; "
                        "the workers relay each other's datagrams instead, one more hop for about half "
                        "of them", refused.strerror if refused else "refused", hint)
        elif self.steered:
            log.info("the kernel steers datagrams to their worker by the Call-ID in their first %d bytes",
                     self.steered)
        self.relay_socks = relay_sockets(self.n)
        self.relay = Relay(self.relay_socks[0], 0, [x.getsockname()[1] for x in self.relay_socks])
        return Sockets(shared=True, udp={i: socks[0] for i, socks in self.listen_socks.items()}, relay=self.relay)

    def start(self, host: Host, proxy: Proxy, transports: Transports, prober: Prober | None) -> None:
        super().start(host, proxy, transports, prober)
        self.proxy = proxy
        self.transports = transports
        assert self.relay is not None, "sockets() comes first"
        self.relay.start(transports.deliver)

    def ready(self, abort: gevent.event.Event) -> None:
        """Start the other workers and wait until they listen: the calls the primary took
        meanwhile could not be handed to a worker not yet there (their datagrams wait in
        the sockets)."""
        self.supervisor = Supervisor(self.n, self._hello, self._from_worker,
                                     [[x.fileno(), *self._listen_fds(i).values()]
                                      for i, x in enumerate(self.relay_socks)], on_lost=self._cover)
        self.supervisor.start()
        assert self.proxy is not None, "start() comes first"
        self.greenlets.append(gevent.spawn(self._sync_loop, self.proxy))
        if not self.supervisor.wait_ready(WORKER_START_TIMEOUT, abort=abort):
            log.warning("only %d of %d workers listen after %.0f s", len(self.supervisor.ready) + 1,
                        self.n, WORKER_START_TIMEOUT)

    def _broadcast(self, msg: Message) -> None:
        # Before the others start there is no one to tell: their Hello carries it all.
        if self.supervisor is not None:
            self.supervisor.broadcast(msg)

    def list_loaded(self, dlist: DispatcherList, reason: str) -> None:
        self.by_key = keyed(dlist)
        # Before the prober's attach(): the states it reports name destinations of the
        # new list, which the workers must have by then.
        self._broadcast(ListSwapped(dlist.text, reason, states_of(dlist)))

    def state_changed(self, dest: Destination) -> None:
        self._broadcast(StateChanged(dest_key(dest), dest.flags))

    def keys_changed(self, keys: list[tuple[str, bytes]]) -> None:
        self._broadcast(KeysChanged(keys))

    def tls_reloaded(self) -> None:
        self._broadcast(TlsReload())

    def tls_connections(self) -> list[dict]:
        return [c for i in sorted(self.reports) for c in self.reports[i].tls]

    def _hello(self, index: int) -> Hello:
        """What a new worker starts from."""
        assert self.proxy is not None, "the workers start once the proxy is built"
        dlist = self.proxy.dlist
        socks = self.relay_socks
        return Hello(self.config, index, socks[index].fileno(), [x.getsockname()[1] for x in socks],
                     self._listen_fds(index), dlist.text, states_of(dlist), self.proxy.keyring.keys)

    def _listen_fds(self, index: int) -> dict[int, int]:
        """Worker `index`'s sockets on the UDP listen addresses: listen index -> fd."""
        return {i: socks[index].fileno() for i, socks in self.listen_socks.items()}

    def _from_worker(self, index: int, msg: Message) -> None:
        if isinstance(msg, TrafficFailure):
            dest = self.by_key.get(msg.key)
            if dest is not None and self.prober is not None:
                self.prober.traffic_failure(dest, f"{msg.reason} (worker {index})")
        elif isinstance(msg, Report):
            self.reports[index] = msg
            elsewhere: dict[DestKey, int] = {}
            for report in self.reports.values():
                for key, n in report.loads.items():
                    elsewhere[key] = elsewhere.get(key, 0) + n
            for key, dest in self.by_key.items():
                dest.load_elsewhere = elsewhere.get(key, 0)
        elif isinstance(msg, Ready):
            log.info("worker %d listens", index)
            self._uncover(index)

    def _cover(self, index: int) -> None:
        """Worker `index` died: until it is back, read its sockets on the UDP listen
        addresses, which the kernel goes on giving datagrams (the primary holds them so
        that the worker finds its place in the group again). What belongs to another
        worker goes to it at once; what was the dead worker's waits in its relay socket."""
        if index in self.covers or self.relay is None or self.transports is None:
            return
        covers = []
        for i, socks in self.listen_socks.items():
            lst = UdpListener(self.config.listen[i], self.transports, sock=socks[index], index=i,
                              steer=self.relay.steer)
            lst.start()
            covers.append(lst)
        self.covers[index] = covers

    def _uncover(self, index: int) -> None:
        """Stop reading worker `index`'s sockets; they stay open: they are the worker's."""
        for lst in self.covers.pop(index, ()):
            if lst.greenlet is not None:
                lst.greenlet.kill(block=False)

    def _sync_loop(self, proxy: Proxy) -> None:
        """The latency estimates (algorithm 11 reads them) to every worker."""
        while True:
            gevent.sleep(SYNC_INTERVAL)
            lat = {dest_key(d): d.latency_est_ms for d in proxy.dlist.destinations()
                   if d.latency_est_ms is not None}
            if lat:
                self._broadcast(Latencies(lat))

    def counters(self) -> dict[str, int]:
        return _relay_counters(self.relay)

    def merge_stats(self, out: dict[str, Any]) -> list[dict]:
        """Every worker's counters summed (the others report every SYNC_INTERVAL)."""
        own_dispatched = out.get("dispatched", 0)
        others = []
        for report in self.reports.values():
            others.append(report.counters)
            for k, v in report.stats.items():
                out[k] = out.get(k, 0) + v
        out["workers"] = self.n
        out["workers_ready"] = 1 + len(self.supervisor.ready) if self.supervisor else 1
        out["kernel_steering"] = int(bool(self.steered))
        # How the calls are spread: what each worker dispatched, in worker order.
        out["dispatched_by_worker"] = [own_dispatched] + [
            self.reports[i].stats.get("dispatched", 0) if i in self.reports else 0 for i in range(1, self.n)]
        return others

    def merge_metrics(self, out: Samples) -> None:
        """Every worker's samples summed (as of their last report)."""
        for report in self.reports.values():
            add_samples(out, report.metrics)

    def drain(self) -> None:
        if self.supervisor is not None:
            self.supervisor.drain()  # every worker drains at the same time

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop(self.config.drain_time + 3.0)
        for g in self.greenlets:
            g.kill(block=False)
        if self.relay is not None:
            self.relay.close()
        for index in list(self.covers):
            self._uncover(index)
        for socks in self.listen_socks.values():
            for sock in socks[1:]:  # the first is the primary's own, closed with its listener
                sock.close()


class Worker(Role):
    """Worker `hello.index` of several, started by the primary (``python -m
    gdispatch.cluster``): the list, the states and the dialog keys come from the
    primary, which does the probing, watching and control; so do its sockets."""

    def __init__(self, hello: Hello, sock: socket.socket):
        """`sock`: this worker's end of the channel, on which `hello` came."""
        self.hello = hello
        self.index = hello.index
        self.tag = f"w{hello.index}"
        self.channel = Channel(sock)
        self.relay = Relay(socket.socket(fileno=hello.relay_fd), hello.index, hello.relay_ports)
        self.by_key: dict[DestKey, Destination] = {}
        self.greenlets: list[gevent.Greenlet] = []

    def sockets(self) -> Sockets:
        return Sockets(shared=True, udp={i: socket.socket(fileno=fd) for i, fd in self.hello.listen_fds.items()},
                       relay=self.relay)

    def start(self, host: Host, proxy: Proxy, transports: Transports, prober: Prober | None) -> None:
        self.relay.start(transports.deliver)
        self.greenlets.append(gevent.spawn(self._report_loop, host, proxy))
        # The primary gone is the end of this worker too: it drains and exits.
        self.channel.start(lambda msg: self._from_primary(host, msg), host.stopping.set)

    def ready(self, abort: gevent.event.Event) -> None:
        self.channel.send(Ready())

    def traffic_failure(self, dest: Destination, reason: str) -> None:
        self.channel.send(TrafficFailure(dest_key(dest), reason))

    def list_loaded(self, dlist: DispatcherList, reason: str) -> None:
        self.by_key = keyed(dlist)

    def _from_primary(self, host: Host, msg: Message) -> None:
        if isinstance(msg, StateChanged):
            dest = self.by_key.get(msg.key)
            if dest is not None:
                dest.flags = msg.flags
        elif isinstance(msg, Latencies):
            for key, ms in msg.ms.items():
                dest = self.by_key.get(key)
                if dest is not None:
                    dest.latency_est_ms = ms
        elif isinstance(msg, ListSwapped):
            host.take_list(msg.text, msg.reason, msg.states)
        elif isinstance(msg, KeysChanged):
            host.use_keys(msg.keys)
        elif isinstance(msg, TlsReload):
            host.reload_tls()
        elif isinstance(msg, Stop):
            host.stopping.set()

    def _report_loop(self, host: Host, proxy: Proxy) -> None:
        """This worker's call loads, counters and statistics, for the primary to show."""
        while True:
            gevent.sleep(SYNC_INTERVAL)
            loads = {dest_key(d): d.load for d in proxy.dlist.destinations() if d.load}
            self.channel.send(Report(loads, dict(proxy.call_counts.table), host.local_stats(), host.tls_connections(),
                                     host.local_metrics()))

    def counters(self) -> dict[str, int]:
        return _relay_counters(self.relay)

    def stop(self) -> None:
        for g in self.greenlets:
            g.kill(block=False)
        self.relay.close()


def _relay_counters(relay: Relay | None) -> dict[str, int]:
    if relay is None:
        return {}
    return {"relayed_to_other_workers": relay.sent, "relay_dropped": relay.dropped}
