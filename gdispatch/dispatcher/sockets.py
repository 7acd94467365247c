"""Which listen address a destination's requests and pings leave from: the `socket`,
`sockname` and `ping_socket` attrs of a list line, and `[dispatcher].default_socket`
and `default_sockname` (Kamailio's ds_default_socket and ds_default_sockname), read
against the proxy's listen addresses when the list loads.

Kamailio's rules (dispatcher's `add_dest2list`, the core's `grep_sock_info`):

- ``socket=[proto:]host[:port]`` names a listen address: without a proto any transport
  matches, without a port any port. A host that is not one of ours (a name, another IP)
  is no listen address, and the destination is refused.
- ``sockname=NAME`` names a listen address by the name it was given
  (``listen=udp:IP:PORT name "NAME"``); it wins over ``socket``. Both are checked.
- ``ping_socket`` is the socket of the pings only; it wins over both for them.
- Traffic: ``sockname`` > ``socket`` > ``default_sockname`` > ``default_socket`` > the
  first listen address of the transport and address family. Pings: ``ping_socket``
  first, then the same.

Where gdispatch is stricter, on purpose: a socket of another transport than the
destination's (``socket=udp:...`` for a ``;transport=tcp`` URI) is taken as the same
address in the destination's transport when the proxy listens there too, and refused
when it does not; so is a socket of the other address family for an IP destination.
Kamailio loads such a line and, at each request, sends it from whatever socket its
routing picks, with a warning: on a multi-homed box, from the wrong address. A default
socket of another transport is looked up the same way at send time, and falls back to
the first listen address of the right transport when there is none, as Kamailio does.

Pure: listen addresses (gdispatch.config.Listen) in, a listen address or a ValueError
saying why out. The transports find the socket bound to it (gdispatch.net).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gdispatch.config import Listen
    from gdispatch.dispatcher.destination import Destination

_PROTOS = ("udp", "tcp", "tls", "sctp", "ws", "wss")


def parse_socket(text: str) -> tuple[str, str, int]:
    """``[proto:]host[:port]`` as Kamailio reads it → (proto or "", host, port or 0). An
    IPv6 host is in brackets. Raises ValueError."""
    rest = text
    proto = ""
    head, sep, tail = text.partition(":")
    if sep and head.lower() in _PROTOS:
        proto, rest = head.lower(), tail
    port_s = ""
    if rest.startswith("["):
        host, close, after = rest[1:].partition("]")
        if not close or (after and not after.startswith(":")):
            raise ValueError("expected [proto:]host[:port]")
        port_s = after[1:]
    else:
        host, sep, port_s = rest.rpartition(":")
        if not sep:
            host, port_s = rest, ""
    if port_s and not (port_s.isdigit() and 0 < int(port_s) < 65536):
        raise ValueError(f"{port_s!r} is not a port number")
    if not host:
        raise ValueError("expected [proto:]host[:port]")
    return proto, host, int(port_s) if port_s else 0


def _ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class SocketTable:
    """The listen addresses of the proxy, looked up as a list line names them."""

    def __init__(self, listens: Sequence[Listen]) -> None:
        self.listens = tuple(listens)

    def _listed(self) -> str:
        return ", ".join(x.described() for x in self.listens)

    def by_address(self, text: str, transport: str = "") -> Listen:
        """The listen address ``[proto:]host[:port]`` names; one of `transport` first
        when no proto is given. Raises ValueError saying why (without `text`)."""
        proto, host, port = parse_socket(text)
        ip = _ip(host)
        found = [x for x in self.listens
                 if x.host == ip and (not port or x.port == port) and (not proto or x.transport == proto)]
        if not found:
            raise ValueError(f"not a listen address of this proxy (listening on: {self._listed()})")
        return next((x for x in found if x.transport == transport), found[0])

    def by_name(self, name: str) -> Listen:
        """The listen address named `name`. Raises ValueError saying why (without `name`)."""
        for listen in self.listens:
            if listen.name == name:
                return listen
        named = ", ".join(f'"{x.name}"' for x in self.listens if x.name)
        raise ValueError(f"no listen address has this name ({'the names: ' + named if named else 'none has a name'}; "
                         f'name one in [server] listen as \'udp:IP:PORT name "{name}"\')')

    def in_transport(self, listen: Listen, transport: str) -> Listen | None:
        """`listen`, or the listen address at the same IP and port in `transport` (how
        Kamailio's get_send_socket takes a forced socket of another proto); None when
        the proxy does not listen there."""
        if listen.transport == transport:
            return listen
        return next((x for x in self.listens
                     if (x.transport, x.host, x.port) == (transport, listen.host, listen.port)), None)

    def default(self, socket: str, sockname: str) -> Listen | None:
        """The default socket (`[dispatcher].default_sockname`, else `default_socket`), or
        None when neither is set. Raises ValueError saying why (without the value)."""
        if sockname:
            return self.by_name(sockname)
        if socket:
            return self.by_address(socket)
        return None

    def for_destination(self, dest: Destination) -> tuple[Listen | None, Listen | None]:
        """(the socket of `dest`'s requests, the socket of its pings), from its attrs;
        None where it names none (the default applies). Raises ValueError naming the attr."""
        m = dest.attr_map
        transport = dest.transport
        chosen: dict[str, Listen] = {}
        for attr in ("socket", "sockname", "ping_socket"):
            value = m.get(attr)
            if not value:
                continue
            try:
                listen = self.by_name(value) if attr == "sockname" else self.by_address(value, transport)
                chosen[attr] = self._fit(listen, dest)
            except ValueError as e:
                raise ValueError(f"bad attr {attr}={value}: {e}") from None
        send = chosen.get("sockname") or chosen.get("socket")
        return send, chosen.get("ping_socket") or send

    def _fit(self, listen: Listen, dest: Destination) -> Listen:
        """`listen` in the destination's transport, of its address family."""
        transport = dest.transport
        fit = self.in_transport(listen, transport)
        if fit is None:
            raise ValueError(f"{listen} is a {listen.transport} listen address, the destination is sent over "
                             f"{transport}, and the proxy does not listen on {transport}:{_hostport(listen)}")
        host = _ip(dest.sip_uri.host)
        if host is not None and (":" in host) != fit.family_v6:
            raise ValueError(f"an {'IPv6' if fit.family_v6 else 'IPv4'} address cannot send to the "
                             f"{'IPv6' if ':' in host else 'IPv4'} destination")
        return fit


def _hostport(listen: Listen) -> str:
    return f"[{listen.host}]:{listen.port}" if listen.family_v6 else f"{listen.host}:{listen.port}"
