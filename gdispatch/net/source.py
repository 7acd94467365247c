"""What every transport of gdispatch.net shares, at the bottom of the package: `Source`,
where a received message came from and how to answer it (RFC 3261 §18.2.1: the
transport, the address and the socket of the receiving transport, kept for the response,
§18.2.2), `Relayed` for a datagram another worker received, `TransportError` for a
message the transport layer could not send (RFC 3261 §18.4: reported to the transaction
at once), and the address family of a host.

The listener and connection classes are named here only in annotations: this module
imports nothing of the package at run time, so udp and tcp can build `Source` objects.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gdispatch.net.tcp import TcpConnection, TcpListener
    from gdispatch.net.udp import UdpListener


class TransportError(OSError):
    """A message could not be sent (no listener for it, connection refused...)."""


class Source:
    """Where a message came from: its transport, address and the socket to answer on."""

    __slots__ = ("addr", "conn", "listener", "transport")

    def __init__(self, transport: str, addr: tuple[str, int], listener: UdpListener | TcpListener,
                 conn: TcpConnection | None = None):
        self.transport = transport
        self.addr = addr
        self.listener = listener
        self.conn = conn

    def __repr__(self) -> str:
        return f"{self.transport}:{self.addr[0]}:{self.addr[1]}"


def address_family(host: str) -> int:
    """The socket family of an IP address literal."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET
