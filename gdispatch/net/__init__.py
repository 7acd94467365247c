"""The transport layer of gdispatch (RFC 3261 §18): UDP, TCP and TLS sockets on gevent.

The modules, from the bottom up (each imports only those above it at run time):

- `source`: what every transport shares: `Source` (where a received message came from
  and how to answer it, §18.2.1), `TransportError` (a message that could not be sent, §18.4).
- `udp`: `UdpListener`, a UDP socket and its receiver greenlet (`run_receiver`, with
  the sampling of how long datagrams waited in the kernel), ICMP errors read from the
  socket's error queue (§18.4), the private twin socket a worker's requests leave from,
  and `udp_socket` (which gdispatch.cluster binds its SO_REUSEPORT groups with).
- `tls`: `TlsContexts`, the SSL contexts made from `[tls]` (and made again on reload),
  `TlsSession`, one connection's TLS on memory buffers (RFC 3261 §26.2), `TlsPeer`,
  who a connection we open must reach.
- `tcp`: `TcpConnection`, a connection framed by Content-Length (§18.3) under the
  [tcp] limits (gdispatch.tcplimits), and `TcpListener`, which accepts through gevent's
  StreamServer and refuses what is over a cap or banned.
- `tlsconn`: `TlsConnection`, a TcpConnection whose bytes go through a TlsSession
  after its handshake, and `TlsListener`, a `tls:` listen address.
- `transports`: `Transports`, the facade the proxy uses (listeners, the connection
  table, `send` §18.1 and `reply` §18.2.2), `Handoff` (what it hands other workers'
  datagrams to), `ensure_free`, and `reach_problem` (why no listen address can send to
  a destination).

What other modules use is imported from here. Nothing here imports gdispatch.cluster:
the transports know of other workers only through `Handoff` and the sockets given.
"""

from gdispatch.net.source import Source, TransportError
from gdispatch.net.tcp import TcpConnection, TcpListener
from gdispatch.net.tls import TlsContexts, TlsPeer, TlsSetupError
from gdispatch.net.tlsconn import TlsConnection, TlsListener
from gdispatch.net.transports import Handoff, Transports, ensure_free, reach_problem
from gdispatch.net.udp import UdpListener, enable_timestamps, run_receiver, udp_socket

__all__ = [
    "Handoff",
    "Source",
    "TcpConnection",
    "TcpListener",
    "TlsConnection",
    "TlsContexts",
    "TlsListener",
    "TlsPeer",
    "TlsSetupError",
    "TransportError",
    "Transports",
    "UdpListener",
    "enable_timestamps",
    "ensure_free",
    "reach_problem",
    "run_receiver",
    "udp_socket",
]
