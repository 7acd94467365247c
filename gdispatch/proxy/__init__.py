"""The stateful proxy (RFC 3261 §16), split by what each part decides.

- core.py      `Proxy`: the entry for every message, the transaction tables, what each
               kind of request becomes (dispatched, inside a dialog, ACK, CANCEL)
- branches.py  how a branch leaves: the forwarded copy (Via, Record-Route, Route popped,
               plugins' edits) in a client transaction; CANCEL; our own requests (pings)
- routing.py   where a new request goes: §16.3 checks, the Route set (§16.4), the route
               tables and plugins' choice; decision objects, no I/O
- identity.py  who we are on the wire: our addresses, Via and branch (loop detection),
               our signed Record-Route entry and how it is recognised, tags, received/rport
- forking.py   the attempts of a forwarded request (serial and parallel forking as a
               state machine), the response that goes upstream (§16.7), CANCEL, timers C
- stateless.py what leaves without a transaction: refusals, the ACK of a 2xx, stray 2xx

What lives elsewhere: messages (`gdispatch.sip`), transaction state machines
(`gdispatch.transaction`), the list and the algorithms (`gdispatch.dispatcher`),
sockets (`gdispatch.net`), the dialogs' signatures (`gdispatch.recordroute`).
"""

from .branches import replace_hostport
from .core import DIALOG_CREATING, Proxy
from .identity import STATELESS_TAG

__all__ = ["DIALOG_CREATING", "STATELESS_TAG", "Proxy", "replace_hostport"]
