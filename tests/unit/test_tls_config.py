"""Credentials and TLS settings turned into client options, without sockets: what each
setting selects, and the errors that name the variable to fix (never a secret)."""

from __future__ import annotations

import ssl

import pytest

from servemesh.config import Settings
from servemesh.errors import ConfigError
from servemesh.runtime import tls
from servemesh.runtime.discovery.etcd import EtcdDiscovery, parse_etcd_url
from servemesh.runtime.transport.nats_connect import connect_options
from servemesh.testing.certs import make_ca_and_cert, make_user_nkey


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_ca_and_cert(tmp_path_factory.mktemp("certs"))


@pytest.mark.parametrize(("url", "shown"), [
    ("https://alice:s3cret@etcd:2379", "https://alice:***@etcd:2379"),
    ("alice:s3cret@etcd:2379", "alice:***@etcd:2379"),
    ("nats://t0ken@nats:4222", "nats://***@nats:4222"),  # NATS reads a lone user part as a token
    ("http://etcd:2379", "http://etcd:2379"),
])
def test_redact_url_hides_passwords_and_tokens(url, shown):
    assert tls.redact_url(url) == shown


def test_etcd_credentials_come_from_the_url_or_the_settings():
    d = EtcdDiscovery("https://alice:p%40ss@etcd.example:2390")
    assert (d._user, d._password, d.tls) == ("alice", "p@ss", True)
    assert d.url == "https://alice:***@etcd.example:2390"
    d = EtcdDiscovery.from_settings(Settings(etcd="http://alice@etcd:2379", etcd_password="pw"))
    assert (d._user, d._password, d.tls) == ("alice", "pw", False)
    d = EtcdDiscovery.from_settings(Settings(etcd="http://etcd:2379", etcd_ca="/ca.pem"))
    assert d.tls  # a CA turns TLS on


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"user": "alice"}, "SERVEMESH_ETCD_PASSWORD"),
    ({"cert": "/c.pem"}, "SERVEMESH_ETCD_KEY"),
    ({"key": "/k.pem"}, "SERVEMESH_ETCD_CERT"),
])
def test_incomplete_etcd_credentials_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EtcdDiscovery("http://etcd:2379", **kwargs)


def test_a_bad_etcd_url_never_shows_its_password():
    with pytest.raises(ConfigError) as info:
        parse_etcd_url("ftp://alice:s3cret@etcd:2379")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match="SERVEMESH_ETCD"):
        EtcdDiscovery.from_settings(Settings())


def test_etcd_pem_files_are_read_at_start_with_named_errors(tmp_path, files):
    with pytest.raises(ConfigError, match="SERVEMESH_ETCD_CA"):
        EtcdDiscovery("https://etcd:2379", ca=str(tmp_path / "missing.pem"))._make_client()
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"SERVEMESH_ETCD_CERT.*not a PEM"):
        EtcdDiscovery("https://etcd:2379", cert=str(tmp_path / "junk.pem"), key=files.key)._make_client()


def test_nats_options_from_the_url_and_the_settings(files, tmp_path):
    url, options = connect_options("nats://alice:p%40ss@nats:4222", None)
    assert url == "nats://nats:4222" and options == {"user": "alice", "password": "p@ss"}
    url, options = connect_options("nats://t0ken@nats:4222", None)
    assert url == "nats://nats:4222" and options == {"token": "t0ken"}
    # the settings win over the URL
    _, options = connect_options("nats://bob:old@nats:4222", Settings(nats_user="alice", nats_password="pw"))
    assert options == {"user": "alice", "password": "pw"}
    seed, _ = make_user_nkey(tmp_path)
    _, options = connect_options("nats://nats:4222", Settings(nats_nkey=seed))
    assert options == {"nkeys_seed": seed}
    _, options = connect_options("nats://nats:4222", Settings(nats_creds=seed))  # any readable file
    assert options == {"user_credentials": seed}
    _, options = connect_options("tls://nats:4222", Settings(nats_ca=files.ca, nats_cert=files.cert,
                                                             nats_key=files.key))
    assert isinstance(options["tls"], ssl.SSLContext)
    assert options["tls"].verify_mode == ssl.CERT_REQUIRED and options["tls"].check_hostname


@pytest.mark.parametrize(("settings", "message"), [
    ({"nats_user": "alice"}, "SERVEMESH_NATS_PASSWORD"),
    ({"nats_user": "alice", "nats_password": "pw", "nats_nkey": "/seed"}, "one way to authenticate"),
    ({"nats_nkey": "/no/such/seed"}, "cannot read SERVEMESH_NATS_NKEY"),
    ({"nats_creds": "/no/such/creds"}, "cannot read SERVEMESH_NATS_CREDS"),
    ({"nats_ca": "/no/such/ca.pem"}, "SERVEMESH_NATS_CA"),
])
def test_bad_nats_settings_name_the_variable(settings, message):
    with pytest.raises(ConfigError, match=message):
        connect_options("nats://nats:4222", Settings(**settings))


def test_tcp_plane_contexts(files):
    assert tls.plane_server_context(Settings()) is None
    assert tls.plane_client_context(Settings()) is None  # no CA: TLS instances are refused
    server = tls.plane_server_context(Settings(tls_cert=files.cert, tls_key=files.key))
    assert server is not None and server.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_NONE
    mutual = tls.plane_server_context(Settings(tls_cert=files.cert, tls_key=files.key, tls_ca=files.ca,
                                               tls_mutual=True))
    assert mutual is not None and mutual.verify_mode == ssl.CERT_REQUIRED
    client = tls.plane_client_context(Settings(tls_ca=files.ca))
    assert client is not None and client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(("settings", "message"), [
    ({"tls_mutual": True}, "SERVEMESH_TLS_MUTUAL needs SERVEMESH_TLS_CERT"),
    ({"tls_key": "/k.pem"}, "SERVEMESH_TLS_KEY is set without SERVEMESH_TLS_CERT"),
    ({"tls_cert": "/no/such.pem", "tls_key": "/no/such-key.pem"}, "SERVEMESH_TLS_CERT / SERVEMESH_TLS_KEY"),
])
def test_bad_tls_settings_name_the_variable(settings, message):
    with pytest.raises(ConfigError, match=message):
        tls.plane_server_context(Settings(**settings))


def test_mutual_tls_needs_the_ca_of_the_clients(files):
    with pytest.raises(ConfigError, match="SERVEMESH_TLS_MUTUAL needs SERVEMESH_TLS_CA"):
        tls.plane_server_context(Settings(tls_cert=files.cert, tls_key=files.key, tls_mutual=True))
