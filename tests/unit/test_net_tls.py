"""gdispatch.net.tls on bytes alone: two TlsSessions, a client's and a server's, made from
TlsContexts on a test CA's certificates (tests.support.tlspeers.Pki), hand each other
what `outgoing()` gives until the handshake is over, then carry plaintext both ways; a
handshake that fails is worded by `describe` with the check that failed (the validity,
RFC 5280 §4.1.2.5; the name, RFC 6125 §6; the chain, RFC 5280 §6); `reload` replaces the contexts
or keeps them and names the file at fault; `client_for` chooses the client profile by
the destination's `tls_profile` attr, else by its set; `method` bounds the version."""

from __future__ import annotations

import shutil
import ssl
from dataclasses import replace

import pytest

from gdispatch.net.tls import TlsContexts, TlsPeer, TlsSession, describe
from gdispatch.settings import Tls, TlsProfile
from tests.support.tlspeers import Pki

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make certificates")

NAME = "gw.test"
MESSAGE = b"OPTIONS sip:gw.test SIP/2.0\r\nContent-Length: 0\r\n\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The module's certificates, made once: the CA's, a server's for gw.test (and
    127.0.0.1), another server's, one that expired, and one from a CA nobody trusts."""
    directory = tmp_path_factory.mktemp("pki")
    pki = Pki(directory)
    pki.gw = pki.cert("gw", NAME, ips=("127.0.0.1",))
    pki.other = pki.cert("other", "other.test")
    pki.expired = pki.cert("expired", NAME, expired=True)
    stranger = Pki(directory / "stranger", name="Stranger CA")
    pki.stranger = stranger.cert("stranger", NAME)
    garbage = directory / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    pki.garbage = garbage
    return pki


def settings(pki, cert=None, *, client: TlsProfile | None = None, profiles=(), method: str = "TLSv1.2+") -> Tls:
    cert = cert or pki.gw
    return Tls(server=TlsProfile(certificate=str(cert.cert), private_key=str(cert.key), method=method),
               client=client or TlsProfile(verify_certificate=True, ca_list=str(pki.ca)), profiles=tuple(profiles))


def sessions(contexts: TlsContexts, server_name: str = NAME, client: ssl.SSLContext | None = None):
    server = TlsSession(contexts.server, server_side=True)
    client_session = TlsSession(client or contexts.client, server_side=False, server_name=server_name)
    return client_session, server


def handshake(client: TlsSession, server: TlsSession) -> None:
    """The two ends' records shuttled until both are done (a few flights: RFC 8446 §2,
    RFC 5246 §7.3). An SSLError is left to the caller, the failing side's alert already
    handed to the other side when it has one."""
    client_done = client.handshake()
    server_done = False
    for _ in range(6):
        to_server = client.outgoing()
        try:
            server_done = server.handshake(to_server)
        finally:
            to_client = server.outgoing()
        try:
            client_done = client.handshake(to_client)
        except ssl.SSLError:
            alert = client.outgoing()
            if alert:
                server.handshake(alert)  # raises the server's side of it
            raise
        if client_done and server_done and not client.outgoing():
            return
    raise AssertionError("the handshake did not end")


def test_a_handshake_in_memory_then_plaintext_both_ways(pki):
    contexts = TlsContexts(settings(pki), server=True)
    client, server = sessions(contexts)
    assert not client.established and not server.established
    handshake(client, server)
    assert client.established and server.established
    assert server.feed(client.encrypt(MESSAGE)) == MESSAGE
    answer = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert client.feed(server.encrypt(answer)) == answer
    # Several records in one read, and one record in pieces (TCP keeps no boundaries).
    two = client.encrypt(MESSAGE) + client.encrypt(MESSAGE)
    assert server.feed(two) == 2 * MESSAGE
    record = client.encrypt(MESSAGE)
    assert server.feed(record[:7]) == b"" and server.feed(record[7:]) == MESSAGE
    info = client.info()
    assert info["version"] == "TLSv1.3" and info["server_name"] == NAME and info["cipher"]
    assert info["peer_subject"] == f"CN={NAME}"
    assert server.info()["peer_subject"] == ""  # no client certificate


def test_close_notify_ends_the_stream(pki):
    contexts = TlsContexts(settings(pki), server=True)
    client, server = sessions(contexts)
    handshake(client, server)
    assert server.feed(client.encrypt(MESSAGE)) == MESSAGE
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.unwrap()  # sends close_notify, then would wait for the server's
    assert server.feed(client.outgoing()) is None


def test_a_message_read_with_the_close_notify_after_it_is_not_lost(pki):
    """A peer that sends its last message and closes TLS at once: both can come in one
    read, and the message is still the peer's (RFC 8446 §6.1: data before close_notify
    counts)."""
    contexts = TlsContexts(settings(pki), server=True)
    client, server = sessions(contexts)
    handshake(client, server)
    data = client.encrypt(MESSAGE)
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.unwrap()
    assert server.feed(data + client.outgoing()) == MESSAGE
    assert server.peer_closed
    assert server.feed(b"") is None


