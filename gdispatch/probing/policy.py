"""The probing policy, as Kamailio's dispatcher decides it: which destinations to ping,
what a ping's result (or a failure seen in live traffic) does to a destination's state,
and latency statistics. Sans-IO: the greenlet that sends the pings is
`gdispatch.probing.pinger`.

State lives in the destination's flag bits, Kamailio's: 1 inactive, 2 trying, 4 disabled,
8 probing, 16 no DNS, 32 no ping; `Destination.state_letters()` prints them as
``dispatcher.list`` does (AP, TP, IP, AX, DX...). The transitions (reference: Kamailio's
``ds_update_state``):

- A ping succeeds when the reply is any 2xx or a code/class listed in `reply_codes`
  (Kamailio's ``ds_ping_reply_codes``). A failure is any other final reply, a timeout
  (counted as 408) or a transport error.
- Failure: a destination that is not inactive becomes *trying* (still selectable); after
  `probing_threshold` consecutive failures it becomes *inactive* (skipped by selection).
- Success: trying is cleared; an inactive destination becomes active again after
  `inactive_threshold` consecutive successes.
- The probing bit, by `mode` (``ds_probing_mode``): 0 pings only probing destinations and
  clears the bit after a reply (probe once); 1 pings every destination and sets it; 2
  pings only inactive+probing ones and clears it after a success; 3 pings probing
  destinations forever without clearing it.
- Disabled (4), no-ping (32) and not-yet-resolved (16) destinations are never pinged.
- Failures seen in live traffic (`traffic_failure`) count toward the threshold, or make
  the destination inactive at once (`mark = "inactive"`, like ``ds_mark_dst("i")``).
- Sooner retries (`next_retry`; Kamailio has none): an inactive destination that is
  pinged is pinged again `RETRY_FIRST` (1 s) after it went down, then after 2, 4, 8...
  s, until the delay reaches `interval` and it waits for its turn like the others. A
  gateway started a second after the proxy, or back from a restart, is used again
  within seconds instead of after a whole interval, and one that stays down costs a
  few pings more, not a ping a second.

Latency (Kamailio's ``ds_ping_latency_stats``): per destination the count, mean and
standard deviation (Welford), an EWMA estimate (`alpha`, equal to the mean over the first
10 samples), the maximum, and the number of timeouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gdispatch.dispatcher.destination import (
    FLAG_DISABLED,
    FLAG_INACTIVE,
    FLAG_NODNSARES,
    FLAG_NOPING,
    FLAG_PROBING,
    FLAG_TRYING,
    FLAGS_SKIP,
    Destination,
)

PING_TIMEOUT_STATUS = 408  # what a ping that got no answer counts as (a local 408)
RETRY_FIRST = 1.0  # seconds from a destination going down to its first sooner retry


def parse_reply_codes(values) -> frozenset[int]:
    """["405", "class=4", "code=501", 403] → accepted codes (a class expands to x00-x99)."""
    codes: set[int] = set()
    for v in values:
        s = str(v).strip().lower()
        if s.startswith("class="):
            c = s[6:]
            if not (c.isdigit() and 1 <= int(c) <= 6):
                raise ValueError(f"{v!r}: a class is 1-6")
            codes.update(range(int(c) * 100, int(c) * 100 + 100))
            continue
        if s.startswith("code="):
            s = s[5:]
        if not (s.isdigit() and 100 <= int(s) <= 699):
            raise ValueError(f"{v!r}: expected a code 100-699, code=NNN or class=N")
        codes.add(int(s))
    return frozenset(codes)


@dataclass(frozen=True)
class ProbeSettings:
    interval: float = 10.0  # seconds between two pings of a destination; 0 = no probing
    timeout: float = 2.0  # a ping unanswered this long has failed (not the 30 s of Kamailio's TM)
    method: str = "OPTIONS"
    from_uri: str = "sip:dispatcher@localhost"
    probing_threshold: int = 1  # consecutive failures before inactive
    inactive_threshold: int = 1  # consecutive successes before an inactive one is active
    mode: int = 1  # Kamailio's ds_probing_mode, 0-3
    reply_codes: frozenset[int] = field(default_factory=frozenset)  # accepted besides 2xx
    latency_alpha: float = 0.1  # EWMA weight of a new sample (Kamailio: alpha/1000)
    mark: str = "threshold"  # traffic failures: "threshold", "inactive" or "off"
    user_agent: str = "gdispatch"  # the pings' User-Agent ("" = none)
    retry_down: bool = True  # sooner retries of a destination that went down (`next_retry`)

    def accepts(self, status: int) -> bool:
        return 200 <= status < 300 or status in self.reply_codes


class LatencyStats:
    """Ping round-trip statistics in milliseconds."""

    __slots__ = ("count", "mean", "_m2", "estimate", "maximum", "timeouts")

    def __init__(self, seed_ms: float | None = None):
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0
        self.estimate = 0.0
        self.maximum = 0.0
        self.timeouts = 0
        if seed_ms is not None:
            # The `latency` attr: an initial estimate worth many samples (Kamailio: 10000).
            self.count = 10000
            self.mean = self.estimate = self.maximum = float(seed_ms)

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / (self.count - 1)) if self.count > 1 else 0.0

    def add(self, rtt_ms: float, alpha: float) -> None:
        self.count += 1
        delta = rtt_ms - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (rtt_ms - self.mean)
        if self.count <= 10:
            self.estimate = self.mean
        else:
            self.estimate = alpha * rtt_ms + (1 - alpha) * self.estimate
        if rtt_ms > self.maximum:
            self.maximum = rtt_ms

    def as_dict(self) -> dict[str, float | int]:
        """The LATENCY of Kamailio's ``dispatcher.list``, in its types: AVG, STD and EST
        doubles (milliseconds, three decimals as its binrpc carries them), MAX whole
        milliseconds, TIMEOUT a count."""
        return {"AVG": round(self.mean, 3), "STD": round(self.std, 3), "EST": round(self.estimate, 3),
                "MAX": int(self.maximum), "TIMEOUT": self.timeouts}


class ProbeState:
    """What the prober keeps per destination."""

    __slots__ = ("iuid", "failures", "successes", "latency", "last_status", "last_reason", "pending", "retries",
                 "retry_at")

    def __init__(self, iuid: str, seed_latency_ms: float | None = None):
        self.iuid = iuid  # identifies the destination record in its pings' From tag
        self.failures = 0  # consecutive
        self.successes = 0  # consecutive, while inactive
        self.latency = LatencyStats(seed_latency_ms)
        self.last_status = 0
        self.last_reason = ""
        self.pending = False  # a ping is in flight
        self.retries = 0  # sooner retries scheduled since it went inactive (`next_retry`)
        self.retry_at: float | None = None  # when the next sooner retry is due; None: at its turn


def should_ping(dest: Destination, mode: int) -> bool:
    f = dest.flags
    if f & (FLAG_DISABLED | FLAG_NOPING) or (f & FLAG_NODNSARES and dest.address is None):
        return False
    if dest.address is None:
        return False
    if mode == 1:
        return True
    if mode == 2:
        return bool(f & FLAG_INACTIVE) and bool(f & FLAG_PROBING)
    return bool(f & FLAG_PROBING)  # modes 0 and 3


def apply_result(dest: Destination, state: ProbeState, ok: bool, settings: ProbeSettings) -> int:
    """Update the destination's flags after one ping; returns the new flags."""
    f = dest.flags
    if f & FLAG_DISABLED:
        return f  # disabled meanwhile by the operator: left alone
    mode = settings.mode
    if ok:
        state.failures = 0
        f &= ~FLAG_TRYING
        if f & FLAG_INACTIVE:
            state.successes += 1
            if state.successes >= settings.inactive_threshold:
                f &= ~FLAG_INACTIVE
                state.successes = 0
        if mode == 1:
            f |= FLAG_PROBING
        elif mode in (0, 2):
            if not f & FLAG_INACTIVE:
                f &= ~FLAG_PROBING
    else:
        state.successes = 0
        state.failures += 1
        if not f & FLAG_INACTIVE:
            f |= FLAG_TRYING
        if state.failures >= settings.probing_threshold:
            if not f & FLAG_INACTIVE:
                state.retries = 0  # it goes down now: the back-off starts again
            f = (f | FLAG_INACTIVE) & ~FLAG_TRYING
        if mode == 0:
            f &= ~FLAG_PROBING
        else:
            f |= FLAG_PROBING
    dest.flags = f
    return f


