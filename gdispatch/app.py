"""Wiring: build the transports, scheduler, dispatcher list and proxy, and run them.

This is the only place that knows every layer. It also owns process-level concerns:
logging set-up, signals, and resolving destination addresses when the list is loaded.
"""

from __future__ import annotations

import errno
import logging
import resource
import signal
import socket
import sys
import time
from typing import Any

import gevent
import gevent.event

from gdispatch import __version__, logsafe, sdnotify, tcplimits
from gdispatch.cluster.channel import (
    Channel,
    Hello,
    KeysChanged,
    Latencies,
    ListSwapped,
    Message,
    Ready,
    Report,
    StateChanged,
    Stop,
    TrafficFailure,
    apply_states,
    dest_key,
    keyed,
    states_of,
)
from gdispatch.cluster.relay import Relay, relay_sockets
from gdispatch.cluster.steering import shared_udp_sockets
from gdispatch.cluster.supervisor import Supervisor
from gdispatch.collector import CollectorPolicy
from gdispatch.config import Config
from gdispatch.control.server import MAX_CONNECTIONS as CONTROL_CONNECTIONS
from gdispatch.control.server import ControlError, ControlServer
from gdispatch.dispatcher.destination import state_letters
from gdispatch.dispatcher.listfile import ListError, load_list, parse_list
from gdispatch.dispatcher.reload import carry_state
from gdispatch.dns import DestinationResolver, NextHopResolver, Resolver
from gdispatch.flood import SourceGuard
from gdispatch.net import TransportError, Transports, UdpListener, ensure_free
from gdispatch.plugins import PluginError, PluginHost
from gdispatch.probing.pinger import Prober
from gdispatch.probing.policy import ProbeSettings
from gdispatch.proxy import Proxy
from gdispatch.recordroute import KeyFileError, Keyring, default_key_path, ensure_key_file, load_keys
from gdispatch.transaction.timers import Scheduler
from gdispatch.watch import ListWatcher, file_digest

log = logging.getLogger("gdispatch")

TIMER_TICK = 0.02  # the scheduler's granularity, seconds
DRAIN_QUIET = 1.0  # on SIGTERM, stop once no message arrived for this long (or drain_time)
WORKER_START_TIMEOUT = 15.0  # how long the primary waits for the other workers to listen
SYNC_INTERVAL = 1.0  # seconds between latency broadcasts (primary) and reports (workers)


def setup_logging(level: str, tag: str = "") -> logsafe.Summariser:
    """Log to stderr, every record on one line with what came from the network escaped,
    repeated warnings summarised (gdispatch.logsafe); the Summariser returned is flushed
    by the timer greenlet. `tag`: the worker ("w0", "w1"...) when there are several."""
    handler = logging.StreamHandler(sys.stderr)
    summariser = logsafe.install(
        handler, "%(asctime)s %(levelname)s " + (f"[{tag}] " if tag else "") + "%(name)s: %(message)s")
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    return summariser


