"""Active calls per destination: the call-load accounting behind algorithm 10.

Kamailio leaves this to the routing script (`ds_load_update`, `ds_load_unset`) and users
get it wrong (stuck counters, kamailio#2322, #4046). Here the proxy reports what happens to
each dispatched INVITE and this table keeps the counts itself:

- `attempt(call_id, dest)` when an INVITE goes to a destination: the call counts on it
  (and no longer on the previous destination of that call, which is how failover moves
  the load);
- `answered(call_id)` on the 2xx: the call is confirmed and now lives until its BYE;
- `ended(call_id)` on the BYE, on a CANCEL, or when the INVITE failed.

Expiry catches calls whose end never passes through the proxy: `init_expire` for a call
never answered, `expire` for an answered call that never sees its BYE (Kamailio's
`ds_hash_initexpire` / `ds_hash_expire`, 7200 s each by default). Each call holds its
deadline and one sweep, every 1/64 of the shorter expiry, ends the calls past theirs: a
timer per call cost two timer operations and two cancellations on every call, for an
expiry that almost never happens.

Sans-IO: it needs only a scheduler with `now()` and `call_later(delay, fn, *args) ->
handle` whose handles have `cancel()`.
"""

from __future__ import annotations

from typing import Any


class _Call:
    __slots__ = ("dest", "confirmed", "expires")

    def __init__(self, dest: Any, expires: float):
        self.dest = dest
        self.confirmed = False
        self.expires = expires


class CallLoad:
    """Call-ID → destination, and each destination's `load` counter kept in step."""

    def __init__(self, scheduler, *, expire: float = 7200.0, init_expire: float = 7200.0):
        self.scheduler = scheduler
        self.expire = expire
        self.init_expire = init_expire
        self.calls: dict[bytes, _Call] = {}
        # How late an expiry may be noticed; a sweep runs that often while calls exist.
        self.sweep_interval = max(min(expire, init_expire) / 64, 0.01)
        self._sweep = None

    def __len__(self) -> int:
        return len(self.calls)

    def attempt(self, call_id: bytes, dest: Any) -> None:
        call = self.calls.get(call_id)
        if call is None:
            call = self.calls[call_id] = _Call(dest, self.scheduler.now() + self.init_expire)
            if self._sweep is None:
                self._sweep = self.scheduler.call_later(self.sweep_interval, self._sweep_expired)
        elif call.dest is not dest:
            call.dest.load -= 1
            call.dest = dest
        else:
            return
        dest.load += 1

    def answered(self, call_id: bytes) -> None:
        call = self.calls.get(call_id)
        if call is None or call.confirmed:
            return
        call.confirmed = True
        call.expires = self.scheduler.now() + self.expire

    def ended(self, call_id: bytes) -> None:
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        call.dest.load -= 1
        if not self.calls and self._sweep is not None:
            self._sweep.cancel()  # nothing left to expire: no timer while idle
            self._sweep = None

    def rebind(self, replaced: dict[int, Any]) -> None:
        """After a reload that kept state: calls counted on an old destination object
        now count on the new object that replaced it (by `id()` of the old one)."""
        for call in self.calls.values():
            new = replaced.get(id(call.dest))
            if new is not None:
                call.dest = new

    def _sweep_expired(self) -> None:
        self._sweep = None
        now = self.scheduler.now()
        for call_id in [cid for cid, call in self.calls.items() if call.expires <= now]:
            self.ended(call_id)
        if self.calls and self._sweep is None:
            self._sweep = self.scheduler.call_later(self.sweep_interval, self._sweep_expired)
