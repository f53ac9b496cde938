"""Throw-away certificate authorities and certificates (needs ``cryptography``), and NATS
user NKeys (needs ``nkeys``), for tests.

::

    files = make_ca_and_cert(tmp_path, hosts=["127.0.0.1", "localhost"])
    files.ca, files.cert, files.key          # PEM paths

    ca = CertAuthority(tmp_path)             # more certificates signed by the same CA
    client = ca.issue("client")

    seed_file, public_key = make_user_nkey(tmp_path)   # nats-server: {"nkey": public_key}

Every certificate carries both the serverAuth and clientAuth key usages, so one
certificate can serve and call (mutual TLS). Hosts that parse as IP addresses
become IP SANs (``127.0.0.1``), the others DNS SANs. Keys are EC P-256, unencrypted.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def _crypto() -> Any:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:  # a dev dependency only
        raise ConfigError("test certificates need the cryptography package: "
                          "pip install cryptography (or servemesh[dev])") from exc
    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertFiles:
    """PEM files: the CA that signed ``cert``, the certificate and its private key."""

    ca: str
    cert: str
    key: str


def _write_key(path: Path, key: Any) -> None:
    _, _, serialization, *_ = _crypto()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _san(hosts: Iterable[str]) -> list[Any]:
    x509 = _crypto()[0]
    names: list[Any] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


class CertAuthority:
    """A self-signed CA written to ``directory/{name}-ca.pem`` that issues certificates."""

    def __init__(self, directory: str | Path, name: str = "servemesh-test") -> None:
        x509, hashes, serialization, ec, _, NameOID = _crypto()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.path = self.directory / f"{name}-ca.pem"
        self.path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, hosts: Iterable[str] = ("127.0.0.1", "localhost")) -> CertFiles:
        """A certificate for ``common_name`` (also the etcd user name under client-cert
        auth) valid for ``hosts``, written next to the CA."""
        x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID = _crypto()
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True,
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                           critical=False)
        )
        sans = _san(hosts)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path = self.directory / f"{self.name}-{common_name}.pem"
        key_path = self.directory / f"{self.name}-{common_name}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return CertFiles(ca=str(self.path), cert=str(cert_path), key=str(key_path))


def make_ca_and_cert(directory: str | Path, hosts: Iterable[str] = ("127.0.0.1", "localhost"),
                     name: str = "server") -> CertFiles:
    """A new CA and one certificate it signed for ``hosts``, as PEM files in ``directory``."""
    return CertAuthority(directory).issue(name, hosts)


def make_user_nkey(directory: str | Path, name: str = "user") -> tuple[str, str]:
    """A new NATS user NKey: the path of its seed file (``SERVEMESH_NATS_NKEY``) and its
    public key (``{"nkey": ...}`` in nats-server's users)."""
    try:
        import nkeys
    except ImportError as exc:
        raise ConfigError("NKeys need the nkeys package: pip install 'nats-py[nkeys]'") from exc
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(seed).public_key.decode()
    path = Path(directory) / f"{name}.nk"
    path.write_bytes(seed + b"\n")
    path.chmod(0o600)
    return str(path), public


class NatsOperator:
    """A NATS operator, one account and the users of that account, as JWTs (the
    decentralised authentication that ``.creds`` files belong to), so tests can run
    nats-server in operator mode: ``NatsServer(operator=...)``.

    ``user(name, allow=...)`` writes a ``.creds`` file (the user's JWT and NKey seed) for
    ``SERVEMESH_NATS_CREDS``; ``allow`` are the subjects it may publish and subscribe to
    (all of them when ``None``)."""

    def __init__(self, directory: str | Path, name: str = "op") -> None:
        try:
            import nkeys
        except ImportError as exc:
            raise ConfigError("NATS operator mode needs the nkeys package: pip install 'nats-py[nkeys]'") from exc
        self._nkeys = nkeys
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._operator = self._key(nkeys.PREFIX_BYTE_OPERATOR)
        self._account = self._key(nkeys.PREFIX_BYTE_ACCOUNT)
        self.account_public = self._account.public_key.decode()
        # nats-server's own account (JetStream needs one in operator mode)
        self.system_public = self._key(nkeys.PREFIX_BYTE_ACCOUNT).public_key.decode()
        op_public = self._operator.public_key.decode()
        self.operator_jwt = self.directory / f"{name}.jwt"
        self.operator_jwt.write_text(self._jwt(self._operator, op_public, name, {
            "type": "operator", "version": 2, "system_account": self.system_public}))
        unlimited = {k: -1 for k in ("subs", "data", "payload", "imports", "exports", "conn", "leaf",
                                     "mem_storage", "disk_storage", "streams", "consumer")}
        self.account_jwt = self._jwt(self._operator, self.account_public, "servemesh",
                                     {"type": "account", "version": 2, "limits": {**unlimited, "wildcards": True}})
        self.system_jwt = self._jwt(self._operator, self.system_public, "SYS", {
            "type": "account", "version": 2,
            "limits": {k: -1 for k in ("subs", "data", "payload", "imports", "exports", "conn", "leaf")}})

    def _key(self, prefix: int) -> Any:
        nkeys = self._nkeys
        return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))

    def _jwt(self, issuer: Any, subject: str, name: str, nats: dict[str, Any]) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        claims = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name, "sub": subject,
                  "nats": nats}
        digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
        claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
        header = b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
        body = b64(json.dumps(claims).encode())
        signature = b64(issuer.sign(f"{header}.{body}".encode()))
        return f"{header}.{body}.{signature}"

    def config_lines(self) -> list[str]:
        """nats-server configuration for this operator, its account preloaded."""
        return [f"operator: {json.dumps(str(self.operator_jwt))}", f"system_account: {self.system_public}",
                "resolver: MEMORY",
                f"resolver_preload: {{ {self.account_public}: {json.dumps(self.account_jwt)}, "
                f"{self.system_public}: {json.dumps(self.system_jwt)} }}"]

    def user(self, name: str, allow: list[str] | None = None) -> str:
        """Write ``{name}.creds`` for a new user of the account; returns its path."""
        key = self._key(self._nkeys.PREFIX_BYTE_USER)
        nats: dict[str, Any] = {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}
        if allow is not None:
            nats["pub"] = {"allow": allow}
            nats["sub"] = {"allow": allow}
        jwt = self._jwt(self._account, key.public_key.decode(), name, nats)
        path = self.directory / f"{name}.creds"
        path.write_text(
            f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{key.seed.decode()}\n------END USER NKEY SEED------\n")
        path.chmod(0o600)
        return str(path)
