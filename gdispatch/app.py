"""Wiring: build the transports, scheduler, dispatcher list and proxy, and run them.

This is the only place that knows every layer. It also owns process-level concerns:
logging set-up, signals, and resolving destination addresses when the list is loaded.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import gevent
import gevent.event

from gdispatch import __version__, hep, logsafe, sdnotify, tcplimits
from gdispatch.cluster.channel import Hello, apply_states
from gdispatch.cluster.roles import Primary, Role, Single, Worker
from gdispatch.collector import CollectorPolicy
from gdispatch.config import Config
from gdispatch.control.server import MAX_CONNECTIONS as CONTROL_CONNECTIONS
from gdispatch.control.server import ControlError, ControlServer
from gdispatch.dispatcher.algorithms import ALG_CALL_LOAD
from gdispatch.dispatcher.destination import state_letters
from gdispatch.dispatcher.listfile import ListError
from gdispatch.dispatcher.sockets import SocketTable
from gdispatch.dispatcher.statefile import StateKeeper, default_path
from gdispatch.dns import DestinationResolver, NextHopResolver, Resolver
from gdispatch.flood import SourceGuard
from gdispatch.ha.node import Node
from gdispatch.ha.store import MissingClient
from gdispatch.listinuse import ListInUse
from gdispatch.measures import Samples, samples
from gdispatch.net import TlsContexts, TlsSetupError, TransportError, Transports
from gdispatch.net.tcp import open_files_limit
from gdispatch.net.tls import profile_problem
from gdispatch.plugins import PluginError, PluginHost
from gdispatch.probing.pinger import Prober
from gdispatch.probing.policy import ProbeSettings
from gdispatch.proxy import Proxy
from gdispatch.proxy.routing import missing_sets
from gdispatch.recordroute import KeyFileError, Keyring, ensure_key_file
from gdispatch.transaction.timers import Scheduler
from gdispatch.watch import ListWatcher, file_digest
from gdispatch.web.server import WebServer
from gdispatch.web.status import Changes

log = logging.getLogger("gdispatch")

DRAIN_QUIET = 1.0  # on SIGTERM, stop once no message arrived for this long (or drain_time)


class App(ListInUse):
    """The running proxy and everything around it, in one process. What the process does
    among several workers is its `cluster` role (gdispatch.cluster.roles), called the
    same way whatever the number of workers."""

    def __init__(self, config: Config, cluster: Role, log_summary: logsafe.Summariser | None = None):
        """`cluster`: this process's role (`Single` with one worker). `log_summary`: the
        log's Summariser (gdispatch.logsafe.setup), flushed by the timer greenlet."""
        self.config = config
        self.cluster = cluster
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
        self.web: WebServer | None = None  # [http]: metrics and the status page (the primary's)
        self.changes = Changes()  # the recent state changes and reloads the status page lists
        self._list_digest: str | None = None
        # The states the operator set, kept across restarts (gdispatch.dispatcher.statefile):
        # the primary's alone, with [dispatcher] persistent_state, once the file was read.
        self.operator_states = StateKeeper(config.state_file or default_path(config.list_file), gevent.spawn)
        # The listen addresses a list line's socket attrs must name
        # (gdispatch.dispatcher.sockets); every list this process loads is read against them.
        self.sockets = SocketTable(config.listen)
        # This node among those sharing [cluster] redis (gdispatch.ha): the primary's.
        self.ha: Node | None = None

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
        self.cluster.state_changed(dest)
        self.changes.state(dest, old_state, new_state, reason)
        self.plugins.call("gdispatch_destination_state_changed", destination=dest, old_state=old_state,
                          new_state=new_state, reason=reason)

    # ------------------------------------------------------------- life

    def start(self) -> int:
        """Load everything and start serving; a non-zero exit status when it cannot.
        With several workers this process is the primary (gdispatch.cluster.roles)."""
        config = self.config
        if not self._load_plugins():
            return 1
        try:
            dlist = self.read_list()
        except ListError as e:
            for p in e.problems:
                log.error("%s", p, extra=logsafe.KEEP)
            log.error("no dispatcher list loaded; not starting")
            return 1
        for problem in dlist.problems:
            log.warning("%s (line skipped: [dispatcher].load_mode = \"skip\")", problem, extra=logsafe.KEEP)
        missing = missing_sets(config.routes, dlist)
        if missing:
            for p in missing:
                log.error("%s", p, extra=logsafe.KEEP)
            log.error("a [[route]] sends to a set the list does not have; not starting")
            return 1
        if config.persistent_state:
            self.operator_states.open()
        self.operator_states.restore(dlist.destinations(), lambda d: True, prune=True)
        try:
            self.keyring = ensure_key_file(self.key_path)
        except KeyFileError as e:
            log.error("%s", e)
            return 1
        log.info("dialogs are signed with key %s of %s", self.keyring.signing_id.decode(), self.key_path)
        code = self._start_proxy(dlist)
        if code:
            return code
        proxy = self._proxy()
        transports = self._transports()
        probing = config.probing
        self.prober = prober = Prober(proxy, ProbeSettings(
            interval=probing.interval, timeout=probing.timeout, method=probing.method, from_uri=probing.from_uri,
            probing_threshold=probing.probing_threshold, inactive_threshold=probing.inactive_threshold,
            mode=probing.mode, reply_codes=probing.reply_codes, latency_alpha=probing.latency_alpha,
            mark=probing.mark, retry_down=probing.retry_down,
            user_agent=config.user_agent_header,
        ), lambda: proxy.dlist, on_change=self.destination_state_changed)
        prober.attach(dlist)
        self._list_digest = file_digest(config.list_file)
        try:
            self.ha = Node(self, config.ha)
        except MissingClient as e:
            log.error("%s", e)
            return 1
        proxy.leases = self.ha.leases
        # The listen sockets are read once the cluster is ready (`start_listening` below):
        # with several workers, the calls the primary took before the others listen
        # could not be handed to them (their datagrams wait in the sockets meanwhile).
        self._receive(listen=False)
        self.cluster.start(self, proxy, transports, prober)
        self._dns().start(lambda: proxy.dlist)
        prober.start()
        self.ha.start()
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
        if config.http.listen:
            try:
                self.web = WebServer(self, config.http.listen)
                self.web.start()
            except OSError as e:
                log.error("[http] listen = %r: %s", config.http.listen, e.strerror or e)
                return 1
        self.cluster.ready(self.stopping)
        transports.start_listening()
        self.plugins.call("gdispatch_list_loaded", dispatcher_list=dlist, reason="start")
        self.plugins.call("gdispatch_startup", config=config)
        nsets = len(dlist.sets)
        ndest = sum(len(s.destinations) for s in dlist.sets.values())
        log.info("gdispatch listening on %s%s; %d set(s), %d destination(s) from %s",
                 ", ".join(x.described() for x in config.listen),
                 f" with {config.workers} workers" if config.workers > 1 else "", nsets, ndest, config.list_file)
        return 0

    def start_worker(self, hello: Hello) -> int:
        """Start as worker `hello.index` of several (not the primary): the list, the
        states and the dialog keys come from the primary, which does the probing,
        watching and control; so do the sockets (the `cluster` role's)."""
        config = self.config
        self.keyring = Keyring(hello.keys)
        if not self._load_plugins():
            return 1
        dlist = self.read_list(hello.list_text)
        apply_states(dlist, hello.states)
        code = self._start_proxy(dlist)
        if code:
            return code
        proxy = self._proxy()
        self._receive(listen=True)
        self._dns().start(lambda: proxy.dlist)
        self._greenlets.append(gevent.spawn(self._tick))
        self.cluster.start(self, proxy, self._transports(), None)
        self.plugins.call("gdispatch_list_loaded", dispatcher_list=dlist, reason="start")
        self.plugins.call("gdispatch_startup", config=config)
        self.cluster.ready(self.stopping)
        return 0

    def _load_plugins(self) -> bool:
        try:
            self.plugins.load(self.config.plugins, self.config.hooks_dir)
        except PluginError as e:
            log.error("%s", e)
            return False
        return True

    def _start_proxy(self, dlist) -> int:
        """Sockets, name resolution and the proxy, for the primary and the workers alike."""
        config = self.config
        tcp_limits, lowered = tcplimits.fit_to_fds(tcplimits.share(config.tcp, config.workers), open_files_limit(),
                                                   CONTROL_CONNECTIONS + tcplimits.RESERVED_FDS)
        if lowered:
            log.warning("%s", lowered)
        try:
            tls = TlsContexts(config.tls, server=True) if any(x.transport == "tls" for x in config.listen) else None
            socks = self.cluster.sockets()
            self.transports = transports = Transports(
                config.listen, shared=socks.shared, udp_socks=socks.udp, handoff=socks.relay,
                tcp_limits=tcp_limits, kernel_filter=config.flood.kernel_filter, tls=tls)
            if config.capture.hep:  # each process sends the copies of what it handles (gdispatch.hep)
                transports.tap(hep.Sender(config.capture.hep, config.capture.capture_id, transports.stats).capture)
        except TlsSetupError as e:
            log.error("%s", e)
            return 1
        except TransportError as e:
            log.error("%s", e.strerror or e)
            return 1
        self.dns = DestinationResolver(Resolver(list(config.dns_nameservers) or None),
                                       refresh_interval=config.dns_refresh, retry_interval=config.dns_retry,
                                       on_usable_change=self._usable_changed)
        self._dns().resolve_all(dlist, self._reachable)
        # The transports come first (the proxy sends through them and names their
        # listeners); what they read goes to the proxy from `_receive`, at their start.
        self.proxy = Proxy(config, transports, self.scheduler, dlist, resolve_now=self._dns().resolve_now,
                           plugins=self.plugins, keyring=self.keyring,
                           next_hops=NextHopResolver(self._dns().resolver),
                           on_traffic_failure=self.cluster.traffic_failure)
        fl = config.flood
        if fl.source_rate:
            # Each worker counts what it reads: datagrams of one source are spread over
            # the workers by their Call-ID, so each takes its share of the rate.
            self.flood = SourceGuard(-(-fl.source_rate // config.workers), fl.ban_time, time.monotonic,
                                     trusted=fl.trusted, on_change=transports.set_banned)
            self._greenlets.append(gevent.spawn(self._flood_tick, self.flood))
        self._took_list(dlist, "start")
        return 0

    def _receive(self, *, listen: bool) -> None:
        """Start the transports: what they read goes to the proxy, once the flood guard
        admits it."""
        proxy = self._proxy()
        self._transports().start(proxy.on_message, on_unreachable=proxy.unreachable,
                                 admit=self.flood.admit if self.flood is not None else None, listen=listen)

    def _took_list(self, dlist, reason: str) -> None:
        """A list is in use (start, reload, from the primary): the cluster hears of it,
        and its destinations' addresses are never banned as floods."""
        self.cluster.list_loaded(dlist, reason)
        if self.flood is not None:
            self.flood.set_exempt(d.address[0] for d in dlist.destinations() if d.address is not None)

    @staticmethod
    def _flood_tick(guard: SourceGuard) -> None:
        while True:
            gevent.sleep(1.0)
            guard.tick()

    # ------------------------------------------------------------- Host (gdispatch.cluster.roles)

    def use_keys(self, keys: list) -> None:
        """A worker: the dialog keys the primary read again."""
        self.keyring = self._proxy().keyring = Keyring(keys)

    def tls_connections(self) -> list[dict]:
        """This process's TLS connections, then the other workers'."""
        return self._transports().tls_connections() + self.cluster.tls_connections()

    # ------------------------------------------------------------- ControlApi (gdispatch.control.methods)

    version = __version__

    @property
    def ping_active(self) -> bool:
        return self._prober().active

    @ping_active.setter
    def ping_active(self, value: bool) -> None:
        self._prober().active = bool(value)
        if self.ha is not None:
            self.ha.ping_active(bool(value))

    @property
    def call_load_routing(self) -> bool:
        return any(r.algorithm == ALG_CALL_LOAD for r in self.config.routes)

    def current_list(self):
        return self._proxy().dlist

    @property
    def list_file(self) -> str:
        return self.config.list_file

    def cluster_view(self) -> dict:
        """``cluster.list``: the nodes sharing [cluster] redis, or this one alone."""
        assert self.ha is not None, "built by start"
        return self.ha.describe()

    def node_views(self) -> tuple[str, dict, str]:
        assert self.ha is not None, "built by start"
        return (self.ha.name, *self.ha.views())

    def state_changed(self, dest, old_flags: int, reason: str) -> None:
        old, new = dest.state_letters(old_flags), dest.state_letters()
        log.info("destination %s %s -> %s: %s", dest.label, old, new, reason,
                    extra=logsafe.KEEP)
        self.operator_states.note(dest, reason)
        if self.ha is not None:
            self.ha.operator_state(dest)
        self.destination_state_changed(dest, old, new, reason)

    def local_stats(self) -> dict[str, int]:
        """This process's counters (a worker's `Report` carries them to the primary)."""
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
        out.update(self.cluster.counters())
        return out

    def local_metrics(self) -> Samples:
        """This process's labelled counters and histograms (a worker's `Report` carries
        them to the primary)."""
        return samples(self._proxy(), self.plugins, self.prober)

    def metrics(self) -> Samples:
        """Every worker's labelled counters and histograms, summed (gdispatch.web.metrics)."""
        out = self.local_metrics()
        self.cluster.merge_metrics(out)
        return out

    def stats(self) -> dict:
        """This process's counters, and the other workers' added in by the cluster."""
        proxy = self._proxy()
        out: dict[str, Any] = dict(self.local_stats())
        others = self.cluster.merge_stats(out)
        out["plugin_errors"] = dict(self.plugins.errors)
        out["plugin_slow_calls"] = dict(self.plugins.slow)
        out["destinations"] = [
            {"SET": d.setid, "URI": d.uri, "DUID": d.duid, "FLAGS": d.state_letters(),
             "ACTIVE_CALLS": d.load + d.load_elsewhere, **proxy.call_counts.summed(d, others)}
            for d in proxy.dlist.destinations()
        ]
        return out

    def _usable_changed(self, dest) -> None:
        """A name resolved at last (or lost its last address): what ``dispatcher.list``
        shows changed (IX to AX, or back), reported like any state change. The primary
        alone reports states; a worker resolves for its own sends."""
        if self.prober is None:
            return
        old = state_letters(dest.flags, not dest.usable)
        new = dest.state_letters()
        if old != new:
            reason = dest.unusable or "the name resolves"
            log.log(logging.WARNING if dest.unusable else logging.INFO, "destination %s %s -> %s: %s",
                    dest.label, old, new, reason, extra=logsafe.KEEP)
            self.destination_state_changed(dest, old, new, reason)

    def _reachable(self, dest, ip: str) -> str:
        return (profile_problem(self.config.tls, dest.transport, dest.attr_map.get("tls_profile", ""))
                or self._transports().can_reach(dest.transport, ip))

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
            gevent.sleep(scheduler.sleep_time(clock()))

    def drain(self) -> None:
        """SIGTERM: stop taking new calls, let the ones being set up finish (bounded).
        The other workers drain at the same time."""
        self.cluster.drain()
        proxy = self._proxy()
        proxy.draining = True
        # No new call will be sent anywhere, so pings have nothing left to decide; and
        # their answers, one every interval / destinations, would keep the drain from
        # ever being quiet for DRAIN_QUIET, so that every stop took all of drain_time.
        if self.prober is not None:
            self._prober().stop()
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
        self.cluster.stop()  # the other workers first: they drained meanwhile
        log.info("stopping")
        sdnotify.stopping()
        if self.watcher is not None:
            self.watcher.stop()
        if self.ha is not None:
            self.ha.stop()
        if self.control is not None:
            self.control.stop()
        if self.web is not None:
            self.web.stop()
        self.plugins.call("gdispatch_shutdown")
        self.operator_states.flush()  # a state set just before the stop is on disk
        for g in self._greenlets:
            g.kill(block=False)
        if self.prober is not None:
            self._prober().stop()
        if self.dns is not None:
            self._dns().stop()
        if self.transports is not None:
            self._transports().close()
        if self.log_summary is not None:
            self.log_summary.close()


def run(config: Config) -> int:
    """``gdispatch run``: the proxy, the primary of `config.workers` when there are several."""
    cluster: Role = Primary(config) if config.workers > 1 else Single()
    log_summary = logsafe.setup(config.log_level, cluster.tag, config.log_format)
    app = App(config, cluster, log_summary)
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
    app.drain()
    app.stop()
    return 0


def run_worker(worker: Worker) -> int:
    """A worker other than the primary (``python -m gdispatch.cluster``): serve until
    the primary says stop or goes away, then drain like the primary does."""
    config = worker.hello.config
    log_summary = logsafe.setup(config.log_level, worker.tag, config.log_format)
    app = App(config, worker, log_summary)
    code = app.start_worker(worker.hello)
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
