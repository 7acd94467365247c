"""RFC 3261 §17 transactions as sans-IO state machines (with RFC 6026's Accepted state).

`ServerTransaction` (server.py) and `ClientTransaction` (client.py) are driven by calls
from the proxy and by timers from a `Scheduler` (timers.py); they send through a callable
and never touch a socket, a greenlet or a parser.
"""

from .client import ClientTransaction
from .server import ServerTransaction
from .timers import FakeClock, Scheduler, TimerConfig, TimerHandle

__all__ = [
    "ClientTransaction",
    "FakeClock",
    "Scheduler",
    "ServerTransaction",
    "TimerConfig",
    "TimerHandle",
]
