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
import gevent.socket

from gdispatch.config import Config
from gdispatch.dispatcher.destination import DispatcherList
from gdispatch.dispatcher.listfile import ListError, load_list
from gdispatch.proxy import Proxy
from gdispatch.transaction.timers import Scheduler
from gdispatch.transport import TransportError, Transports

log = logging.getLogger("gdispatch")

TIMER_TICK = 0.02  # the scheduler's granularity, seconds


def resolve_destinations(dlist: DispatcherList, transports: Transports) -> None:
    """Fill in each destination's address; say clearly why one cannot be used."""
    for d in dlist.destinations():
        uri = d.sip_uri
        port = uri.port or (5061 if uri.scheme == "sips" else 5060)
        host = uri.host
        try:
            infos = gevent.socket.getaddrinfo(host, port, 0, gevent.socket.SOCK_DGRAM)
            ip = infos[0][4][0]
        except (OSError, IndexError) as e:
            d.address = None
            d.unusable = f"cannot resolve {host}: {e}"
            log.warning("%s: destination %s: %s; it will not be used", d.where, d.uri, d.unusable)
            continue
        why = transports.can_reach(d.transport, ip)
        if why:
            d.address = None
            d.unusable = why
            log.warning("%s: destination %s cannot be reached: %s", d.where, d.uri, why)
            continue
        d.address = (ip, port)
        d.unusable = ""


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
        dlist = load_list(config.list_file)
    except ListError as e:
        for p in e.problems:
            log.error("%s", p)
        log.error("no dispatcher list loaded; not starting")
        return 1
    scheduler = Scheduler(time.monotonic)
    holder: dict = {}
    try:
        transports = Transports(config.listen, lambda data, src: holder["proxy"].on_message(data, src))
    except TransportError as e:
        log.error("%s", e.strerror or e)
        return 1
    resolve_destinations(dlist, transports)
    proxy = Proxy(config, transports, scheduler, dlist)
    holder["proxy"] = proxy
    transports.start()

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
    transports.close()
    return 0
