"""SIP over TLS end to end (RFC 3261 §26.2, RFC 5630, RFC 5658), with a real gdispatch
process on the loopback and certificates made for the module by `openssl`
(tests.support.tlspeers): calls between TLS and UDP peers, the Via and Record-Route the
other side sees, the failover from a destination whose certificate does not verify,
mutual TLS with the default and a named client profile, certificates reloaded under
calls, handshake starvation, `tls.list`, and the sips: rules.

One PKI per module. The proxy most tests share (`main`) listens on UDP and TLS and sends
each test's calls to its own sets, by Request-URI user prefix:

    1  TLS gateway (probed)         2  SIPp UAS over UDP        3  TLS gateway
    41 expired certificate, then the good gateway (algorithm 8: priority)
    42 a certificate for another name, then the good one
    43 a certificate from an unknown CA, then the good one
    5  TLS gateway requiring a client certificate
    8  UDP gateway only             9  UDP gateway, then a TLS gateway

The reload, the handshake deadline and the named client profile change what a proxy
holds, so each has a proxy of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import threading
from pathlib import Path

import pytest

from gdispatch.control.client import request as rpc_request
from tests.support.tlspeers import Cert, Pki, TlsCaller, TlsGateway, header, status
from tests.support.wait import wait_for

from . import harness

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make certificates")

HOST = "127.0.0.1"
OTHER_SOURCE = "127.0.0.2"  # a caller that is not the source the starvation test floods from


# --------------------------------------------------------------------------- helpers

_started: list[harness.Proxy] = []


@pytest.fixture(autouse=True)
def _proxy_logs_on_failure(request):
    """The tails of the module's proxy logs under a failed test (the e2e conftest does
    this for its function-scoped proxies only)."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for p in _started:
            print(f"\n----- proxy {p.dir} log -----\n" + "\n".join(p.log().splitlines()[-60:]))


def _start(tmp: Path, dlist: str, config: str, tls_port: int, **kw) -> harness.Proxy:
    p = harness.Proxy(tmp, dlist, config, ("udp:127.0.0.1:{port}", f"tls:127.0.0.1:{tls_port}"), **kw)
    _started.append(p)
    return p.start()


def _stop(p: harness.Proxy) -> None:
    p.stop()
    _started.remove(p)
    assert "Traceback" not in p.log(), p.log()[-3000:]


def _stats(p: harness.Proxy) -> dict:
    """`stats` over the control socket, in this process (quicker than `gdispatch rpc`)."""
    return rpc_request("stats", socket_path=str(p.socket_path), timeout=5)


