"""The primary's hold on the other workers as processes (gdispatch.cluster.supervisor)."""

import gevent

from gdispatch.cluster.supervisor import Supervisor


def test_a_worker_that_exits_while_draining_is_not_started_again(monkeypatch):
    # SIGTERM: the primary tells the workers to drain, then drains itself; a worker done
    # first exits 0, which is no crash to recover from.
    class Proc:
        pid = 4242

        def wait(self, timeout=None):
            return 0

    later = []
    lost = []
    monkeypatch.setattr(gevent, "spawn_later", lambda *a: later.append(a))
    sup = Supervisor(2, hello=lambda i: None, on_message=lambda i, m: None, fds=[], on_lost=lost.append)
    sup._lost(1, Proc())
    assert len(later) == 1 and lost == [1]  # a crash before: covered, and started again
    sup.drain()
    sup._lost(1, Proc())
    assert len(later) == 1 and lost == [1]