def apply_traffic_failure(dest: Destination, state: ProbeState | None, settings: ProbeSettings) -> int:
    """A request sent to the destination timed out or failed at the transport level."""
    f = dest.flags
    if settings.mark == "off" or f & FLAG_DISABLED:
        return f
    if settings.mark == "inactive" or state is None:
        # Straight to inactive, like ds_mark_dst("i"); probing brings it back.
        if state is not None:
            state.successes = 0
            if not f & FLAG_INACTIVE:
                state.retries = 0
        f = (f | FLAG_INACTIVE) & ~FLAG_TRYING
        if settings.interval > 0 and settings.mode != 0:
            f |= FLAG_PROBING
        dest.flags = f
        return f
    # Counts like a failed ping toward probing_threshold; probing continues (mode != 0).
    return apply_result(dest, state, False, settings)


def next_retry(dest: Destination, state: ProbeState, settings: ProbeSettings, now: float) -> float | None:
    """When to ping `dest` again sooner than its turn, after a ping's result or a traffic
    failure: an inactive destination that is pinged (`should_ping`) is retried
    `RETRY_FIRST` after it went down, then after twice the previous delay, as long as the
    delay is shorter than `interval`. Returns that time (also kept in `state.retry_at`),
    or None when its turn comes first: it is up, not pinged, or the back-off reached the
    interval (it stays there until the destination comes up again), or sooner retries
    are off (`retry_down` false: Kamailio's behaviour)."""
    if (not settings.retry_down or settings.interval <= 0 or not dest.flags & FLAG_INACTIVE
            or not should_ping(dest, settings.mode)):
        state.retry_at = None
        return None
    delay = RETRY_FIRST * 2 ** state.retries
    if delay >= settings.interval:
        state.retry_at = None
        return None
    state.retries += 1
    state.retry_at = now + delay
    return state.retry_at


def is_up(flags: int) -> bool:
    """Selectable as far as the state goes (neither inactive nor disabled)."""
    return not flags & FLAGS_SKIP
