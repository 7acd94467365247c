"""SIP over TLS peers for the tests and the bench, on Python's `ssl` (SIPp as Debian
builds it has no TLS): a certificate authority and certificates made by `openssl`, a
gateway that answers calls over TLS, and a caller that makes them.

    pki = Pki(tmp_path)                       # a CA, and certificates signed by it
    gw = pki.cert("gw", "gw.test", ips=["127.0.0.1"])
    with TlsGateway(gw, pki.ca) as g:         # answers INVITE 200, ACK, BYE 200, OPTIONS 200
        caller = TlsCaller(("127.0.0.1", 5061), ca=pki.ca)
        assert caller.call("sip:100@gw.test") == (200, 200)

Everything runs in threads of the test process, with plain blocking sockets; each
connection has its own thread. What they received is kept (`requests`) for the test to
read.
"""

from __future__ import annotations

import itertools
import re
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Cert:
    """A certificate and its key, PEM files."""

    cert: Path
    key: Path


# Keys on P-256: made in milliseconds, where an RSA-2048 key takes a third of a second,
# and a test module makes a dozen.
_NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


class Pki:
    """A test CA in `directory` and the certificates it signs (`openssl` on the PATH)."""

    def __init__(self, directory: Path | str, name: str = "Test CA"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = self.dir / "ca.pem"
        self._ca_key = self.dir / "ca.key"
        _openssl("req", "-x509", *_NEW_KEY, "-nodes", "-keyout", self._ca_key, "-out", self.ca,
                 "-days", "30", "-subj", f"/CN={name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def cert(self, stem: str, cn: str, *, names: tuple[str, ...] = (), ips: tuple[str, ...] = (),
             expired: bool = False) -> Cert:
        """A certificate for `cn` (and `names`, `ips` as subjectAltName; `cn` is one of
        them); `expired`: its validity ended yesterday."""
        key, csr, pem, ext = (self.dir / f"{stem}.{x}" for x in ("key", "csr", "pem", "ext"))
        _openssl("req", *_NEW_KEY, "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
        sans = [f"DNS:{n}" for n in (cn, *names)] + [f"IP:{ip}" for ip in ips]
        ext.write_text(f"subjectAltName={','.join(sans)}\nbasicConstraints=CA:FALSE\n")
        if expired:
            # `openssl ca` alone sets a validity in the past; a minimal CA database for it.
            db = self.dir / f"{stem}.db"
            db.mkdir(exist_ok=True)
            (db / "index.txt").write_text("")
            (db / "serial").write_text("1000\n")
            conf = db / "ca.cnf"
            conf.write_text(
                "[ca]\ndefault_ca=test\n[test]\n"
                f"database={db / 'index.txt'}\nserial={db / 'serial'}\nnew_certs_dir={db}\n"
                "default_md=sha256\npolicy=any\ncopy_extensions=copy\n[any]\ncommonName=supplied\n")
            _openssl("ca", "-batch", "-config", conf, "-cert", self.ca, "-keyfile", self._ca_key, "-in", csr,
                     "-out", pem, "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
                     "-extfile", ext, "-notext")
        else:
            _openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self._ca_key, "-CAcreateserial",
                     "-out", pem, "-days", "30", "-extfile", ext)
        return Cert(pem, key)


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def read_message(stream: socket.socket, buf: bytearray) -> bytes | None:
    """One SIP message from a stream (framed by Content-Length), None at the end."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", bytes(buf[:end]))
            length = int(m.group(1)) if m else 0
            if len(buf) >= end + 4 + length:
                msg = bytes(buf[:end + 4 + length])
                del buf[:end + 4 + length]
                return msg
        try:
            chunk = stream.recv(65536)
        except (OSError, ssl.SSLError):
            return None
        if not chunk:
            return None
        buf += chunk


def header(msg: bytes, name: str) -> list[str]:
    """Every value of header `name` (full name), one per line, as written."""
    return [m.group(1).decode().strip() for m in re.finditer(rb"(?im)^" + name.encode() + rb"[ \t]*:(.*)$", msg)]


def status(msg: bytes) -> int:
    return int(msg.split(b" ", 2)[1]) if msg.startswith(b"SIP/2.0 ") else 0


def answer(req: bytes, code: int, reason: str, to_tag: str = "gw1", extra: str = "") -> bytes:
    """The response to `req`: its Via, From, Call-ID, CSeq and Record-Route copied."""
    lines = []
    for name in ("Via", "Record-Route", "From"):
        lines += [f"{name}: {v}" for v in header(req, name)]
    to = header(req, "To")[0]
    if ";tag=" not in to and code > 100:
        to += f";tag={to_tag}"
    lines += [f"To: {to}", f"Call-ID: {header(req, 'Call-ID')[0]}", f"CSeq: {header(req, 'CSeq')[0]}"]
    return (f"SIP/2.0 {code} {reason}\r\n" + "\r\n".join(lines) + f"\r\n{extra}Content-Length: 0\r\n\r\n").encode()


class TlsGateway:
    """A TLS SIP endpoint on `port` (a free one by default) that answers INVITE with 200
    (Contact: itself over TLS), BYE, CANCEL and OPTIONS with 200, and absorbs ACK.
    `client_ca`: verify a client certificate signed by it (mutual TLS), and refuse a
    client without one unless `client_optional`. `requests`: what it received, in
    order, and `peers` the address of the connection each came on; `peer_certs` the
    client certificate of each connection ({} for none)."""

    def __init__(self, cert: Cert, client_ca: Path | None = None, *, client_optional: bool = False,
                 port: int = 0, host: str = HOST):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert.cert, cert.key)
        if client_ca is not None:
            self.ctx.verify_mode = ssl.CERT_OPTIONAL if client_optional else ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(client_ca)
        self.sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.hostport = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.requests: list[bytes] = []
        self.peers: list[tuple[str, int]] = []
        self.handshake_errors: list[str] = []
        self.peer_certs: list[dict] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def uri(self, name: str | None = None) -> str:
        return f"sip:{name + ':' + str(self.port) if name else self.hostport};transport=tls"

    def _accept(self) -> None:
        while not self.closed:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        peer = raw.getpeername()[:2]
        raw.settimeout(10)
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as e:
            with self.lock:
                self.handshake_errors.append(str(e))
            raw.close()
            return
        with self.lock:
            self.peer_certs.append(conn.getpeercert() or {})
        conn.settimeout(None)
        buf = bytearray()
        while not self.closed:
            msg = read_message(conn, buf)
            if msg is None:
                break
            if msg.startswith(b"SIP/2.0"):
                continue
            with self.lock:
                self.requests.append(msg)
                self.peers.append(peer)
            method = msg.split(b" ", 1)[0].decode()
            contact = f"Contact: <sip:gw@{self.hostport};transport=tls>\r\n"
            try:
                if method == "INVITE":
                    conn.sendall(answer(msg, 100, "Trying"))
                    conn.sendall(answer(msg, 200, "OK", extra=contact))
                elif method != "ACK":
                    conn.sendall(answer(msg, 200, "OK"))
            except OSError:
                break
        conn.close()

    def count(self, method: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r.startswith(method.encode() + b" "))

    def received(self, call_id: str) -> list[tuple[bytes, tuple[str, int]]]:
        """The requests of one call, each with the address of its connection."""
        with self.lock:
            return [(r, p) for r, p in zip(self.requests, self.peers) if header(r, "Call-ID") == [call_id]]

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def __enter__(self) -> TlsGateway:  # noqa: PYI034 - no typing.Self before Python 3.11
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_calls = itertools.count(1)


class TlsCaller:
    """A SIP caller over one TLS connection to `proxy` ((host, port)), verifying the
    proxy's certificate against `ca` (and `server_name`), with a client certificate
    `cert` when given (mutual TLS), from the loopback address `source` when given
    (127.0.0.2: another source than the other peers of a test). `last_ok` is the last
    200 to an INVITE, `last_call_id` the Call-ID of the last call."""

    def __init__(self, proxy: tuple[str, int], *, ca: Path, server_name: str = HOST, cert: Cert | None = None,
                 timeout: float = 10.0, source: str | None = None):
        ctx = ssl.create_default_context(cafile=str(ca))
        if cert is not None:
            ctx.load_cert_chain(cert.cert, cert.key)
        raw = socket.create_connection(proxy, timeout=timeout, source_address=(source, 0) if source else None)
        try:
            self.conn = ctx.wrap_socket(raw, server_hostname=server_name)
        except BaseException:
            raw.close()
            raise
        self.local = self.conn.getsockname()
        self.buf = bytearray()
        self.timeout = timeout
        self.last_ok: bytes | None = None
        self.last_call_id = ""

    def peer_certificate(self) -> dict:
        """The proxy's certificate, as `ssl.SSLSocket.getpeercert` gives it."""
        return self.conn.getpeercert() or {}

    def request(self, method: str, ruri: str, call_id: str, cseq: int, *, to_tag: str = "",
                routes: list[str] | None = None, branch: str = "") -> bytes:
        port = self.local[1]
        ip = f"[{self.local[0]}]" if ":" in self.local[0] else self.local[0]
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/TLS {ip}:{port};rport;branch={branch or 'z9hG4bK' + call_id + str(cseq)}"]
        lines += [f"Route: {r}" for r in routes or ()]
        lines += ["Max-Forwards: 70", f"From: <sip:caller@{ip}>;tag=c{call_id}",
                  f"To: <{ruri}>" + (f";tag={to_tag}" if to_tag else ""), f"Call-ID: {call_id}",
                  f"CSeq: {cseq} {method}", f"Contact: <sip:caller@{ip}:{port};transport=tls>",
                  "Content-Length: 0", "", ""]
        data = "\r\n".join(lines).encode()
        self.conn.sendall(data)
        return data

    def final(self, method: str) -> bytes | None:
        """The next final response to `method` (provisionals and others skipped)."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = read_message(self.conn, self.buf)
            if msg is None:
                return None
            if status(msg) >= 200 and header(msg, "CSeq")[0].endswith(method):
                return msg
        return None

    def call(self, ruri: str) -> tuple[int, int]:
        """INVITE, ACK and BYE through the proxy (its Record-Route as the Route set):
        the INVITE's final status and the BYE's (0 when none came)."""
        call_id = f"tls{next(_calls)}-{time.monotonic_ns()}"
        self.last_call_id = call_id
        self.request("INVITE", ruri, call_id, 1)
        ok = self.final("INVITE")
        if ok is None or status(ok) != 200:
            return (status(ok) if ok else 0), 0
        self.last_ok = ok
        # The caller's route set: the Record-Route entries in reverse (RFC 3261 §12.1.2).
        routes = re.findall(r"<[^>]*>", ",".join(header(ok, "Record-Route")))[::-1]
        to_tag = re.search(r";tag=([^;>\s]+)", header(ok, "To")[0])
        tag = to_tag.group(1) if to_tag else ""
        contact = re.search(r"<([^>]+)>", header(ok, "Contact")[0])
        target = contact.group(1) if contact else ruri
        self.request("ACK", target, call_id, 1, to_tag=tag, routes=routes, branch=f"z9hG4bKack{call_id}")
        self.request("BYE", target, call_id, 2, to_tag=tag, routes=routes)
        bye = self.final("BYE")
        return 200, status(bye) if bye else 0

    def close(self) -> None:
        self.conn.close()