def test_the_client_checks_the_servers_name_sent_in_sni(pki):
    contexts = TlsContexts(settings(pki), server=True)
    seen = []
    contexts.server.sni_callback = lambda obj, name, ctx: seen.append(name)
    client, server = sessions(contexts, server_name=NAME)
    handshake(client, server)
    assert seen == [NAME]
    # An IP address is checked against the certificate's IP addresses, and not sent
    # (RFC 6066 §3).
    client, server = sessions(contexts, server_name="127.0.0.1")
    handshake(client, server)
    assert seen == [NAME, None]


@pytest.mark.parametrize("cert,server_name,client_words,server_words", [
    ("expired", NAME, "certificate verify failed: certificate has expired", "certificate expired"),
    ("gw", "other.test", "certificate verify failed: Hostname mismatch, certificate is not valid for "
                         "'other.test'", "bad certificate"),
    ("gw", "127.0.0.2", "certificate verify failed: IP address mismatch", "bad certificate"),
    ("stranger", NAME, "certificate verify failed: unable to get local issuer certificate", "unknown ca"),
])
def test_a_failed_handshake_is_worded_by_the_check_that_failed(pki, cert, server_name, client_words,
                                                               server_words):
    contexts = TlsContexts(settings(pki, getattr(pki, cert)), server=True)
    client, server = sessions(contexts, server_name=server_name)
    with pytest.raises(ssl.SSLError) as failed:
        handshake(client, server)
    # The server raised first when it got the client's alert; the client's own failure
    # is the one handshake() re-raised only if the server raised nothing.
    assert server_words in describe(failed.value), describe(failed.value)
    client2, server2 = sessions(contexts, server_name=server_name)
    client2.handshake()
    server2.handshake(client2.outgoing())
    with pytest.raises(ssl.SSLCertVerificationError) as mine:
        client2.handshake(server2.outgoing())
    assert describe(mine.value).startswith(client_words), describe(mine.value)


def test_what_is_not_tls_is_worded_too(pki):
    server = TlsSession(TlsContexts(settings(pki), server=True).server, server_side=True)
    with pytest.raises(ssl.SSLError) as failed:
        server.handshake(b"OPTIONS sip:gw.test SIP/2.0\r\n\r\n")  # SIP over TLS's port, in the clear
    assert describe(failed.value) == "wrong version number"  # a SIP request where a record was due
    assert describe(ConnectionResetError(104, "Connection reset by peer")) == "Connection reset by peer"


def test_a_good_reload_replaces_the_contexts_new_sessions_take_the_new_certificate(pki):
    contexts = TlsContexts(settings(pki), server=True)
    old_server, old_client = contexts.server, contexts.client
    established, established_server = sessions(contexts)
    handshake(established, established_server)
    assert contexts.reload(settings(pki, pki.other)) == ""
    assert contexts.server is not old_server and contexts.client is not old_client
    client, server = sessions(contexts, server_name="other.test")
    handshake(client, server)
    assert client.info()["peer_subject"] == "CN=other.test"
    # A session begun before keeps its context and goes on.
    assert established_server.feed(established.encrypt(MESSAGE)) == MESSAGE
    # reload() without settings reads the same files again.
    kept = contexts.server
    assert contexts.reload() == "" and contexts.server is not kept


@pytest.mark.parametrize("bad", ["garbage", "missing", "mismatch"])
def test_a_bad_reload_names_the_file_and_keeps_the_contexts_in_use(pki, tmp_path, bad):
    contexts = TlsContexts(settings(pki), server=True)
    before = (contexts.server, contexts.client, contexts.profiles, contexts.settings)
    if bad == "garbage":
        server, named = TlsProfile(certificate=str(pki.garbage), private_key=str(pki.gw.key)), str(pki.garbage)
    elif bad == "missing":
        named = str(tmp_path / "gone.pem")
        server = TlsProfile(certificate=named, private_key=str(pki.gw.key))
    else:  # a key that is not the certificate's
        server, named = TlsProfile(certificate=str(pki.gw.cert), private_key=str(pki.other.key)), str(pki.other.key)
    why = contexts.reload(replace(settings(pki), server=server))
    assert why.startswith("[tls]: ") and named in why, why
    if bad == "mismatch":
        assert "key values mismatch" in why
    assert (contexts.server, contexts.client, contexts.profiles, contexts.settings) == before
    client, server_session = sessions(contexts)
    handshake(client, server_session)  # still served with the old certificate
    assert client.info()["peer_subject"] == f"CN={NAME}"


