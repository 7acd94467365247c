"""What ``gdispatch.toml`` holds, table by table: the frozen dataclasses the rest of the
program reads (`Config` and its parts), with every default written here, and the one
error type a configuration problem raises (`ConfigError`). Reading and checking the file
into them is gdispatch.config's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

TRANSPORTS = ("udp", "tcp", "tls")
# A failed attempt goes on to the next destination (Kamailio's failure_route with
# ds_next_dst) for a gateway's refusal or failure, 4xx and 5xx, but not for what only the
# caller can act on (a challenge, 401 and 407; 421, 422, 423 and 494 ask the caller for an
# extension, a longer session timer or a security agreement), what the callee decided
# (484 address incomplete, 485 ambiguous, 486 busy), the caller's own CANCEL (487), nor
# what every gateway would answer alike to that request (400 malformed, 413-416 and 420
# what it carries, 482 loop, 483 too many hops): retrying those would only send one bad
# request to every gateway. 3xx (a redirect for the caller to follow) and 6xx (RFC 3261
# §16.7 step 5: a global failure ends the search) are relayed.
DEFAULT_FAILOVER_CODES = ("4xx", "5xx", "!400", "!401", "!407", "!413", "!414", "!415", "!416", "!420", "!421",
                          "!422", "!423", "!482", "!483", "!484", "!485", "!486", "!487", "!494")


class ConfigError(ValueError):
    """A configuration problem, worded for the operator."""


def parse_codes(values: Any, key: str) -> frozenset[int]:
    """["4xx", "5xx", 603, "!486"] → the set of codes. "5xx" means 500-599; "!486" takes
    486 out again, whatever its place in the list ("!4xx" a whole class)."""
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{key}: expected a list such as [\"408\", \"5xx\"]")
    codes: set[int] = set()
    removed: set[int] = set()
    for v in values:
        s = str(v).strip().lower()
        into = codes
        if s.startswith("!"):
            s, into = s[1:], removed
        if len(s) == 3 and s[0] in "3456" and s[1:] == "xx":
            base = int(s[0]) * 100
            into.update(range(base, base + 100))
        elif s.isdigit() and 300 <= int(s) <= 699:
            into.add(int(s))
        else:
            raise ConfigError(f"{key}: {v!r}: expected a final code 300-699, a class like \"5xx\", "
                              f"or one of them after \"!\" to leave it out")
    return frozenset(codes - removed)


@dataclass(frozen=True)
class Listen:
    transport: str  # "udp" | "tcp" | "tls"
    host: str  # IP address, no brackets
    port: int
    # The name a destination's `sockname` attr and `[dispatcher].default_sockname` give
    # it (Kamailio's `listen=... name "NAME"`); "" when it has none.
    name: str = ""

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        h = f"[{self.host}]" if self.family_v6 else self.host
        return f"{self.transport}:{h}:{self.port}"

    def described(self) -> str:
        """As the configuration writes it: with its name, if it has one."""
        return f'{self} name "{self.name}"' if self.name else str(self)


@dataclass(frozen=True)
class Timers:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    fr_timer: float = 2.0
    fr_inv_timer: float = 120.0
    # How long a transaction with its final response stays to absorb retransmissions
    # (caps Timers D, J, L, M; Kamailio's wt_timer). 0: RFC 3261's 64*T1 (32 s).
    wt_timer: float = 5.0


@dataclass(frozen=True)
class Route:
    """One `[[route]]` table: what it matches, and where matching requests go.

    Matching (all given conditions must hold): `methods` (empty: any), the Request-URI
    user by `user_prefix` (any of them) or `user_regex`, the Request-URI host by `domains`,
    and the source by `from_set` (the request came from a destination of that set, like
    Kamailio's `ds_is_from_list`). Action: dispatch to `set` with `algorithm`, or answer
    `reply` locally.
    """

    methods: frozenset[str] = frozenset({"INVITE"})
    user_prefix: tuple[str, ...] = ()
    user_regex: re.Pattern | None = None
    domains: frozenset[str] = frozenset()
    from_set: int | None = None
    set: int = 1
    algorithm: int = 4
    failover_codes: frozenset[int] = field(
        default_factory=lambda: parse_codes(DEFAULT_FAILOVER_CODES, "route.failover_codes"))
    limit: int = 0  # 0: try every destination of the set
    mode: str = "dst"  # "dst": next hop only (ds_select_dst); "domain": also the R-URI host (ds_select_domain)
    hash_template: str = ""  # algorithm 7's key, e.g. "$fU@$ci"
    no_destination_reply: int = 503
    reply: int = 0  # non-zero: answer locally with this code instead of dispatching
    reply_reason: str = ""
    name: str = ""
    relay: bool = False  # may send requests for domains that are not ours (plugin routes)

    def matches(self, method: str, user: str | None, host: str, source_sets: frozenset[int]) -> bool:
        if self.methods and method not in self.methods:
            return False
        if self.domains and host not in self.domains:
            return False
        if self.user_prefix and not (user is not None and user.startswith(self.user_prefix)):
            return False
        if self.user_regex is not None and (user is None or not self.user_regex.search(user)):
            return False
        return self.from_set is None or self.from_set in source_sets


@dataclass(frozen=True)
class Probing:
    """Keepalive settings; see gdispatch.probing.policy.ProbeSettings for their meaning."""

    interval: float = 10.0
    timeout: float = 2.0
    method: str = "OPTIONS"
    from_uri: str = "sip:dispatcher@localhost"
    probing_threshold: int = 1
    inactive_threshold: int = 1
    mode: int = 1
    reply_codes: frozenset[int] = frozenset()
    latency_alpha: float = 0.1
    mark: str = "threshold"
    mark_codes: frozenset[int] = frozenset()
    retry_down: bool = True  # ping a destination that went down after 1, 2, 4... s


@dataclass(frozen=True)
class Overload:
    """When new calls get 503 with Retry-After; see gdispatch.overload."""

    max_backlog: float = 0.25  # seconds requests wait unread; 0: no bound
    max_calls_in_setup: int = 0  # dispatched requests waiting for a final; 0: no bound
    hold: float = 0.0  # once past max_backlog, refuse for at least this long
    retry_after: int = 2  # the Retry-After of those 503s, seconds


@dataclass(frozen=True)
class Flood:
    """What one source may cost the proxy; see gdispatch.flood and gdispatch.sockfilter."""

    kernel_filter: bool = True  # the kernel drops UDP datagrams that cannot be SIP
    source_rate: int = 2000  # datagrams a second one source may send; past it, banned (0: no limit)
    ban_time: float = 60.0  # how long a banned source is ignored, seconds
    trusted: tuple[str, ...] = ()  # networks never banned ("10.0.0.0/8"); the list's destinations never are


@dataclass(frozen=True)
class Security:
    """What may cross the proxy; see gdispatch.recordroute."""

    # The keys that sign our Record-Route ("" = the default place, recordroute.default_key_path).
    key_file: str = ""
    # Where a request inside a dialog may go: "destination" (from the caller only to the
    # dialog's destination, from the callee only if it comes from there) or "any".
    dialog_next_hop: str = "destination"


@dataclass(frozen=True)
class Tcp:
    """How many TCP connections the proxy keeps, from whom, and for how long (Kamailio's
    tcp_max_connections and tcp_connection_lifetime); see gdispatch.tcplimits."""

    max_connections: int = 2048  # accepted and opened together (Kamailio's default)
    # Accepted from one address (an IPv6 /64). A trunk, an SBC or a PBX opens one
    # connection, or one per worker or per registration line: 64 covers that many times
    # over, and a single address can hold no more than 1/32 of max_connections.
    max_connections_per_source: int = 64
    idle_timeout: float = 120.0  # seconds after the last complete message (tcp_connection_lifetime)
    message_timeout: float = 10.0  # seconds from the first byte of a message to its last


# The TLS versions `method` may name, Kamailio's tls.cfg words: "TLSv1.2+" is 1.2 or
# later, "TLSv1.2" that one only. Older versions are refused (RFC 8996).
TLS_METHODS = ("TLSv1.2+", "TLSv1.3+", "TLSv1.2", "TLSv1.3")


@dataclass(frozen=True)
class TlsProfile:
    """The certificates and checks of one side of TLS, with the key names of Kamailio's
    tls.cfg profiles (`[server:default]`, `[client:default]`); see gdispatch.net.tls.

    The server side verifies a client's certificate when it sends one
    (`verify_certificate`) and refuses a client without one (`require_certificate`);
    the client side checks the server's certificate and its name (`verify_certificate`,
    on by default there). Paths are absolute once read (relative to the configuration
    file)."""

    certificate: str = ""  # our certificate, PEM (a chain: ours first)
    private_key: str = ""  # its key, PEM ("" = in `certificate`)
    ca_list: str = ""  # the CAs we trust, PEM ("" on the client side: the system's store)
    verify_certificate: bool = False
    require_certificate: bool = False
    method: str = "TLSv1.2+"
    cipher_list: str = ""  # OpenSSL's cipher string for TLS 1.2 ("" = Python's defaults)
    # A client profile: the name sent in SNI and checked in the certificate ("" = the
    # destination URI's host), and the destination sets it serves.
    server_name: str = ""
    sets: tuple[int, ...] = ()
    name: str = ""


@dataclass(frozen=True)
class Tls:
    """`[tls]`: the server side at the top, `[tls.client]` the client side's default
    and `[tls.client.NAME]` the named client profiles (chosen by a destination's
    `tls_profile` attr, or by its set)."""

    server: TlsProfile = TlsProfile()
    client: TlsProfile = TlsProfile(verify_certificate=True)
    profiles: tuple[TlsProfile, ...] = ()
    handshake_timeout: float = 5.0  # seconds from a TCP connection to the end of its TLS handshake


@dataclass(frozen=True)
class Http:
    """`[http]`: the listener of the metrics and the status page (gdispatch.web)."""

    listen: str = ""  # "127.0.0.1:9090"; "" = none
    token: str = ""  # "": the status page is read-only; else its bearer may set states


@dataclass(frozen=True)
class Capture:
    """`[capture]`: a copy of every SIP message to a Homer collector (gdispatch.hep)."""

    hep: str = ""  # "udp:IP:PORT"; "" = none
    capture_id: int = 2001  # the HEP capture agent id (Kamailio's hep_capture_id)


@dataclass(frozen=True)
class Ha:
    """`[cluster]`: the nodes of a pair (or more) sharing their state through Redis
    (gdispatch.ha). Not the workers of one box (`[server] workers`)."""

    redis: str = ""  # "redis://[:password@]host:6379/0" or "rediss://..." (TLS); "" = a single node
    node: str = ""  # this node's name among them ("" = the host name)


@dataclass(frozen=True)
class Config:
    listen: tuple[Listen, ...] = (Listen("udp", "127.0.0.1", 5060), Listen("tcp", "127.0.0.1", 5060))
    domains: tuple[str, ...] = ()
    log_level: str = "info"
    log_format: str = "text"  # "json": one JSON object per line (gdispatch.logsafe.JsonFormatter)
    workers: int = 1
    list_file: str = "dispatcher.list"
    # The socket requests and pings to a destination without a `socket` or `sockname`
    # attr leave from (Kamailio's ds_default_socket and ds_default_sockname, the name
    # first); "" = the first listen address of the transport and address family.
    default_socket: str = ""
    default_sockname: str = ""
    load_mode: str = "strict"  # "strict": a bad line refuses the file; "skip": load the good lines
    kamailio_order: bool = True  # equal priorities in reverse file order, as Kamailio does; false: file order
    kamailio_compat: bool = False  # hash, weight and parallel selection exactly as Kamailio
    hash_user_only: bool = False  # algorithms 1-3 hash the URI user only (Kamailio flags=1)
    call_expire: float = 7200.0  # an answered call with no BYE stops counting (ds_hash_expire)
    call_init_expire: float = 7200.0  # an unanswered call stops counting (ds_hash_initexpire)
    reload_keeps_state: bool = True  # false: a reload resets every destination to its file flags (Kamailio)
    # The operator's set_state survives a restart (OpenSIPS's persistent_state; Kamailio
    # forgets it), kept in `state_file` ("" = gdispatch.dispatcher.statefile.default_path).
    persistent_state: bool = True
    state_file: str = ""
    watch: bool = True  # reload when the list file changes on disk
    drain_time: float = 5.0  # on SIGTERM, how long transactions in progress may take to finish
    control_socket: str = ""  # the control socket's path ("" = the default runtime directory)
    control_tcp: str = ""  # "127.0.0.1:PORT": also listen on TCP (needs control_token)
    control_token: str = ""
    dns_nameservers: tuple[tuple[str, int], ...] = ()  # empty: those of /etc/resolv.conf
    dns_refresh: float = 600.0  # seconds between re-resolutions of destination host names
    dns_retry: float = 30.0  # seconds between retries of a name that does not resolve
    timers: Timers = Timers()
    probing: Probing = Probing()
    overload: Overload = Overload()
    security: Security = Security()
    flood: Flood = Flood()
    # The Server header of our own answers and the User-Agent of our pings ("" = none):
    # a product name that does not tell a scanner the version.
    server_header: str = "gdispatch"
    user_agent_header: str = "gdispatch"
    tcp: Tcp = Tcp()
    tls: Tls = Tls()
    http: Http = Http()
    capture: Capture = Capture()
    ha: Ha = Ha()
    # The address our Via and Record-Route name instead of the listen address's (a
    # shared address a pair of nodes moves between them, `[server] advertise`): "" = none.
    advertise: str = ""
    plugins: tuple[str, ...] = ()
    # Where plugin files are looked for first; a name not there is one shipped with
    # gdispatch (gdispatch.plugins.plugin_path).
    hooks_dir: str = "hooks"
    # Each plugin's own table, ``[plugins.<name>]`` → {name: {key: value}}, kept as TOML
    # gave it: gdispatch does not know the keys, the plugin reads and checks them (in
    # `gdispatch_startup(config)`). Not hashed: it is a dict.
    plugin_settings: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False)
    routes: tuple[Route, ...] = (Route(),)
    # Requests no route matches get this answer (404 "No Route").
    no_route_reply: int = 404
    source: str = ""


# Kamailio's listen syntax names a socket after its address: `udp:IP:PORT name "s1"`.
