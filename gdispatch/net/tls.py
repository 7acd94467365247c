"""SIP over TLS (RFC 3261 §26.2, RFC 5630): the contexts made from `[tls]`, and a TLS
session as bytes in and bytes out.

`TlsContexts` holds this process's `ssl.SSLContext`s: the server side's (the `tls:`
listen addresses), the client side's default and one per named client profile (Kamailio's
tls.cfg `[server:default]`, `[client:default]` and named client domains). `reload` makes
them all again from the files; a file that cannot be read or a key that does not match
its certificate keeps the contexts in use and says why. A connection keeps the context
it started with, so a reload drops no established connection.

`TlsSession` is the TLS state machine of one connection on memory buffers
(`SSLContext.wrap_bio`): the connection (gdispatch.net.tcp) reads the socket and feeds
what arrives in, writes out what the session has to send, and deals with plaintext
only. It does no I/O, so the handshake, its deadline and the connection limits stay the
TCP connection's (gdispatch.tcplimits).

Verification, the client side: the server's certificate must chain to the profile's
`ca_list` (else the system's store) and carry the name the destination URI has (or the
profile's `server_name`), which is also sent in SNI (RFC 6066 §3; an IP address is
checked against the certificate's IP addresses and not sent). `describe` words an
OpenSSL failure for the log: which check failed (expired, wrong name, unknown CA).
In TLS 1.3 the server judges our certificate (or its absence) after our side of the
handshake is over: until its first record after it (`TlsSession.verdict_pending`), a
connection that ends is a handshake failure, and what waited for it fails over at once.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass

from gdispatch import logsafe
from gdispatch.settings import Tls, TlsProfile

log = logging.getLogger("gdispatch.transport")

# The counters of the TLS side, in `stats` from the start.
TLS_COUNTERS = ("tls_handshakes", "tls_handshake_failures", "tls_handshake_timeouts", "tls_reloads",
                "tls_reload_failures")

_VERSIONS = {
    "TLSv1.2+": (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED),
    "TLSv1.3+": (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.MAXIMUM_SUPPORTED),
    "TLSv1.2": (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2),
    "TLSv1.3": (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3),
}


class TlsSetupError(ValueError):
    """A `[tls]` profile whose files cannot make a context, worded for the operator."""


@dataclass(frozen=True)
class TlsPeer:
    """Who a TLS connection we open must reach: `server_name`, the host of the URI it was
    chosen by (SNI, and the name its certificate must carry), the destination's set and
    its `tls_profile` attr ("" = none), which choose the client profile."""

    server_name: str
    setid: int | None = None
    profile: str = ""


def profile_problem(settings: Tls, transport: str, profile: str) -> str:
    """Why a destination over `transport` whose `tls_profile` attr is `profile` cannot
    be sent to: '' when it can (no attr, another transport, or a profile `[tls.client.NAME]`
    defines)."""
    if not profile or transport != "tls" or any(p.name == profile for p in settings.profiles):
        return ""
    return f"tls_profile={profile}: no [tls.client.{profile}] profile"


def _context(profile: TlsProfile, *, server: bool, where: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version, ctx.maximum_version = _VERSIONS[profile.method]
    try:
        if profile.cipher_list:
            ctx.set_ciphers(profile.cipher_list)
        if profile.certificate:
            ctx.load_cert_chain(profile.certificate, profile.private_key or None)
        if server:
            if profile.verify_certificate:
                ctx.verify_mode = ssl.CERT_REQUIRED if profile.require_certificate else ssl.CERT_OPTIONAL
                if profile.ca_list:
                    ctx.load_verify_locations(profile.ca_list)
                else:
                    ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        elif profile.verify_certificate:
            if profile.ca_list:
                ctx.load_verify_locations(profile.ca_list)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    except FileNotFoundError as e:
        # OpenSSL's loaders raise it without the file's name: the first one missing.
        missing = e.filename or next((f for f in _paths(profile) if not os.path.exists(f)), _files(profile))
        raise TlsSetupError(f"{where}: {missing}: no such file") from None
    except (ssl.SSLError, OSError, ValueError) as e:
        raise TlsSetupError(f"{where}: {_files(profile)}: {describe(e)}") from None
    # No compression (CRIME, RFC 7457 §2.6); no TLS 1.2 renegotiation, which a client
    # could ask for again and again to spend our CPU on handshakes (RFC 7457 §2.10).
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def _paths(profile: TlsProfile) -> list[str]:
    return [f for f in (profile.certificate, profile.private_key, profile.ca_list) if f]


def _files(profile: TlsProfile) -> str:
    return ", ".join(_paths(profile)) or "(no files)"


class TlsContexts:
    """The SSL contexts of this process, made from `[tls]` (`Config.tls`)."""

    def __init__(self, settings: Tls, *, server: bool):
        """`server`: the process has a `tls:` listen address, whose context needs a
        certificate. Raises TlsSetupError."""
        self.needs_server = server
        self.handshake_timeout = settings.handshake_timeout
        self.settings = settings
        self.server: ssl.SSLContext | None = None
        self.client: ssl.SSLContext
        self.profiles: dict[str, tuple[TlsProfile, ssl.SSLContext]] = {}
        self.by_set: dict[int, str] = {}
        self._make(settings)

    def _make(self, settings: Tls) -> None:
        server = _context(settings.server, server=True, where="[tls]") if self.needs_server else None
        client = _context(settings.client, server=False, where="[tls.client]")
        profiles = {p.name: (p, _context(p, server=False, where=f"[tls.client.{p.name}]"))
                    for p in settings.profiles}
        # All made: only now replace the contexts in use.
        self.server, self.client, self.profiles = server, client, profiles
        self.by_set = {setid: p.name for p in settings.profiles for setid in p.sets}
        self.settings = settings
        self.handshake_timeout = settings.handshake_timeout

    def reload(self, settings: Tls | None = None) -> str:
        """Make the contexts again from the files (of `settings`, else the same ones):
        '' when done, else why not, the contexts in use kept. New connections take the
        new contexts; those established keep theirs."""
        try:
            self._make(settings or self.settings)
        except TlsSetupError as e:
            return str(e)
        return ""

    def reload_logged(self, stats: dict[str, int]) -> str:
        """`reload`, counted in `stats` and logged: what happened, for a reload's answer."""
        why = self.reload()
        stats["tls_reloads" if not why else "tls_reload_failures"] += 1
        if why:
            log.error("%s; the running certificates stay", why, extra=logsafe.KEEP)
            return f"tls not reloaded: {why}"
        log.info("tls certificates and keys reloaded", extra=logsafe.KEEP)
        return "tls certificates and keys reloaded"

    def client_for(self, peer: TlsPeer) -> tuple[ssl.SSLContext, str]:
        """The context and the server name for a connection to `peer`: its `tls_profile`,
        else the profile serving its set, else the default; the profile's `server_name`
        when it has one, else the peer's."""
        name = peer.profile or (self.by_set.get(peer.setid, "") if peer.setid is not None else "")
        found = self.profiles.get(name)
        if found is None:
            return self.client, peer.server_name
        profile, ctx = found
        return ctx, profile.server_name or peer.server_name


