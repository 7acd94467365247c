"""gdispatch.toml's `[tls]` (the server side), `[tls.client]` (the client side's
default) and `[tls.client.NAME]` (named client profiles): what is read, and what is
refused with a message naming the key."""

from __future__ import annotations

import pytest

from gdispatch.config import ConfigError, from_dict, load
from gdispatch.settings import Tls, TlsProfile

CERTS = {"certificate": "/etc/gd/cert.pem", "private_key": "/etc/gd/key.pem"}


def test_the_defaults_verify_what_we_reach_and_ask_nothing_of_clients():
    tls = from_dict({}).tls
    assert tls == Tls()
    assert tls.client.verify_certificate and tls.client.ca_list == ""  # the system's store
    assert not tls.server.verify_certificate and not tls.server.require_certificate
    assert tls.server.method == tls.client.method == "TLSv1.2+" and tls.handshake_timeout == 5.0


def test_a_full_tls_table_is_read(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text("""
[server]
listen = ["tls:127.0.0.1:5061"]
[tls]
certificate = "certs/gd.pem"
private_key = "/abs/gd.key"
ca_list = "ca.pem"
verify_certificate = true
method = "TLSv1.3+"
cipher_list = "ECDHE+AESGCM"
handshake_timeout = 2.5
[tls.client]
ca_list = "client-ca.pem"
server_name = "sbc.test"
[tls.client.carrier]
sets = [2, 3]
certificate = "carrier.pem"
verify_certificate = false
""")
    tls = load(str(p)).tls
    # Paths are relative to the configuration file, absolute ones kept.
    assert tls.server == TlsProfile(certificate=str(tmp_path / "certs/gd.pem"), private_key="/abs/gd.key",
                                    ca_list=str(tmp_path / "ca.pem"), verify_certificate=True,
                                    method="TLSv1.3+", cipher_list="ECDHE+AESGCM")
    assert tls.handshake_timeout == 2.5
    assert tls.client.ca_list == str(tmp_path / "client-ca.pem") and tls.client.verify_certificate
    assert tls.client.server_name == "sbc.test"
    (carrier,) = tls.profiles
    # A named profile starts from [tls.client] and changes what it gives.
    assert carrier.name == "carrier" and carrier.sets == (2, 3)
    assert carrier.certificate == str(tmp_path / "carrier.pem") and not carrier.verify_certificate
    assert carrier.ca_list == tls.client.ca_list and carrier.server_name == "sbc.test"


def test_require_certificate_implies_verify_certificate():
    tls = from_dict({"tls": {**CERTS, "require_certificate": True}}).tls
    assert tls.server.require_certificate and tls.server.verify_certificate


@pytest.mark.parametrize("method", ["TLSv1.2+", "TLSv1.3+", "TLSv1.2", "TLSv1.3"])
def test_the_methods_offered(method):
    assert from_dict({"tls": {"method": method}}).tls.server.method == method
    assert from_dict({"tls": {"client": {"method": method}}}).tls.client.method == method


@pytest.mark.parametrize("data,words", [
    ({"tls": {"certificat": "x.pem"}}, r"\[tls\]: unknown key 'certificat'"),
    ({"tls": {"server_name": "x"}}, r"\[tls\]: unknown key 'server_name'"),  # a client's key
    ({"tls": {"client": {"handshake_timeout": 3}}}, r"\[tls.client\]: unknown key 'handshake_timeout'"),
    ({"tls": {"client": {"carrier": {"sets": [2], "tls_method": "x"}}}},
     r"\[tls.client.carrier\]: unknown key 'tls_method'"),
    ({"tls": {"method": "TLSv1"}}, r"\[tls\].method: expected one of TLSv1.2\+, .*TLS 1.0 and 1.1 are not "
                                   r"offered: RFC 8996\), got 'TLSv1'"),
    ({"tls": {"client": {"method": "TLSv1.1"}}}, r"\[tls.client\].method: .*got 'TLSv1.1'"),
    ({"tls": {"client": {"carrier": {"method": "SSLv23"}}}}, r"\[tls.client.carrier\].method: .*got 'SSLv23'"),
    ({"tls": {"private_key": "k.pem"}}, r"\[tls\].private_key: given without a certificate"),
    ({"tls": {"client": {"private_key": "k.pem"}}}, r"\[tls.client\].private_key: given without a certificate"),
    ({"tls": {"client": {"a": {"sets": [2]}, "b": {"sets": [3, 2]}}}},
     r"\[tls.client.b\].sets: set 2 is already served by \[tls.client.a\]"),
    ({"tls": {"client": {"sets": [2]}}}, r"\[tls.client\].sets: the default client profile serves every set"),
    ({"tls": {"client": {"a": {"sets": 2}}}}, r"\[tls.client.a\].sets: expected a list of destination set ids"),
    ({"tls": {"client": {"a": {"sets": [True]}}}}, r"\[tls.client.a\].sets: expected a list"),
    ({"tls": {"handshake_timeout": 0}}, r"\[tls\].handshake_timeout: expected a number of seconds > 0, got 0"),
    ({"tls": {"handshake_timeout": -1}}, r"\[tls\].handshake_timeout: expected a number of seconds > 0"),
    ({"tls": {"handshake_timeout": "5"}}, r"\[tls\].handshake_timeout: expected a number of seconds"),
    ({"tls": {"verify_certificate": "yes"}}, r"\[tls\].verify_certificate: expected true or false, got 'yes'"),
    ({"tls": {"certificate": 5}}, r"\[tls\].certificate: expected a file path"),
    ({"tls": {"client": {"server_name": 5}}}, r"\[tls.client\].server_name: expected a string"),
    ({"tls": {"client": {"a/b": {"sets": [2]}}}}, r"\[tls.client.a/b\]: a profile name is one word"),
    ({"tls": "yes"}, r"\[tls\]: expected a table"),
    ({"tls": {"client": "yes"}}, r"\[tls\].client: expected a table"),
])
def test_errors_name_the_key(data, words):
    with pytest.raises(ConfigError, match=words):
        from_dict(data)


def test_a_tls_listen_address_needs_a_certificate():
    with pytest.raises(ConfigError, match=r"\[server\].listen: a tls: listen address needs \[tls\].certificate"):
        from_dict({"server": {"listen": ["udp:127.0.0.1:5060", "tls:127.0.0.1:5061"]}})
    with pytest.raises(ConfigError, match=r"needs \[tls\].certificate"):
        from_dict({"server": {"listen": ["tls:127.0.0.1:5061"]}, "tls": {"ca_list": "/etc/gd/ca.pem"}})
    c = from_dict({"server": {"listen": ["tls:127.0.0.1:5061"]}, "tls": dict(CERTS)})
    assert [str(x) for x in c.listen] == ["tls:127.0.0.1:5061"]
    # A key inside the certificate's file: no private_key needed.
    assert from_dict({"server": {"listen": ["tls:127.0.0.1:5061"]},
                      "tls": {"certificate": "/etc/gd/both.pem"}}).tls.server.private_key == ""


def test_without_a_configuration_file_relative_paths_stay_as_written():
    assert from_dict({"tls": {"certificate": "gd.pem"}}).tls.server.certificate == "gd.pem"


def test_a_named_profile_with_its_own_certificate_does_not_take_the_default_key(tmp_path):
    cfg = from_dict({"tls": {"client": {"certificate": "a.pem", "private_key": "a.key",
                                        "carrier": {"sets": [2], "certificate": "b.pem"}}}},
                    str(tmp_path / "gdispatch.toml"))
    (carrier,) = cfg.tls.profiles
    assert carrier.certificate.endswith("b.pem") and carrier.private_key == ""
    assert cfg.tls.client.private_key.endswith("a.key")
