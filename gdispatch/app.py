"""Wiring: build the transports, scheduler, dispatcher list and proxy, and run them.

This is the only place that knows every layer. It also owns process-level concerns:
logging set-up, signals, and resolving destination addresses when the list is loaded.
"""

from __future__ import annotations

import logging
import signal
import sys
import time

import gevent
import gevent.event

from gdispatch.config import Config
from gdispatch.dispatcher.listfile import ListError, load_list
from gdispatch.dns import DestinationResolver, Resolver
from gdispatch.proxy import Proxy
from gdispatch.transaction.timers import Scheduler
from gdispatch.transport import TransportError, Transports

log = logging.getLogger("gdispatch")

TIMER_TICK = 0.02  # the scheduler's granularity, seconds


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(config: Config) -> int:
    setup_logging(config.log_level)
    if config.workers != 1:
        log.error("--workers %d: only one worker is supported so far", config.workers)
        return 2
    try:
        dlist = load_list(config.list_file, mode=config.load_mode, kamailio_order=config.kamailio_order)
    except ListError as e:
        for p in e.problems:
            log.error("%s", p)
        log.error("no dispatcher list loaded; not starting")
        return 1
    for problem in dlist.problems:
        log.warning("%s (line skipped: [dispatcher].load_mode = \"skip\")", problem)
    scheduler = Scheduler(time.monotonic)
    holder: dict = {}
    try:
        transports = Transports(config.listen, lambda data, src: holder["proxy"].on_message(data, src))
    except TransportError as e:
        log.error("%s", e.strerror or e)
        return 1
    resolver = Resolver(list(config.dns_nameservers) or None)
    dns = DestinationResolver(resolver, refresh_interval=config.dns_refresh, retry_interval=config.dns_retry)
    dns.resolve_all(dlist, lambda d, ip: transports.can_reach(d.transport, ip))
    proxy = Proxy(config, transports, scheduler, dlist, resolve_now=dns.resolve_now)
    holder["proxy"] = proxy
    transports.start()
    dns.start(lambda: proxy.dlist)

    def tick() -> None:
        clock = time.monotonic
        while True:
            now = clock()
            scheduler.run_due(now)
            nd = scheduler.next_deadline()
            gevent.sleep(TIMER_TICK if nd is None else min(max(nd - clock(), 0.001), TIMER_TICK))

    timer_greenlet = gevent.spawn(tick)
    stop = gevent.event.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, stop.set)
    nsets = len(dlist.sets)
    ndest = sum(len(s.destinations) for s in dlist.sets.values())
    log.info("gdispatch listening on %s; %d set(s), %d destination(s) from %s",
             ", ".join(str(x) for x in config.listen), nsets, ndest, config.list_file)
    stop.wait()
    log.info("stopping")
    timer_greenlet.kill(block=False)
    dns.stop()
    transports.close()
    return 0
