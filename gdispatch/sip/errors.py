"""The one exception the SIP message layer raises: `ParseError`.

It carries what the proxy needs to answer a broken request without knowing where it broke:
a short reason phrase and the status code to send (RFC 3261 §21.4 and RFC 4475 §3.1.2).
"""


class ParseError(ValueError):
    """A message, header or URI that cannot be accepted.

    `reason` is short text fit for a SIP reason phrase ("Bad Via"); `status` is the response
    code a server should answer with: 400 by default, 505 for an unsupported SIP version,
    413 for an oversize message, 416 for an unsupported Request-URI scheme.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    def __repr__(self) -> str:
        return f"ParseError({self.reason!r}, status={self.status})"