def open_files_limit() -> int:
    """Raise the soft limit on open files (RLIMIT_NOFILE) to the hard one and return
    it: the TCP caps are fitted below it (gdispatch.tcplimits.fit_to_fds). Worker
    processes inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:  # not on Linux, where nr_open bounds the hard limit
        return soft if soft != resource.RLIM_INFINITY else 1 << 20
    if soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as e:
        log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, e)
        return soft
    log.info("open-files limit raised from %d to %d", soft, hard)
    return hard


class App:
    """The running proxy and everything around it."""

    def __init__(self, config: Config, log_summary: logsafe.Summariser | None = None):
        """`log_summary`: the log's Summariser (setup_logging), flushed by the timer greenlet."""
        self.config = config
        self.log_summary = log_summary
        self.started_at = time.time()
        self.plugins = PluginHost()
        self.scheduler = Scheduler(time.monotonic)
        self.transports: Transports | None = None
        self.proxy: Proxy | None = None
        self.prober: Prober | None = None
        self.dns: DestinationResolver | None = None
        self.keyring: Keyring | None = None  # what signs our Record-Route (gdispatch.recordroute)
        self.flood: SourceGuard | None = None  # per-source limits (gdispatch.flood)
        self._greenlets: list[gevent.Greenlet] = []
        self.stopping = gevent.event.Event()
        self.collector = CollectorPolicy()  # started by run() once the process is up
        self.watcher: ListWatcher | None = None
        self.control: ControlServer | None = None
        self._list_digest: str | None = None
        # Several workers (gdispatch.cluster): the primary has a supervisor, every worker
        # a relay, the others a channel to the primary.
        self.supervisor: Supervisor | None = None
        self.relay: Relay | None = None
        self.channel: Channel | None = None
        self._by_key: dict = {}  # dest_key -> destination of the current list
        self._reports: dict[int, Report] = {}  # worker index -> its last report
        self._relay_socks: list = []  # primary: every worker's relay socket (relay_sockets)
        # primary: listen index -> every worker's socket on that UDP address, in worker
        # order (gdispatch.net.udp.shared_udp_sockets); it holds them all for its life,
        # so that a worker started again finds its place in the group unchanged.
        self._listen_socks: dict[int, list] = {}
        self._steered = 0  # primary: bytes the kernel searches for the Call-ID (0: no steering)
        self._covers: dict[int, list[UdpListener]] = {}  # primary: a dead worker's sockets it reads

    # ------------------------------------------------------------- events

    # What `_start_proxy` and `start` build: there from then on.
    def _proxy(self) -> Proxy:
        assert self.proxy is not None, "the proxy is built by _start_proxy"
        return self.proxy

    def _transports(self) -> Transports:
        assert self.transports is not None, "the transports are built by _start_proxy"
        return self.transports

    def _dns(self) -> DestinationResolver:
        assert self.dns is not None, "the resolver is built by _start_proxy"
        return self.dns

    def _prober(self) -> Prober:
        assert self.prober is not None, "the prober is built by start"
        return self.prober

    def destination_state_changed(self, dest, old_state, new_state, reason: str) -> None:
        if self.supervisor is not None:
            self.supervisor.broadcast(StateChanged(dest_key(dest), dest.flags))
        self.plugins.call("gdispatch_destination_state_changed", destination=dest, old_state=old_state,
                          new_state=new_state, reason=reason)

    # ------------------------------------------------------------- life

    def start(self) -> int:
        """Load everything and start serving; a non-zero exit status when it cannot.
        With several workers this process is the primary (gdispatch.cluster)."""
        config = self.config
        if not self._load_plugins():
            return 1
        try:
            dlist = load_list(config.list_file, mode=config.load_mode, kamailio_order=config.kamailio_order)
        except ListError as e:
            for p in e.problems:
                log.error("%s", p, extra=logsafe.KEEP)
            log.error("no dispatcher list loaded; not starting")
            return 1
        for problem in dlist.problems:
            log.warning("%s (line skipped: [dispatcher].load_mode = \"skip\")", problem, extra=logsafe.KEEP)
        try:
            self.keyring = ensure_key_file(self.key_path)
        except KeyFileError as e:
            log.error("%s", e)
            return 1
        log.info("dialogs are signed with key %s of %s", self.keyring.signing_id.decode(), self.key_path)
        several = config.workers > 1
        udp_socks = None
        if several:
            try:
                ensure_free(config.listen)
                self._listen_socks, self._steered, refused = shared_udp_sockets(config.listen, config.workers)
            except TransportError as e:
                log.error("%s", e.strerror or e)
                return 1
            if not self._steered and self._listen_socks:
                hint = (" (raise sysctl net.core.optmem_max to 65536 or more)"
                        if refused is not None and refused.errno == errno.ENOMEM else "")
                log.warning("the kernel does not take the program that steers datagrams by Call-ID: %s%s; "
                            "the workers relay each other's datagrams instead, one more hop for about half "
                            "of them", refused.strerror if refused else "refused", hint)
            elif self._steered:
                log.info("the kernel steers datagrams to their worker by the Call-ID in their first %d bytes",
                         self._steered)
            udp_socks = {i: socks[0] for i, socks in self._listen_socks.items()}
        code = self._start_proxy(dlist, shared=several, udp_socks=udp_socks)
        if code:
            return code
        proxy = self._proxy()
        transports = self._transports()
        probing = config.probing
        self.prober = Prober(proxy, ProbeSettings(
            interval=probing.interval, timeout=probing.timeout, method=probing.method, from_uri=probing.from_uri,
            probing_threshold=probing.probing_threshold, inactive_threshold=probing.inactive_threshold,
            mode=probing.mode, reply_codes=probing.reply_codes, latency_alpha=probing.latency_alpha,
            mark=probing.mark,
            user_agent=config.user_agent_header,
        ), lambda: proxy.dlist, on_change=self.destination_state_changed)
        proxy.on_traffic_failure = self._prober().traffic_failure
        self._prober().attach(dlist)
        self._list_digest = file_digest(config.list_file)
        if several:
            self._relay_socks = relay_sockets(config.workers)
            self._start_relay(self._relay_socks[0], 0, [x.getsockname()[1] for x in self._relay_socks])
        # With several workers the primary reads the shared port only once they all
        # listen: the calls it took meanwhile could not be handed to a worker not yet
        # there (their datagrams wait in the sockets meanwhile).
        transports.start(listen=not several)
        self._dns().start(lambda: proxy.dlist)
        self._prober().start()
        self._greenlets.append(gevent.spawn(self._tick))
        if config.watch:
            self.watcher = ListWatcher(config.list_file, self._file_changed)
            try:
                self.watcher.start()
            except Exception as e:
                log.warning("cannot watch %s (%s); reload with SIGHUP or dispatcher.reload", config.list_file, e)
                self.watcher = None
        try:
            tcp_port = None
            tcp_host = "127.0.0.1"
            if config.control_tcp:
                tcp_host, _, port_text = config.control_tcp.rpartition(":")
                tcp_port = int(port_text)
            self.control = ControlServer(self, config.control_socket or None, tcp_port=tcp_port,
                                         tcp_host=tcp_host or "127.0.0.1", token=config.control_token or None)
            self.control.start()
        except (ControlError, ValueError, OSError) as e:
            log.error("control socket: %s", e)
            return 1
        if several:
            self.supervisor = Supervisor(config.workers, self._hello, self._from_worker,
                                         [[x.fileno(), *self._worker_listen_fds(i).values()]
                                          for i, x in enumerate(self._relay_socks)], on_lost=self._cover)
            self.supervisor.start()
            self._greenlets.append(gevent.spawn(self._sync_loop))
            if not self.supervisor.wait_ready(WORKER_START_TIMEOUT, abort=self.stopping):
                log.warning("only %d of %d workers listen after %.0f s", len(self.supervisor.ready) + 1,
                            config.workers, WORKER_START_TIMEOUT)
            transports.start_listening()
        self.plugins.call("gdispatch_list_loaded", dispatcher_list=dlist, reason="start")
        self.plugins.call("gdispatch_startup", config=config)
        nsets = len(dlist.sets)
        ndest = sum(len(s.destinations) for s in dlist.sets.values())
        log.info("gdispatch listening on %s%s; %d set(s), %d destination(s) from %s",
                 ", ".join(str(x) for x in config.listen),
                 f" with {config.workers} workers" if several else "", nsets, ndest, config.list_file)
        return 0

    def _load_plugins(self) -> bool:
        try:
            self.plugins.load(self.config.plugins, self.config.hooks_dir)
        except PluginError as e:
            log.error("%s", e)
            return False
        return True

    def _start_proxy(self, dlist, *, shared: bool, udp_socks: dict | None = None) -> int:
        """Sockets, name resolution and the proxy, for the primary and the workers alike."""
        config = self.config
        holder: dict = {}
        tcp_limits, lowered = tcplimits.fit_to_fds(tcplimits.share(config.tcp, config.workers), open_files_limit(),
                                                   CONTROL_CONNECTIONS + tcplimits.RESERVED_FDS)
        if lowered:
            log.warning("%s", lowered)
        try:
            self.transports = transports = Transports(
                config.listen, lambda data, src: holder["proxy"].on_message(data, src), shared=shared,
                udp_socks=udp_socks, tcp_limits=tcp_limits, kernel_filter=config.flood.kernel_filter)
        except TransportError as e:
            log.error("%s", e.strerror or e)
            return 1
        self.dns = DestinationResolver(Resolver(list(config.dns_nameservers) or None),
                                       refresh_interval=config.dns_refresh, retry_interval=config.dns_retry)
        self._dns().resolve_all(dlist, self._reachable)
        self.proxy = proxy = Proxy(config, transports, self.scheduler, dlist, resolve_now=self._dns().resolve_now,
                                   plugins=self.plugins, keyring=self.keyring,
                                   next_hops=NextHopResolver(self._dns().resolver))
        holder["proxy"] = proxy
        transports.on_unreachable = proxy.unreachable
        fl = config.flood
        if fl.source_rate:
            # Each worker counts what it reads: datagrams of one source are spread over
            # the workers by their Call-ID, so each takes its share of the rate.
            self.flood = SourceGuard(-(-fl.source_rate // config.workers), fl.ban_time, time.monotonic,
                                     trusted=fl.trusted, on_change=transports.set_banned)
            transports.admit = self.flood.admit
            self._greenlets.append(gevent.spawn(self._flood_tick, self.flood))
        self._took_list(dlist)
        return 0

    def _took_list(self, dlist) -> None:
        """A list is in use (start, reload, from the primary): its destinations by key, and
        their addresses, which are never banned as floods."""
        self._by_key = keyed(dlist)
        if self.flood is not None:
            self.flood.set_exempt(d.address[0] for d in dlist.destinations() if d.address is not None)

    @staticmethod
    def _flood_tick(guard: SourceGuard) -> None:
        while True:
            gevent.sleep(1.0)
            guard.tick()

    def _start_relay(self, sock, index: int, ports: list[int]) -> None:
        self.relay = Relay(sock, index, ports)
        self._transports().request_receivers.append(self.relay)
        for lst in self._transports().listeners:
            if isinstance(lst, UdpListener):
                lst.steer = self.relay.steer
        self.relay.start(self._transports().deliver)

    # ------------------------------------------------------------- several workers

    def _hello(self, index: int) -> Hello:
        """What a new worker starts from (gdispatch.cluster)."""
        dlist = self._proxy().dlist
        socks = self._relay_socks
        return Hello(self.config, index, socks[index].fileno(), [x.getsockname()[1] for x in socks],
                     self._worker_listen_fds(index), dlist.text, states_of(dlist),
                     self.keyring.keys if self.keyring is not None else [])

    def _worker_listen_fds(self, index: int) -> dict[int, int]:
        """Worker `index`'s sockets on the UDP listen addresses: listen index -> fd."""
        return {i: socks[index].fileno() for i, socks in self._listen_socks.items()}

    def _from_worker(self, index: int, msg: Message) -> None:
        if isinstance(msg, TrafficFailure):
            dest = self._by_key.get(msg.key)
            if dest is not None and self.prober is not None:
                self._prober().traffic_failure(dest, f"{msg.reason} (worker {index})")
        elif isinstance(msg, Report):
            self._reports[index] = msg
            elsewhere: dict = {}
            for report in self._reports.values():
                for key, n in report.loads.items():
                    elsewhere[key] = elsewhere.get(key, 0) + n
            for key, dest in self._by_key.items():
                dest.load_elsewhere = elsewhere.get(key, 0)
        elif isinstance(msg, Ready):
            log.info("worker %d listens", index)
            self._uncover(index)

    def _cover(self, index: int) -> None:
        """Worker `index` died: until it is back, read its sockets on the UDP listen
        addresses, which the kernel goes on giving datagrams (the primary holds them so
        that the worker finds its place in the group again). What belongs to another
        worker goes to it at once; what was the dead worker's waits in its relay socket."""
        if index in self._covers or self.relay is None:
            return
        covers = []
        for i, socks in self._listen_socks.items():
            lst = UdpListener(self.config.listen[i], self._transports(), sock=socks[index])
            lst.index = i
            lst.steer = self.relay.steer
            lst.start()
            covers.append(lst)
        self._covers[index] = covers

    def _uncover(self, index: int) -> None:
        """Stop reading worker `index`'s sockets; they stay open: they are the worker's."""
        for lst in self._covers.pop(index, ()):
            if lst.greenlet is not None:
                lst.greenlet.kill(block=False)

    def _sync_loop(self) -> None:
        """Primary: the latency estimates (algorithm 11 reads them) to every worker."""
        while True:
            gevent.sleep(SYNC_INTERVAL)
            lat = {dest_key(d): d.latency_est_ms for d in self._proxy().dlist.destinations()
                   if d.latency_est_ms is not None}
            if lat and self.supervisor is not None:
                self.supervisor.broadcast(Latencies(lat))

    def start_worker(self, hello: Hello, sock) -> int:
        """Start as worker `hello.index` (not the primary): the list, the states and the
        dialog keys come from the primary, which does the probing, watching and control;
        its sockets on the UDP listen addresses, too."""
        config = self.config
        self.keyring = Keyring(hello.keys)
        if not self._load_plugins():
            return 1
        dlist = parse_list(hello.list_text, config.list_file, mode=config.load_mode,
                           kamailio_order=config.kamailio_order)
        apply_states(dlist, hello.states)
        udp_socks = {i: socket.socket(fileno=fd) for i, fd in hello.listen_fds.items()}
        code = self._start_proxy(dlist, shared=True, udp_socks=udp_socks)
        if code:
            return code
        proxy = self._proxy()
        self.channel = channel = Channel(sock)
        proxy.on_traffic_failure = lambda dest, reason: channel.send(TrafficFailure(dest_key(dest), reason))
        self._start_relay(socket.socket(fileno=hello.relay_fd), hello.index, hello.relay_ports)
        self._transports().start()
        self._dns().start(lambda: proxy.dlist)
        self._greenlets.append(gevent.spawn(self._tick))
        self._greenlets.append(gevent.spawn(self._report_loop))
        channel.start(self._from_primary, self.stopping.set)
        self.plugins.call("gdispatch_list_loaded", dispatcher_list=dlist, reason="start")
        self.plugins.call("gdispatch_startup", config=config)
        channel.send(Ready())
        return 0

    def _from_primary(self, msg: Message) -> None:
        proxy = self._proxy()
        if isinstance(msg, StateChanged):
            dest = self._by_key.get(msg.key)
            if dest is not None:
                dest.flags = msg.flags
        elif isinstance(msg, Latencies):
            for key, ms in msg.ms.items():
                dest = self._by_key.get(key)
                if dest is not None:
                    dest.latency_est_ms = ms
        elif isinstance(msg, ListSwapped):
            reason = msg.reason
            config = self.config
            new = parse_list(msg.text, config.list_file, mode=config.load_mode,
                             kamailio_order=config.kamailio_order)
            self._dns().resolve_all(new, self._reachable)
            summary = carry_state(proxy.dlist, new, keep_state=config.reload_keeps_state)
            if config.reload_keeps_state:
                proxy.calls.rebind(summary.replaced)
            apply_states(new, msg.states)  # the primary's states win
            proxy.set_list(new)
            self._took_list(new)
            self.plugins.call("gdispatch_list_loaded", dispatcher_list=new, reason=reason)
        elif isinstance(msg, KeysChanged):
            self.keyring = proxy.keyring = Keyring(msg.keys)
        elif isinstance(msg, Stop):
            self.stopping.set()

    def _report_loop(self) -> None:
        """A worker's call loads, counters and statistics, for the primary to show."""
        while True:
            gevent.sleep(SYNC_INTERVAL)
            loads = {dest_key(d): d.load for d in self._proxy().dlist.destinations() if d.load}
            if self.channel is not None:
                self.channel.send(Report(loads, dict(self._proxy().dest_counts), self._local_stats()))

    # ------------------------------------------------------------- reload

    @property
    def key_path(self) -> str:
        return self.config.security.key_file or default_key_path()

    def reload_keys(self) -> str:
        """Read the key file again (a key added or retired, gdispatch.recordroute); on an
        error the running keys stay. Returns what happened, for the reload's answer."""
        try:
            ring = load_keys(self.key_path)
        except KeyFileError as e:
            log.error("%s; the running dialog keys stay", e, extra=logsafe.KEEP)
            return f"dialog keys not reloaded: {e}"
        if self.keyring is not None and ring.keys == self.keyring.keys:
            return ""
        self.keyring = ring
        if self.proxy is not None:
            self._proxy().keyring = ring
        if self.supervisor is not None:
            self.supervisor.broadcast(KeysChanged(ring.keys))
        msg = f"dialog keys reloaded: {len(ring.keys)} key(s), new dialogs signed with {ring.signing_id.decode()}"
        log.warning("%s", msg, extra=logsafe.KEEP)
        return msg

    def reload(self, reason: str = "reload requested") -> str:
        """Load the list file again and swap it in, keeping each unchanged destination's
        state, and the dialog keys. Raises ListError (the running list stays) when the
        list does not load."""
        config = self.config
        sdnotify.reloading()
        keys = self.reload_keys()
        try:
            try:
                new = load_list(config.list_file, mode=config.load_mode, kamailio_order=config.kamailio_order)
            except ListError as e:
                for p in e.problems:
                    log.error("%s", p, extra=logsafe.KEEP)
                log.error("%s: the list was not reloaded; the running one stays", config.list_file)
                raise
            for problem in new.problems:
                log.warning("%s (line skipped: [dispatcher].load_mode = \"skip\")", problem, extra=logsafe.KEEP)
            self._list_digest = file_digest(config.list_file)
            summary = self._swap_in(new, reason)
            return f"{summary}; {keys}" if keys else summary
        finally:
            sdnotify.ready()

    def _swap_in(self, new, reason: str) -> str:
        config = self.config
        proxy = self._proxy()
        self._dns().resolve_all(new, self._reachable)
        summary = carry_state(proxy.dlist, new, keep_state=config.reload_keeps_state)
        if config.reload_keeps_state:
            proxy.calls.rebind(summary.replaced)
        proxy.set_list(new)
        self._took_list(new)
        if self.supervisor is not None:
            # Before attach(): the states it reports name destinations of the new list.
            self.supervisor.broadcast(ListSwapped(new.text, reason, states_of(new)))
        self._prober().attach(new)
        self.plugins.call("gdispatch_list_loaded", dispatcher_list=new, reason=reason)
        msg = f"{config.list_file} reloaded ({reason}): {summary.describe()}"
        log.warning("%s", msg, extra=logsafe.KEEP)
        return msg

    # ------------------------------------------------------------- ControlApi (gdispatch.control.methods)

    version = __version__

    @property
    def ping_active(self) -> bool:
        return self._prober().active

    @ping_active.setter
    def ping_active(self, value: bool) -> None:
        self._prober().active = bool(value)

    def current_list(self):
        return self._proxy().dlist

    @property
    def list_file(self) -> str:
        return self.config.list_file

    def replace_list(self, text: str, reason: str) -> None:
        new = parse_list(text, self.config.list_file, kamailio_order=self.config.kamailio_order)
        self._swap_in(new, reason)

    def state_changed(self, dest, old_flags: int, reason: str) -> None:
        old, new = state_letters(old_flags), dest.state_letters()
        log.warning("destination %s (set %d) %s -> %s: %s", dest.uri, dest.setid, old, new, reason,
                    extra=logsafe.KEEP)
        self.destination_state_changed(dest, old, new, reason)

    def _local_stats(self) -> dict[str, int]:
        proxy = self._proxy()
        out = dict(proxy.stats)
        out.update(self._transports().stats)
        out["server_transactions"] = len(proxy.server_txns)
        out["client_transactions"] = len(proxy.client_txns)
        out["calls_in_progress"] = proxy.calls_in_progress()
        out["active_calls"] = len(proxy.calls)
        if self.flood is not None:
            out["flood_dropped"] = self.flood.dropped
            out["flood_bans"] = self.flood.bans
            out["banned_sources"] = len(self.flood.banned)
        if self.relay is not None:
            out["relayed_to_other_workers"] = self.relay.sent
            out["relay_dropped"] = self.relay.dropped
        return out

    def stats(self) -> dict:
        """Every worker's counters summed (the others report every SYNC_INTERVAL)."""
        proxy = self._proxy()
        out: dict[str, Any] = dict(self._local_stats())
        others = []
        for report in self._reports.values():
            others.append(report.counters)
            for k, v in report.stats.items():
                out[k] = out.get(k, 0) + v
        if self.config.workers > 1:
            out["workers"] = self.config.workers
            out["workers_ready"] = 1 + len(self.supervisor.ready) if self.supervisor else 1
            out["kernel_steering"] = int(bool(self._steered))
            # How the calls are spread: what each worker dispatched, in worker order.
            out["dispatched_by_worker"] = [proxy.stats["dispatched"]] + [
                self._reports[i].stats.get("dispatched", 0) if i in self._reports else 0
                for i in range(1, self.config.workers)]
        out["plugin_errors"] = dict(self.plugins.errors)
        out["plugin_slow_calls"] = dict(self.plugins.slow)
        out["destinations"] = [
            {"SET": d.setid, "URI": d.uri, "DUID": d.duid, "FLAGS": d.state_letters(),
             "ACTIVE_CALLS": d.load + d.load_elsewhere, **proxy.destination_counters(d, others)}
            for d in proxy.dlist.destinations()
        ]
        return out

    def _file_changed(self) -> None:
        digest = file_digest(self.config.list_file)
        if digest is None or digest == self._list_digest:
            return
        try:
            self.reload("the file changed")
        except ListError:
            self._list_digest = digest  # tried; the next good write recovers

    def _reachable(self, dest, ip: str) -> str:
        return self._transports().can_reach(dest.transport, ip)

    def _tick(self) -> None:
        scheduler = self.scheduler
        clock = time.monotonic
        collector = self.collector
        log_summary = self.log_summary
        while True:
            scheduler.run_due(clock())
            collector.maybe_collect()
            if log_summary is not None:
                log_summary.flush()
            nd = scheduler.next_deadline()
            gevent.sleep(TIMER_TICK if nd is None else min(max(nd - clock(), 0.001), TIMER_TICK))

    def drain(self) -> None:
        """SIGTERM: stop taking new calls, let the ones being set up finish (bounded)."""
        proxy = self._proxy()
        proxy.draining = True
        now = time.monotonic()
        proxy.last_message_at = now
        deadline = now + self.config.drain_time
        # Done when no call is being set up and the dialogs have been quiet for a moment
        # (the ACK and BYE of a call answered just before SIGTERM are still coming).
        while time.monotonic() < deadline and (proxy.calls_in_progress()
                                               or time.monotonic() - proxy.last_message_at < DRAIN_QUIET):
            gevent.sleep(0.05)
        left = proxy.calls_in_progress()
        if left:
            log.warning("drain time over with %d request(s) still in progress", left)

    def stop(self) -> None:
        log.info("stopping")
        sdnotify.stopping()
        if self.watcher is not None:
            self.watcher.stop()
        if self.control is not None:
            self.control.stop()
        self.plugins.call("gdispatch_shutdown")
        for g in self._greenlets:
            g.kill(block=False)
        if self.prober is not None:
            self._prober().stop()
        if self.dns is not None:
            self._dns().stop()
        if self.relay is not None:
            self.relay.close()
        for index in list(self._covers):
            self._uncover(index)
        for socks in self._listen_socks.values():
            for sock in socks[1:]:  # the first is the primary's own, closed with its listener
                sock.close()
        if self.transports is not None:
            self._transports().close()
        if self.log_summary is not None:
            self.log_summary.close()


def run(config: Config) -> int:
    log_summary = setup_logging(config.log_level, "w0" if config.workers > 1 else "")
    app = App(config, log_summary)
    # Before start(): a SIGTERM while the workers start must still end in a drain.
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, app.stopping.set)
    code = app.start()
    if code:
        return code
    app.collector.start()

    def hangup() -> None:
        def do() -> None:
            try:
                app.reload("SIGHUP")
            except ListError:
                pass
        gevent.spawn(do)

    gevent.signal_handler(signal.SIGHUP, hangup)
    sdnotify.ready()
    app.stopping.wait()
    log.info("stopping: no new calls; draining for up to %.1f s", config.drain_time)
    if app.supervisor is not None:
        app.supervisor.drain()  # every worker drains at the same time
    app.drain()
    if app.supervisor is not None:
        app.supervisor.stop(config.drain_time + 3.0)
    app.stop()
    return 0


def run_worker(hello: Hello, sock) -> int:
    """A worker other than the primary (``python -m gdispatch.cluster``): serve until
    the primary says stop or goes away, then drain like the primary does. `sock`: its
    end of the channel, on which `hello` came."""
    config = hello.config
    log_summary = setup_logging(config.log_level, f"w{hello.index}")
    app = App(config, log_summary)
    code = app.start_worker(hello, sock)
    if code:
        return code
    app.collector.start()
    # Signals go to the primary, which tells the workers; a terminal's Ctrl-C or a
    # SIGTERM sent to the whole process group drains this one too.
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, app.stopping.set)
    gevent.signal_handler(signal.SIGHUP, lambda: None)
    app.stopping.wait()
    app.drain()
    app.stop()
    return 0
