"""The system's resolver configuration as text: resolv.conf(5), hosts(5), an
operator's nameserver override, and telling an IP literal from a host name. Pure
functions, no I/O; `gdispatch.dns.client` reads the files.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gdispatch.dns.answers import Address

MAX_NAMESERVERS = 3  # glibc's MAXNS: later `nameserver` lines are ignored


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ResolvConf:
    """The parts of resolv.conf we use; None: the file does not say."""

    nameservers: list[Address]
    timeout: float | None = None
    attempts: int | None = None


def parse_resolv_conf(text: str) -> ResolvConf:
    """The parts of resolv.conf(5) we use: up to three `nameserver` lines and `options
    timeout:N attempts:N` (clamped as glibc does: timeout ≤ 30, attempts ≤ 5). Malformed
    lines are ignored, as the C library ignores them."""
    servers: list[Address] = []
    timeout: float | None = None
    attempts: int | None = None
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            ip = words[1]
            if is_ip_literal(ip.split("%", 1)[0]) and len(servers) < MAX_NAMESERVERS:
                servers.append((ip, 53))
        elif words[0] == "options":
            for opt in words[1:]:
                name, _, value = opt.partition(":")
                if name in ("timeout", "attempts") and value.isdigit():
                    if name == "timeout":
                        timeout = float(min(max(int(value), 1), 30))
                    else:
                        attempts = min(max(int(value), 1), 5)
    return ResolvConf(servers, timeout, attempts)


def parse_nameserver(text: str) -> Address:
    """``1.2.3.4``, ``1.2.3.4:5353``, ``::1`` or ``[::1]:5353`` → (ip, port); ValueError
    otherwise. For an operator's nameserver override."""
    text = text.strip()
    port = 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad nameserver {text!r}")
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, text)
    else:
        host = text
    if not is_ip_literal(host):
        raise ValueError(f"bad nameserver {text!r}: not an IP address")
    return host, port


def _port(value: str, text: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"bad nameserver {text!r}: bad port")
    return int(value)


def parse_hosts(text: str) -> dict[str, list[str]]:
    """hosts(5): name (lowercase) → its addresses in file order."""
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2 or not is_ip_literal(words[0].split("%", 1)[0]):
            continue
        for name in words[1:]:
            addrs = table.setdefault(name.lower().rstrip("."), [])
            if words[0] not in addrs:
                addrs.append(words[0])
    return table