def _server_config(cert: Cert, **more: object) -> str:
    lines = ["[tls]", f'certificate = "{cert.cert}"', f'private_key = "{cert.key}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in more.items()]
    return "\n".join(lines) + "\n"


def _routes(*prefixes_sets: tuple[str, int], algorithm: int = 8) -> str:
    return "".join(f'[[route]]\nuser_prefix = ["{prefix}"]\nset = {setid}\nalgorithm = {algorithm}\n'
                   for prefix, setid in prefixes_sets)


def _record_routes(msg: bytes) -> list[str]:
    """Every Record-Route value of `msg`, in order, one entry each."""
    return re.findall(r"<[^>]*>", ",".join(header(msg, "Record-Route")))


def _top_via(msg: bytes) -> str:
    return header(msg, "Via")[0]


def _methods(received: list[tuple[bytes, tuple[str, int]]]) -> list[str]:
    return [r.split(b" ", 1)[0].decode() for r, _ in received]


def _subject_cn(cert: dict) -> str:
    return next(v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName")


def _fresh_certificate(port: int, ca: Path) -> dict:
    """The certificate a new connection to the proxy's TLS port is shown."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((HOST, port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOST) as conn:
        return conn.getpeercert() or {}


# --------------------------------------------------------------------------- the PKI

class Certs:
    """The module's certificates: a CA, the proxy's, the gateways', a client's, and the
    three a destination must be refused for."""

    def __init__(self, directory: Path):
        self.pki = pki = Pki(directory / "ca")
        self.ca = pki.ca
        self.proxy = pki.cert("proxy", "proxy.test", ips=(HOST,))
        self.proxy_new = pki.cert("proxy-new", "proxy-new.test", ips=(HOST,))
        self.gateway = pki.cert("gw", "gw.test", ips=(HOST,))
        self.caller = pki.cert("caller", "caller.test")
        self.client = pki.cert("gdispatch-client", "gdispatch-client.test")
        self.carrier = pki.cert("carrier-client", "carrier-client.test")
        self.expired = pki.cert("expired", "expired.test", ips=(HOST,), expired=True)
        self.other_name = pki.cert("other", "other.test")  # no IP address: 127.0.0.1 is not its name
        self.unknown_ca = Pki(directory / "other-ca", "Unknown CA").cert("stranger", "stranger.test", ips=(HOST,))


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("pki"))


# --------------------------------------------------------------------------- the shared proxy

class Main:
    """The proxy most tests share, its gateways and its TLS port."""

    def __init__(self, certs: Certs, directory: Path):
        self.certs = certs
        self.tls_port = harness.free_port("tcp")
        self.gw1 = TlsGateway(certs.gateway)
        self.gw3 = TlsGateway(certs.gateway)
        self.good = TlsGateway(certs.gateway)
        self.expired = TlsGateway(certs.expired)
        self.other_name = TlsGateway(certs.other_name)
        self.unknown_ca = TlsGateway(certs.unknown_ca)
        self.mutual = TlsGateway(certs.gateway, client_ca=certs.ca)
        self.gw9 = TlsGateway(certs.gateway)
        self.tls_gateways = [self.gw1, self.gw3, self.good, self.expired, self.other_name, self.unknown_ca,
                             self.mutual, self.gw9]
        self.udp8 = harness.Answerer()
        self.udp9 = harness.Answerer()
        self.uas = harness.Uas(directory, "uas_ok.xml").start()
        dlist = "\n".join([
            # Flag 8 (probing): with [probing] mode 3 only this one is pinged (test 7).
            f"1 {self.gw1.uri()} 8 0 duid=gw1",
            f"2 {self.uas.uri} 0 0 duid=uas2",
            f"3 {self.gw3.uri()} 0 0 duid=gw3",
            f"41 {self.expired.uri()} 0 10 duid=expired",
            f"41 {self.good.uri()} 0 1 duid=good41",
            f"42 {self.other_name.uri()} 0 10 duid=other_name",
            f"42 {self.good.uri()} 0 1 duid=good42",
            f"43 {self.unknown_ca.uri()} 0 10 duid=unknown_ca",
            f"43 {self.good.uri()} 0 1 duid=good43",
            f"5 {self.mutual.uri()} 0 0 duid=mutual",
            f"8 sip:{HOST}:{self.udp8.port} 0 0 duid=udp8",
            f"9 sip:{HOST}:{self.udp9.port} 0 10 duid=udp9",
            f"9 {self.gw9.uri()} 0 1 duid=tls9",
        ]) + "\n"
        config = _server_config(certs.proxy, verify_certificate=True, ca_list=str(certs.ca))
        config += "[tls.client]\n" + "\n".join([
            f'ca_list = "{certs.ca}"', f'certificate = "{certs.client.cert}"',
            f'private_key = "{certs.client.key}"']) + "\n"
        # Mode 3 pings the destinations flagged 8 only; a failed call marks none of them
        # (mark "off"), so a test's count of handshake failures is its own.
        config += "[probing]\ninterval = 2\nmode = 3\nmark = \"off\"\n[server]\ndrain_time = 0.5\n"
        config += _routes(("1", 1), ("2", 2), ("3", 3), ("41", 41), ("42", 42), ("43", 43), ("5", 5), ("8", 8),
                          ("9", 9))
        self.proxy = _start(directory / "proxy", dlist, config, self.tls_port)

    def caller(self, **kw) -> TlsCaller:
        return TlsCaller((HOST, self.tls_port), ca=self.certs.ca, **kw)

    def close(self) -> None:
        _stop(self.proxy)
        self.uas.stop(grace_s=1.0)
        for gw in self.tls_gateways:
            gw.close()
        self.udp8.close()
        self.udp9.close()


@pytest.fixture(scope="module")
def main(certs, tmp_path_factory):
    m = Main(certs, tmp_path_factory.mktemp("main"))
    yield m
    m.close()


# --------------------------------------------------------------------------- 1. TLS to TLS

@pytest.mark.parametrize("scheme", ["sip", "sips"])
def test_a_tls_caller_reaches_a_tls_gateway_through_the_proxy(main, scheme):
    port = main.tls_port
    ruri = f"sip:100@{HOST}:{port};transport=tls" if scheme == "sip" else f"sips:100@{HOST}:{port}"
    caller = main.caller()
    try:
        assert caller.call(ruri) == (200, 200)
        call_id = caller.last_call_id
        got = wait_for(lambda: len(main.gw1.received(call_id)) >= 3 and main.gw1.received(call_id),
                       message=lambda: _methods(main.gw1.received(call_id)))
    finally:
        caller.close()
    assert _methods(got) == ["INVITE", "ACK", "BYE"]
    invite = got[0][0]
    assert invite.startswith(f"INVITE {ruri} SIP/2.0".encode())
    assert _top_via(invite).startswith(f"SIP/2.0/TLS {HOST}:{port};branch=z9hG4bK")
    # TLS in, TLS out: one Record-Route entry, the TLS listen address (RFC 5630 §3.1.3:
    # a SIPS Request-URI makes it a SIPS URI, which means TLS without ;transport=tls).
    (rr,) = _record_routes(invite)
    if scheme == "sip":
        assert rr.startswith(f"<sip:{HOST}:{port};transport=tls;lr;")
    else:
        assert rr.startswith(f"<sips:{HOST}:{port};lr;") and "transport" not in rr
    # ACK and BYE came over the connection the INVITE came on, and through our Route.
    assert {peer for _, peer in got} == {got[0][1]}
    for req, _ in got[1:]:
        assert _top_via(req).startswith(f"SIP/2.0/TLS {HOST}:{port};branch=")
        assert not header(req, "Route")  # ours, popped


# --------------------------------------------------------------------------- 2. TLS <-> UDP

def test_a_tls_caller_reaches_a_udp_gateway_with_double_record_route(main):
    before = main.uas.counts()
    caller = main.caller()
    try:
        assert caller.call(f"sip:200@{HOST}:{main.tls_port};transport=tls") == (200, 200)
        ok = caller.last_ok
    finally:
        caller.close()
    assert ok is not None
    # RFC 5658 §4: two entries, the one facing the gateway (UDP, no transport
    # parameter) on top, then the one facing the caller (TLS).
    rrs = _record_routes(ok)
    assert len(rrs) == 2, rrs
    assert rrs[0].startswith(f"<sip:{HOST}:{main.proxy.port};lr;")
    assert rrs[1].startswith(f"<sip:{HOST}:{main.tls_port};transport=tls;lr;")
    # The BYE went on to the gateway over UDP; its 200 came back on the caller's TLS
    # connection (the (200, 200) above).
    wanted = {m: before[m] + 1 for m in ("INVITE", "ACK", "BYE")}
    wait_for(lambda: all(main.uas.counts()[m] >= n for m, n in wanted.items()),
             message=lambda: main.uas.counts())


def test_a_udp_caller_reaches_a_tls_gateway_with_double_record_route(main, tmp_path):
    result = harness.run_uac(f"{HOST}:{main.proxy.port}", calls=1, rate=1, timeout_s=10, service="300",
                             workdir=tmp_path / "uac")
    assert result.successful == 1, str(result)
    got = wait_for(lambda: len(main.gw3.requests) >= 3 and list(zip(main.gw3.requests, main.gw3.peers)),
                   message=lambda: main.gw3.requests)
    assert _methods(got) == ["INVITE", "ACK", "BYE"]
    invite = got[0][0]
    vias = header(invite, "Via")
    assert vias[0].startswith(f"SIP/2.0/TLS {HOST}:{main.tls_port};branch=z9hG4bK")
    assert vias[1].startswith("SIP/2.0/UDP ")
    rrs = _record_routes(invite)
    assert len(rrs) == 2, rrs
    assert rrs[0].startswith(f"<sip:{HOST}:{main.tls_port};transport=tls;lr;")
    assert rrs[1].startswith(f"<sip:{HOST}:{main.proxy.port};lr;")
    # The ACK and the BYE from UDP went on over the TLS connection of the INVITE.
    assert {peer for _, peer in got} == {got[0][1]}
    for req, _ in got[1:]:
        assert _top_via(req).startswith(f"SIP/2.0/TLS {HOST}:{main.tls_port};branch=")


# --------------------------------------------------------------------------- 3. verification failures

@pytest.mark.parametrize("prefix, bad, why", [
    ("41", "expired", "certificate verify failed: certificate has expired"),
    ("42", "other_name", "certificate verify failed: IP address mismatch"),
    ("43", "unknown_ca", "certificate verify failed: unable to get local issuer certificate"),
])
def test_a_destination_whose_certificate_does_not_verify_fails_over(main, prefix, bad, why):
    gw: TlsGateway = getattr(main, bad)
    failures = _stats(main.proxy)["tls_handshake_failures"]
    invites = main.good.count("INVITE")
    caller = main.caller()
    try:
        assert caller.call(f"sip:{prefix}0@{HOST}:{main.tls_port};transport=tls") == (200, 200)
        call_id = caller.last_call_id
    finally:
        caller.close()
    assert main.good.count("INVITE") == invites + 1
    assert _methods(main.good.received(call_id))[:1] == ["INVITE"]
    assert gw.requests == []  # nothing reached the gateway that failed the check
    line = f"tls handshake to {HOST}:{gw.port} ({HOST}) failed: {why}"
    wait_for(lambda: line in main.proxy.log(), message=lambda: main.proxy.log()[-2000:])
    assert _stats(main.proxy)["tls_handshake_failures"] == failures + 1


# --------------------------------------------------------------------------- 4. mutual TLS

def test_mutual_tls_with_the_default_client_certificate(main):
    caller = main.caller()
    try:
        assert caller.call(f"sip:500@{HOST}:{main.tls_port};transport=tls") == (200, 200)
    finally:
        caller.close()
    assert main.mutual.count("INVITE") >= 1
    assert [_subject_cn(c) for c in main.mutual.peer_certs] == ["gdispatch-client.test"]


class Profiles:
    """A proxy whose default client profile has no certificate and whose named profile
    "carrier" (set 2) has one. Its gateways verify a client certificate when one comes;
    `plain` (set 1) and `carrier` (set 2) do not require one, `strict` (set 3, then
    `plain`) does."""

    def __init__(self, certs: Certs, directory: Path):
        self.plain = TlsGateway(certs.gateway, client_ca=certs.ca, client_optional=True)
        self.carrier = TlsGateway(certs.gateway, client_ca=certs.ca, client_optional=True)
        self.strict = TlsGateway(certs.gateway, client_ca=certs.ca)
        self.tls_port = harness.free_port("tcp")
        self.ca = certs.ca
        dlist = (f"1 {self.plain.uri()} 0 0\n2 {self.carrier.uri()} 0 0\n"
                 f"3 {self.strict.uri()} 0 10\n3 {self.plain.uri()} 0 1\n")
        config = _server_config(certs.proxy)
        config += f'[tls.client]\nca_list = "{certs.ca}"\n'
        config += (f'[tls.client.carrier]\nsets = [2]\ncertificate = "{certs.carrier.cert}"\n'
                   f'private_key = "{certs.carrier.key}"\n')
        config += "[probing]\ninterval = 0\n[server]\ndrain_time = 0.5\n" + _routes(("1", 1), ("2", 2), ("3", 3))
        self.proxy = _start(directory / "proxy", dlist, config, self.tls_port)

    def call(self, user: str) -> tuple[tuple[int, int], str]:
        caller = TlsCaller((HOST, self.tls_port), ca=self.ca)
        try:
            return caller.call(f"sip:{user}@{HOST}:{self.tls_port};transport=tls"), caller.last_call_id
        finally:
            caller.close()

    def close(self) -> None:
        _stop(self.proxy)
        for gw in (self.plain, self.carrier, self.strict):
            gw.close()


@pytest.fixture(scope="module")
def profiles(certs, tmp_path_factory):
    p = Profiles(certs, tmp_path_factory.mktemp("profiles"))
    yield p
    p.close()


def test_a_named_client_profile_presents_its_certificate_to_its_sets_only(profiles):
    assert profiles.call("100")[0] == (200, 200)
    assert profiles.call("200")[0] == (200, 200)
    assert profiles.plain.count("INVITE") >= 1 and profiles.carrier.count("INVITE") == 1
    assert profiles.plain.peer_certs == [{}]
    assert [_subject_cn(c) for c in profiles.carrier.peer_certs] == ["carrier-client.test"]


def test_a_destination_refusing_us_for_want_of_a_client_certificate_fails_over(profiles):
    # In TLS 1.3 the server checks the client's certificate after the client's last
    # handshake message (RFC 8446 §4.4.2.4): its refusal, an alert, comes after our
    # handshake is over and the INVITE written, and is still a handshake failure.
    failures = _stats(profiles.proxy)["tls_handshake_failures"]
    result, call_id = profiles.call("300")
    assert result == (200, 200)
    assert _methods(profiles.plain.received(call_id)) == ["INVITE", "ACK", "BYE"]
    assert profiles.strict.requests == []
    assert "peer did not return a certificate" in " ".join(profiles.strict.handshake_errors)
    line = f"tls handshake to {HOST}:{profiles.strict.port} ({HOST}) failed: tlsv13 alert certificate required"
    wait_for(lambda: line in profiles.proxy.log(), message=lambda: profiles.proxy.log()[-2000:])
    assert _stats(profiles.proxy)["tls_handshake_failures"] == failures + 1
    assert "Traceback" not in profiles.proxy.log()


# --------------------------------------------------------------------------- 5. reload under calls

def _replace(dst: Path, data: bytes) -> None:
    """Write `dst` whole at once, as a deployment tool does (a rename over it)."""
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dst)


class _Calls:
    """Callers making calls on their own TLS connections until stopped (bounded), each
    call's statuses kept per caller."""

    MAX_PER_CALLER = 60
    PACE = 0.02  # between two calls of a caller: a steady load, not a flood

    def __init__(self, callers: list[TlsCaller], ruri: str):
        self.callers = callers
        self.ruri = ruri
        self.results: list[list[tuple[int, int]]] = [[] for _ in callers]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(len(callers))]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        for _ in range(self.MAX_PER_CALLER):
            if self.stop.is_set():
                return
            self.results[i].append(self.callers[i].call(self.ruri))
            self.stop.wait(self.PACE)

    def counts(self) -> list[int]:
        return [len(r) for r in self.results]

    def each_made_more_than(self, counts: list[int], more: int = 5) -> bool:
        return all(n >= c + more for n, c in zip(self.counts(), counts))

    def finish(self) -> list[tuple[int, int]]:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        return [r for rs in self.results for r in rs]


def test_certificates_reloaded_under_calls(certs, tmp_path):
    gateway = harness.Answerer()
    tls_port = harness.free_port("tcp")
    live = Cert(tmp_path / "server.pem", tmp_path / "server.key")
    shutil.copy(certs.proxy.cert, live.cert)
    shutil.copy(certs.proxy.key, live.key)
    config = _server_config(live) + "[probing]\ninterval = 0\n[server]\ndrain_time = 0.5\n"
    p = _start(tmp_path / "proxy", f"1 sip:{HOST}:{gateway.port} 0 0\n", config, tls_port)
    callers: list[TlsCaller] = []
    calls = None
    try:
        callers = [TlsCaller((HOST, tls_port), ca=certs.ca) for _ in range(4)]
        calls = _Calls(callers, f"sip:100@{HOST}:{tls_port};transport=tls")
        wait_for(lambda: calls.each_made_more_than([0] * 4, 1), 10)

        # A new certificate and key, then tls.reload: new connections are shown it.
        _replace(live.key, certs.proxy_new.key.read_bytes())
        _replace(live.cert, certs.proxy_new.cert.read_bytes())
        out = p.rpc("tls.reload")
        assert out.returncode == 0 and "reloaded" in out.stdout, out.stdout + out.stderr
        assert _subject_cn(_fresh_certificate(tls_port, certs.ca)) == "proxy-new.test"
        at_reload = calls.counts()
        wait_for(lambda: calls.each_made_more_than(at_reload), 10, message=calls.counts)

        # SIGHUP reads them again too.
        os.kill(p.pid, signal.SIGHUP)
        wait_for(lambda: _stats(p)["tls_reloads"] == 2, message=lambda: _stats(p))

        # A certificate file that is garbage: refused, naming the file; the running
        # certificate stays.
        _replace(live.cert, b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
        out = p.rpc("tls.reload")
        # As kamcmd: the fault on standard output, exit status 0, the details on stderr.
        assert out.stdout.startswith("error: 500 - Error while fixing TLS configuration"), out.stdout
        assert str(live.cert) in out.stderr, out.stderr
        st = _stats(p)
        assert (st["tls_reloads"], st["tls_reload_failures"]) == (2, 1)
        assert _subject_cn(_fresh_certificate(tls_port, certs.ca)) == "proxy-new.test"
        at_failure = calls.counts()
        wait_for(lambda: calls.each_made_more_than(at_failure), 10, message=calls.counts)
        results = calls.finish()
        # The connections made before the reloads kept their certificate, and worked on.
        assert {_subject_cn(c.peer_certificate()) for c in callers} == {"proxy.test"}
    finally:
        if calls is not None:
            calls.finish()
        for c in callers:
            c.close()
        _stop(p)
        gateway.close()
    assert results and set(results) == {(200, 200)}, [r for r in results if r != (200, 200)]
    assert len(results) <= 4 * _Calls.MAX_PER_CALLER
    invites = [m for m in gateway.received if m.startswith(b"INVITE ")]
    assert len(invites) == len(results)


# --------------------------------------------------------------------------- 6. handshake starvation

def _readable(socks: list[socket.socket]) -> list[socket.socket]:
    import select

    return select.select(socks, [], [], 0)[0]


def _end_of(s: socket.socket) -> str:
    """How the proxy ended a connection: "reset" or "closed" (what came before the end is
    read and dropped)."""
    s.settimeout(5)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "open"
    return "closed"


def test_silent_connections_are_closed_at_the_handshake_deadline_and_starve_no_one(certs, tmp_path):
    gateway = harness.Answerer()
    tls_port = harness.free_port("tcp")
    config = _server_config(certs.proxy, handshake_timeout=1)
    config += "[tcp]\nmax_connections_per_source = 8\n[probing]\ninterval = 0\n[server]\ndrain_time = 0.5\n"
    p = _start(tmp_path / "proxy", f"1 sip:{HOST}:{gateway.port} 0 0\n", config, tls_port)
    silent: list[socket.socket] = []
    try:
        # 12 connections from 127.0.0.1 that never say ClientHello: 8 are held (the
        # cap), 4 are reset at once (a reset may come before connect() returns).
        reset_at_connect = 0
        for _ in range(12):
            try:
                silent.append(socket.create_connection((HOST, tls_port), timeout=5))
            except ConnectionResetError:
                reset_at_connect += 1
        expected = 4 - reset_at_connect
        refused = wait_for(lambda: (lambda r: len(r) == expected and [r])(_readable(silent)))[0]
        assert [_end_of(s) for s in refused] == ["reset"] * expected
        held = [s for s in silent if s not in refused]

        # Meanwhile a caller from another source is served.
        caller = TlsCaller((HOST, tls_port), ca=certs.ca, source=OTHER_SOURCE)
        try:
            assert caller.call(f"sip:100@{HOST}:{tls_port};transport=tls") == (200, 200)
        finally:
            caller.close()
        assert any(m.startswith(b"INVITE ") for m in gateway.received)

        # The held ones are closed at the deadline.
        assert [_end_of(s) for s in held] == ["closed"] * 8
        st = _stats(p)
        assert st["tcp_refused_per_source"] == 4
        assert st["tls_handshake_timeouts"] == 8
        assert st["tls_handshakes"] == 1

        # Plaintext SIP on the TLS port: no answer, the connection closes, a failure counted.
        failures = st["tls_handshake_failures"]
        with socket.create_connection((HOST, tls_port), timeout=5) as plain:
            plain.sendall(harness.build_request("OPTIONS", f"sip:{HOST}:{tls_port}", local_port=9,
                                                transport="TLS"))
            got = b""
            plain.settimeout(5)
            try:
                while chunk := plain.recv(65536):
                    got += chunk
            except ConnectionResetError:
                pass
        assert b"SIP/2.0" not in got
        wait_for(lambda: _stats(p)["tls_handshake_failures"] == failures + 1)
    finally:
        for s in silent:
            s.close()
        _stop(p)
        gateway.close()


# --------------------------------------------------------------------------- 7. tls.list, dispatcher.list

def test_tls_list_shows_the_connections_and_dispatcher_list_the_tls_destination(main):
    caller = main.caller(cert=main.certs.caller)
    try:
        assert caller.call(f"sip:100@{HOST}:{main.tls_port};transport=tls") == (200, 200)
        conns = main.proxy.rpc_json("tls.list")
    finally:
        caller.close()
    mine = [c for c in conns if (c["src_ip"], c["src_port"]) == tuple(caller.local[:2])]
    assert len(mine) == 1, conns
    accepted = mine[0]
    assert accepted["direction"] == "accepted" and accepted["state"] == "established"
    assert (accepted["dst_ip"], accepted["dst_port"]) == (HOST, main.tls_port)
    assert re.match(r"TLSv1\.[23] \S+ \d+$", accepted["cipher"]), accepted
    assert accepted["peer_subject"] == "CN=caller.test"
    opened = [c for c in conns if (c["src_ip"], c["src_port"]) == (HOST, main.gw1.port)]
    assert len(opened) == 1, conns
    assert opened[0]["direction"] == "opened"
    # Our end of it: the port the kernel gave the connection, the one the gateway saw.
    assert opened[0]["dst_port"] in {port for _, port in main.gw1.peers}, (opened, main.gw1.peers)
    assert opened[0]["peer_subject"] == "CN=gw.test"
    assert opened[0]["cipher"].startswith("TLSv1.")
    # The gateway answers the OPTIONS pings over TLS: AP.
    wait_for(lambda: main.proxy.states().get("gw1") == "AP", message=main.proxy.states)
    assert main.gw1.count("OPTIONS") >= 1


# --------------------------------------------------------------------------- 8. sips: rules

def test_a_sips_request_is_refused_when_its_set_has_no_tls_destination(main):
    caller = main.caller()
    try:
        caller.request("INVITE", f"sips:800@{HOST}:{main.tls_port}", "sips-to-udp", 1)
        final = caller.final("INVITE")
    finally:
        caller.close()
    assert final is not None
    assert final.startswith(b"SIP/2.0 503 No TLS Destination Available\r\n"), final
    assert main.udp8.received == []


def test_a_sips_request_skips_a_udp_destination_for_a_tls_one(main):
    caller = main.caller()
    try:
        assert caller.call(f"sips:900@{HOST}:{main.tls_port}") == (200, 200)
        call_id = caller.last_call_id
    finally:
        caller.close()
    assert _methods(main.gw9.received(call_id))[:1] == ["INVITE"]
    assert main.udp9.received == []
    assert status(caller.last_ok or b"") == 200


# --------------------------------------------------------------------------- IPv6

def test_a_call_over_tls_on_ipv6_both_ways(certs, tmp_path):
    # The certificates name ::1 as well: the proxy's for the caller, the gateway's for us.
    proxy_cert = certs.pki.cert("proxy6", "proxy6.test", ips=("::1",))
    gateway = TlsGateway(certs.pki.cert("gw6", "gw6.test", ips=("::1",)), host="::1")
    port = harness.free_port("tcp")
    config = _server_config(proxy_cert) + f'[tls.client]\nca_list = "{certs.ca}"\n[probing]\ninterval = 0\n'
    p = harness.Proxy(tmp_path, f"1 {gateway.uri()} 0 0\n", config, ("udp:127.0.0.1:{port}", f"tls:[::1]:{port}"))
    _started.append(p)
    p.start()
    caller = TlsCaller(("::1", port), ca=certs.ca, server_name="::1")
    try:
        assert caller.call(f"sip:100@[::1]:{port};transport=tls") == (200, 200)
        assert _methods(gateway.received(caller.last_call_id)) == ["INVITE", "ACK", "BYE"]
        invite = gateway.received(caller.last_call_id)[0][0]
        assert _top_via(invite).startswith(f"SIP/2.0/TLS [::1]:{port};branch=")
        assert _record_routes(invite)[0].startswith(f"<sip:[::1]:{port};transport=tls;lr;")
    finally:
        caller.close()
        gateway.close()
        _stop(p)
