"""gdispatch's own behaviour at the hook points, as a plugin like any other (registered
first under the name "builtin", its implementations marked `trylast` so users' plugins
come before it): the `[[route]]` tables choose the route, and a failed attempt fails over
when its status is in the route's `failover_codes`.
"""

from __future__ import annotations

from gdispatch.hookspecs import hookimpl
from gdispatch.message_api import FailureAction


class Builtin:
    def __init__(self, routes):
        self.routes = routes

    @hookimpl(trylast=True)
    def gdispatch_choose_route(self, request, source_sets):
        """The first `[[route]]` whose conditions hold (see config.Route)."""
        return self.route_for(request.method, request.ruri_user, request.ruri_host, source_sets)

    def route_for(self, method, user, host, source_sets):
        """The first `[[route]]` for a request of `method` to `user`@`host` from a source
        in the sets `source_sets`; None when none matches."""
        for r in self.routes:
            if r.matches(method, user, host, source_sets):
                return r
        return None

    @hookimpl(trylast=True)
    def gdispatch_after_failure(self, request, destination, status, attempt_number, route):
        codes = route.failover_codes if route is not None else None
        if status < 600 and codes is not None and status in codes:
            return FailureAction.next()
        return FailureAction.stop()