def test_a_bad_client_profile_keeps_every_context(pki, tmp_path):
    contexts = TlsContexts(settings(pki), server=True)
    server = contexts.server
    missing = str(tmp_path / "nowhere-ca.pem")
    why = contexts.reload(settings(pki, profiles=[TlsProfile(name="carrier", verify_certificate=True,
                                                              ca_list=missing, sets=(2,))]))
    assert why.startswith("[tls.client.carrier]: ") and missing in why, why
    assert contexts.server is server and contexts.profiles == {} and contexts.by_set == {}


def test_client_for_chooses_by_tls_profile_then_by_set_then_the_default(pki):
    carrier = TlsProfile(name="carrier", verify_certificate=True, ca_list=str(pki.ca), sets=(2,),
                         server_name="sbc.carrier.test")
    lab = TlsProfile(name="lab", verify_certificate=False)
    contexts = TlsContexts(settings(pki, profiles=[carrier, lab]), server=False)
    assert contexts.server is None  # no tls: listen address
    carrier_ctx, lab_ctx = contexts.profiles["carrier"][1], contexts.profiles["lab"][1]
    assert contexts.client_for(TlsPeer("gw.test", 1)) == (contexts.client, "gw.test")
    assert contexts.client_for(TlsPeer("gw.test")) == (contexts.client, "gw.test")
    # By set: the profile's server_name overrides the URI's host.
    assert contexts.client_for(TlsPeer("10.0.0.1", 2)) == (carrier_ctx, "sbc.carrier.test")
    # The attr wins over the set; a profile without server_name keeps the URI's host.
    assert contexts.client_for(TlsPeer("gw.test", 2, "lab")) == (lab_ctx, "gw.test")
    assert contexts.client_for(TlsPeer("gw.test", 1, "carrier")) == (carrier_ctx, "sbc.carrier.test")
    assert lab_ctx.verify_mode == ssl.CERT_NONE and not lab_ctx.check_hostname
    assert carrier_ctx.verify_mode == ssl.CERT_REQUIRED and carrier_ctx.check_hostname
    assert "lab" in contexts.profiles and "nope" not in contexts.profiles


def test_a_profile_chosen_by_set_verifies_the_name_it_gives(pki):
    """The carrier's certificate names other.test, its URI an IP address: the profile's
    server_name is the name checked."""
    carrier = TlsProfile(name="carrier", verify_certificate=True, ca_list=str(pki.ca), sets=(2,),
                         server_name="other.test")
    contexts = TlsContexts(settings(pki, pki.other, profiles=[carrier]), server=True)
    ctx, name = contexts.client_for(TlsPeer("127.0.0.1", 2))
    client, server = sessions(contexts, server_name=name, client=ctx)
    handshake(client, server)
    ctx, name = contexts.client_for(TlsPeer("127.0.0.1", 1))
    client, server = sessions(contexts, server_name=name, client=ctx)
    with pytest.raises(ssl.SSLError):
        handshake(client, server)


@pytest.mark.parametrize("client_method,server_method,ok", [
    ("TLSv1.3", "TLSv1.2", False),
    ("TLSv1.2", "TLSv1.3+", False),
    ("TLSv1.3+", "TLSv1.2", False),
    ("TLSv1.2+", "TLSv1.2", True),
    ("TLSv1.2", "TLSv1.2+", True),
])
def test_method_bounds_the_version(pki, client_method, server_method, ok):
    contexts = TlsContexts(settings(pki, method=server_method,
                                    client=TlsProfile(verify_certificate=True, ca_list=str(pki.ca),
                                                      method=client_method)), server=True)
    client, server = sessions(contexts)
    if ok:
        handshake(client, server)
        assert client.info()["version"] == "TLSv1.2"
    else:
        with pytest.raises(ssl.SSLError) as failed:
            handshake(client, server)
        assert "version" in describe(failed.value) or "protocol" in describe(failed.value), describe(failed.value)


def test_a_server_requiring_a_certificate_refuses_a_client_without_one_and_names_one_that_has_it(pki):
    client_cert = pki.cert("client", "client.test")
    server = TlsProfile(certificate=str(pki.gw.cert), private_key=str(pki.gw.key), verify_certificate=True,
                        require_certificate=True, ca_list=str(pki.ca))
    base = Tls(server=server, client=TlsProfile(verify_certificate=True, ca_list=str(pki.ca)))
    contexts = TlsContexts(base, server=True)
    client, server_session = sessions(contexts)
    with pytest.raises(ssl.SSLError) as failed:
        handshake(client, server_session)
        server_session.feed(client.outgoing())  # TLS 1.3: the server checks after the client is done
    assert "certificate" in describe(failed.value), describe(failed.value)
    mutual = replace(base, client=replace(base.client, certificate=str(client_cert.cert),
                                          private_key=str(client_cert.key)))
    contexts = TlsContexts(mutual, server=True)
    client, server_session = sessions(contexts)
    handshake(client, server_session)
    assert server_session.feed(client.encrypt(MESSAGE)) == MESSAGE
    assert server_session.info()["peer_subject"] == "CN=client.test"
