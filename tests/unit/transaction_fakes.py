"""The harness of the transaction tests (test_transaction_client.py, test_transaction_server.py):
a fake clock and its scheduler, and lists capturing what a transaction sends and reports."""

from gdispatch.transaction.client import ClientTransaction
from gdispatch.transaction.server import ServerTransaction
from gdispatch.transaction.timers import FakeClock, Scheduler, TimerConfig

# What a client transaction sends: opaque to it, so a start line is enough.
INVITE = b"INVITE sip:bob@example.com SIP/2.0\r\n\r\n"
OPTIONS = b"OPTIONS sip:bob@example.com SIP/2.0\r\n\r\n"


class Harness:
    """A fake clock, a scheduler, and lists capturing what a transaction does: `sent`
    [(time, bytes)]; for a client transaction `events` [("response", status, resp),
    ("timeout", state), ("transport_error", state), ("terminated",)] and `acks_built`; for
    a server transaction `terminated` and `transport_errors` (the transactions). With
    `fail_sends` set, every send raises OSError."""

    def __init__(self, timers=None):
        self.clock = FakeClock()
        self.scheduler = Scheduler(self.clock)
        self.timers = timers or TimerConfig()
        self.sent = []  # (time, bytes)
        self.events = []
        self.acks_built = []
        self.terminated = []
        self.transport_errors = []
        self.fail_sends = False

    def send(self, data):
        if self.fail_sends:
            raise OSError("send failed")
        self.sent.append((self.clock(), data))

    def make_ack(self, response):
        self.acks_built.append(response)
        return b"ACK for %d" % response.status

    def client(self, method="INVITE", *, reliable=False, report_errors=True, **kwargs):
        return ClientTransaction(
            ("z9hG4bKbranch", method),
            method,
            INVITE if method == "INVITE" else OPTIONS,
            reliable=reliable,
            send=self.send,
            scheduler=self.scheduler,
            timers=self.timers,
            on_response=lambda ct, status, resp: self.events.append(("response", status, resp)),
            on_timeout=lambda ct: self.events.append(("timeout", ct.state)),
            make_ack=self.make_ack if method == "INVITE" else None,
            on_terminated=lambda ct: self.events.append(("terminated",)),
            on_transport_error=(
                (lambda ct: self.events.append(("transport_error", ct.state)))
                if report_errors
                else None
            ),
            **kwargs,
        )

    def server(self, method="INVITE", *, reliable=False, report_errors=True):
        return ServerTransaction(
            ("z9hG4bK1", method),
            method,
            reliable=reliable,
            send=self.send,
            scheduler=self.scheduler,
            timers=self.timers,
            on_terminated=self.terminated.append,
            on_transport_error=self.transport_errors.append if report_errors else None,
        )

    def run(self, seconds):
        return self.clock.advance(seconds, self.scheduler)

    def times(self, data=None):
        return [t for t, d in self.sent if data is None or d == data]

    def statuses(self):
        return [e[1] for e in self.events if e[0] == "response"]
