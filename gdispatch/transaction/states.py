"""State names and response classes shared by client and server transactions.

What lives here: the names of the RFC 3261 §17 / RFC 6026 transaction states and the
classification of a status code into the three classes the state machines act on.
What does not: the transition tables themselves, which live beside the code that walks
them (`client.py`, `server.py`).

States are plain strings so that a caller can log or compare them (`tx.state ==
"completed"`); the modules here compare them by identity, which is safe because a
transaction only ever takes its state from these constants.
"""

from __future__ import annotations

__all__ = [
    "ACCEPTED",
    "CALLING",
    "COMPLETED",
    "CONFIRMED",
    "FAILURE",
    "PROCEEDING",
    "PROVISIONAL",
    "SUCCESS",
    "TERMINATED",
    "TRYING",
    "response_class",
]

CALLING = "calling"  # INVITE client, request sent, nothing heard (RFC 3261 §17.1.1.2)
TRYING = "trying"  # non-INVITE client and server before any response (§17.1.2.2, §17.2.2)
PROCEEDING = "proceeding"  # a provisional response has passed
COMPLETED = "completed"  # a final response has passed (any final for non-INVITE, 300-699 for INVITE)
CONFIRMED = "confirmed"  # INVITE server: the ACK for its 300-699 arrived (§17.2.1)
ACCEPTED = "accepted"  # INVITE, a 2xx has passed (RFC 6026 §7.1, §7.2)
TERMINATED = "terminated"

# Response classes: the only distinction the state machines make between status codes.
PROVISIONAL = 1  # 1xx
SUCCESS = 2  # 2xx
FAILURE = 3  # 3xx-6xx: "final, not 2xx" (RFC 3261 calls these 300-699)

# Indexed by status // 100; 0 marks a status outside 100-699.
_CLASS_BY_HUNDREDS = (0, PROVISIONAL, SUCCESS, FAILURE, FAILURE, FAILURE, FAILURE)


def response_class(status: int) -> int:
    """PROVISIONAL, SUCCESS or FAILURE for a status code; 0 for one outside 100-699."""
    if 100 <= status <= 699:
        return _CLASS_BY_HUNDREDS[status // 100]
    return 0