class TlsSession:
    """The TLS of one connection on memory buffers: `feed` what the socket read and get
    the plaintext, `encrypt` what to write, and send `outgoing()` after each."""

    __slots__ = ("_in", "_out", "obj", "established", "server_side", "peer_closed", "verdict_pending")

    def __init__(self, ctx: ssl.SSLContext, *, server_side: bool, server_name: str | None = None):
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.server_side = server_side
        # Python sends SNI only for a name, and checks an IP address against the
        # certificate's IP addresses (RFC 6066 §3: no literal IP in SNI).
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=server_side,
                                server_hostname=None if server_side else server_name)
        self.established = False
        self.peer_closed = False  # its close_notify came (`feed`)
        # A TLS 1.3 server checks our certificate after our side of the handshake is
        # over (RFC 8446 §4.4.2.4, §6.2: a refusal is an alert after our Finished): until
        # its first record after the handshake, we do not know that it accepted us.
        self.verdict_pending = False

    def handshake(self, data: bytes = b"") -> bool:
        """Go on with the handshake with `data` read from the socket: True once it is
        over. Raises ssl.SSLError when it fails (`describe` says why)."""
        if data:
            self._in.write(data)
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.established = True
        self.verdict_pending = not self.server_side and self.obj.version() == "TLSv1.3"
        return True

    def accepted(self, plain: bytes) -> bool:
        """After `feed` gave `plain` without an error: True when that settles a pending
        verdict, the server having sent data or a session ticket (which it sends once it
        accepted us)."""
        if not self.verdict_pending:
            return False
        session = self.obj.session
        if plain or (session is not None and session.has_ticket):
            self.verdict_pending = False
            return True
        return False

    def feed(self, data: bytes) -> bytes | None:
        """The plaintext `data` (read from the socket) completes; None once the peer
        closed TLS (close_notify). What came before a close_notify read with it is
        the peer's still (RFC 8446 §6.1): it is returned, `peer_closed` set, and the
        next feed gives None. Raises ssl.SSLError for a broken stream."""
        if self.peer_closed:
            return None
        self._in.write(data)
        out = []
        while True:
            try:
                chunk = self.obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:
                self.peer_closed = True
                break
            out.append(chunk)
        if self.peer_closed and not out:
            return None
        return b"".join(out)

    def encrypt(self, data: bytes) -> bytes:
        self.obj.write(data)
        return self._out.read()

    def outgoing(self) -> bytes:
        """What TLS has to send now (handshake records, alerts, session tickets)."""
        return self._out.read()

    def info(self) -> dict[str, str]:
        """What `tls.list` shows of an established session."""
        cipher = self.obj.cipher()
        cert = self.obj.getpeercert() if self.established else None
        return {
            "version": self.obj.version() or "",
            "cipher": cipher[0] if cipher else "",
            "bits": str(cipher[2]) if cipher else "",
            "peer_subject": _subject(cert),
            "server_name": self.obj.server_hostname or "",
        }


def _subject(cert: dict | None) -> str:
    """A certificate's subject as OpenSSL's one-line form (`CN=x,O=y`); '' for none."""
    if not cert:
        return ""
    parts = []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            parts.append(f"{_SHORT.get(key, key)}={value}")
    return ",".join(parts)


_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
          "stateOrProvinceName": "ST", "localityName": "L", "emailAddress": "emailAddress"}


def describe(e: BaseException) -> str:
    """Why TLS failed, in OpenSSL's words for the check that failed: "certificate verify
    failed: certificate has expired", "... Hostname mismatch ...", "... unable to get
    local issuer certificate", "tlsv1 alert unknown ca"."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        reason = e.reason or ""
        return reason.replace("_", " ").lower() if reason else str(e)
    return getattr(e, "strerror", None) or str(e)
