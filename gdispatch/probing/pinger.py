"""The keepalive pinger: one greenlet that sends SIP OPTIONS to every destination due a
ping, spread evenly over the interval so that hundreds of destinations never fire at
once, and applies each result (`gdispatch.probing.policy`) to the destination's state.
A destination that goes down is retried sooner, on the back-off `policy.next_retry`
gives, by a timer of the proxy's scheduler; the round leaves it out meanwhile.

Pings are ordinary client transactions of the proxy (their responses are matched by
branch, whatever the Via or NAT in between), with a timeout of their own. The From tag
carries the destination record's unique id, so the same URI twice in a list is two
records with two states. Every state change is logged (a warning when a destination goes
down or comes up) and reported through the `on_change` callback, which the application
turns into the `gdispatch_destination_state_changed` hook.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Callable

import gevent

from gdispatch import logsafe
from gdispatch.dispatcher.destination import Destination, DispatcherList
from gdispatch.measures import PING_BUCKETS, Histogram
from gdispatch.net import TlsPeer
from gdispatch.probing.policy import (
    PING_TIMEOUT_STATUS,
    ProbeSettings,
    ProbeState,
    apply_result,
    apply_traffic_failure,
    is_up,
    next_retry,
    should_ping,
)
from gdispatch.sip import ParseError, parse_uri

# The logger keeps the name of the module this was before the probing package, so that
# log filters and greps written against it keep matching.
log = logging.getLogger("gdispatch.prober")

StateCallback = Callable[[Destination, "str | None", str, str], None]


class Prober:
    def __init__(self, proxy, settings: ProbeSettings, get_list: Callable[[], DispatcherList],
                 on_change: StateCallback | None = None, clock: Callable[[], float] = time.monotonic):
        self.proxy = proxy
        self.settings = settings
        self.get_list = get_list
        self.on_change = on_change
        self.clock = clock
        self.active = True  # dispatcher.ping_active
        self._ids = itertools.count(1)
        self._greenlet: gevent.Greenlet | None = None
        self._stopped = False
        self._calls = itertools.count(1)
        self._salt = "%x" % (os.getpid() & 0xFFFF)
        self.round_trips = Histogram(PING_BUCKETS)  # seconds from a ping to its reply, for the metrics

    # ----------------------------------------------------------------- state

    def attach(self, dlist: DispatcherList, *, initial: bool = True) -> None:
        """Give every destination of a (new) list its probe state; report initial states."""
        for d in dlist.destinations():
            if d.probe is None:
                seed = None
                lat = d.attr_map.get("latency")
                if lat:
                    try:
                        seed = float(lat)
                    except ValueError:
                        seed = None
                d.probe = ProbeState(f"{next(self._ids):x}", seed)
                if seed is not None:
                    d.latency_est_ms = seed
            if initial and self.on_change is not None:
                self.on_change(d, None, d.state_letters(), "initial state")

    def _changed(self, dest: Destination, old: int, reason: str) -> None:
        new = dest.flags
        if new == old:
            return
        old_l, new_l = dest.state_letters(old), dest.state_letters()
        if is_up(old) and not is_up(new):
            log.warning("destination %s is down (%s): %s", dest.label, new_l, reason,
                        extra=logsafe.KEEP)
        elif not is_up(old) and is_up(new):
            log.info("destination %s is up (%s): %s", dest.label, new_l, reason,
                        extra=logsafe.KEEP)
        else:
            log.info("destination %s %s -> %s: %s", dest.label, old_l, new_l, reason)
        if self.on_change is not None:
            self.on_change(dest, old_l, new_l, reason)

    def traffic_failure(self, dest: Destination, reason: str) -> None:
        """A call to this destination timed out or could not be sent."""
        old = dest.flags
        apply_traffic_failure(dest, dest.probe, self.settings)
        self._changed(dest, old, reason)
        if dest.probe is not None and is_up(old) and not is_up(dest.flags):
            self._retry_later(dest, dest.probe)

    # ----------------------------------------------------------------- pinging

    def start(self) -> None:
        if self.settings.interval > 0:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        self._stopped = True
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _run(self) -> None:
        interval = self.settings.interval
        mode = self.settings.mode
        while True:
            start = self.clock()
            due = [d for d in self.get_list().destinations() if should_ping(d, mode)] if self.active else []
            if due:
                step = interval / len(due)
                for i, d in enumerate(due):
                    wait = start + i * step - self.clock()
                    if wait > 0:
                        gevent.sleep(wait)
                    if not self.active:
                        break  # dispatcher.ping_active 0 meanwhile: the rest of the round too
                    if d.probe is not None and d.probe.retry_at is not None:
                        continue  # on its sooner retries meanwhile
                    try:
                        self.ping(d)
                    except Exception:
                        log.exception("cannot ping %s", d.uri)
            rest = start + interval - self.clock()
            gevent.sleep(rest if rest > 0 else 0)

    def _retry_later(self, dest: Destination, state: ProbeState) -> None:
        """Schedule the sooner retry of a destination that is down, if it has one."""
        at = next_retry(dest, state, self.settings, self.clock())
        if at is not None:
            self.proxy.scheduler.call_later(max(at - self.clock(), 0.0), self._retry, state, at)

    def _retry(self, state: ProbeState, at: float) -> None:
        """A sooner retry is due: ping the destination that has `state` now (a reload
        may have put a new object in its place), unless a later result rescheduled it."""
        if self._stopped or state.retry_at != at:
            return
        dest = next((d for d in self.get_list().destinations() if d.probe is state), None)
        if dest is None or not self.active or not should_ping(dest, self.settings.mode):
            state.retry_at = None  # gone, paused or no longer pinged: its turn decides
            return
        if state.pending:
            return  # the ping in flight reschedules it when its result comes
        try:
            self.ping(dest)
        except Exception:
            state.retry_at = None
            log.exception("cannot ping %s", dest.uri)

    def _target(self, dest: Destination, address: tuple[str, int]) -> tuple[str, tuple[str, int]]:
        """Where a ping goes: to the host of the destination's ``obproxy`` attr (its
        outbound proxy) when it has one, else to `address`."""
        obproxy = dest.attr_map.get("obproxy")
        if obproxy:
            try:
                u = parse_uri(obproxy if ":" in obproxy.split(";")[0] else "sip:" + obproxy)
                return u.transport, (u.host, u.port_or_default)
            except ParseError:
                log.warning("%s: bad obproxy attr %r; pinging %s directly", dest.where, obproxy, dest.label)
        return dest.transport, address

    def ping(self, dest: Destination) -> None:
        state = dest.probe
        address = dest.address
        if state is None or state.pending or address is None:
            return
        settings = self.settings
        transport, addr = self._target(dest, address)
        from_uri = dest.attr_map.get("ping_from") or settings.from_uri
        tag = f"{state.iuid}-{os.urandom(2).hex()}"
        call_id = f"gdp{self._salt}-{next(self._calls):x}@gdispatch"
        method = settings.method
        uri = dest.uri
        agent = f"User-Agent: {settings.user_agent}\r\n" if settings.user_agent else ""

        def build(via: bytes) -> bytes:
            return (f"{method} {uri} SIP/2.0\r\nVia: ".encode() + via + (
                f"\r\nMax-Forwards: 70\r\nFrom: <{from_uri}>;tag={tag}\r\nTo: <{uri}>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\n{agent}"
                f"Content-Length: 0\r\n\r\n").encode())

        sent_at = self.clock()
        state.pending = True
        done = [False]
        timer = None

        def finish(status: int, reason: str) -> None:
            if done[0]:
                return
            done[0] = True
            state.pending = False
            if timer is not None:
                timer.cancel()
            if ct is not None and status == PING_TIMEOUT_STATUS and ct.state != "terminated":
                ct.terminate()
            self._result(dest, state, status, reason, self.clock() - sent_at)

        def on_final(status: int, resp) -> None:
            if resp is None:
                finish(status, "transport error" if status != PING_TIMEOUT_STATUS else "ping timeout")
            else:
                finish(status, f"ping reply {status} {logsafe.text(resp.reason)}".rstrip())

        ct = None
        # Kamailio's order: ping_socket, sockname, socket (`dest.ping_socket` holds the
        # first given), then the default socket.
        peer = None
        if transport == "tls":  # the destination's own name and profile, or its outbound proxy's host
            peer = dest.tls_peer if transport == dest.transport and addr == address else TlsPeer(addr[0])
        ct = self.proxy.originate(transport, addr, method, build, on_final,
                                  socket=dest.ping_socket or self.proxy.default_socket, peer=peer)
        if not done[0]:
            timer = self.proxy.scheduler.call_later(settings.timeout, finish, PING_TIMEOUT_STATUS, "ping timeout")

    def _result(self, dest: Destination, state: ProbeState, status: int, reason: str, rtt: float) -> None:
        settings = self.settings
        ok = settings.accepts(status)
        state.last_status = status
        state.last_reason = reason
        if reason == "ping timeout":
            state.latency.timeouts += 1
        elif reason != "transport error":
            self.round_trips.observe(rtt)
            state.latency.add(rtt * 1000.0, settings.latency_alpha)
            dest.latency_est_ms = state.latency.estimate
        old = dest.flags
        apply_result(dest, state, ok, settings)
        self._changed(dest, old, reason)
        self._retry_later(dest, state)
