"""TLS material from settings: ``ssl.SSLContext`` objects for the TCP request plane and
NATS, and the PEM bytes etcd's gRPC channel takes (and ``redact_url``, so no
password from a URL reaches a message).

Each backend has three file settings, ``{prefix}_ca``, ``{prefix}_cert`` and
``{prefix}_key`` (prefixes ``tls``, ``nats``, ``etcd``). Contexts speak TLS 1.2 or
newer; a client context verifies the server's certificate and host name. Nothing
is read until a context is asked for, and a file that cannot be used is a
``ConfigError`` that names its variable (never its contents). docs/security.md
says what each setting guarantees.
"""

from __future__ import annotations

import ssl
from typing import NamedTuple
from urllib.parse import urlsplit

from ..config import Settings
from ..errors import ConfigError


def redact_url(url: str) -> str:
    """``url`` without the password it may carry (``nats://user:***@host``); a user part
    alone is hidden too (``nats://***@host``: NATS reads it as a token)."""
    bare = "://" not in url
    try:
        parts = urlsplit(f"//{url}" if bare else url)
        password = parts.password
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    userinfo = "***" if password is None else f"{parts.username}:***"
    redacted = parts._replace(netloc=f"{userinfo}@{host}").geturl()
    return redacted.removeprefix("//") if bare else redacted


def variable(setting: str) -> str:
    """The environment variable of a setting: ``tls_ca`` -> ``SERVEMESH_TLS_CA``."""
    return f"SERVEMESH_{setting.upper()}"


class TlsFiles(NamedTuple):
    """The CA bundle, certificate and key paths of one backend (any may be None)."""

    prefix: str
    ca: str | None
    cert: str | None
    key: str | None

    @classmethod
    def of(cls, settings: Settings, prefix: str) -> TlsFiles:
        files = cls(prefix, getattr(settings, f"{prefix}_ca"), getattr(settings, f"{prefix}_cert"),
                    getattr(settings, f"{prefix}_key"))
        if files.key and not files.cert:
            raise ConfigError(f"{variable(prefix + '_key')} is set without {variable(prefix + '_cert')}: "
                              "set both, or neither")
        return files

    @property
    def any(self) -> bool:
        return bool(self.ca or self.cert)


def read_pem(path: str, setting: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {variable(setting)}={path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{variable(setting)}={path} is not a PEM file")
    return data


def _load_chain(ctx: ssl.SSLContext, files: TlsFiles) -> None:
    assert files.cert is not None
    try:
        # the key may also sit in the certificate file (``{prefix}_key`` unset)
        ctx.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        what = variable(files.prefix + "_cert") + (f" / {variable(files.prefix + '_key')}" if files.key else "")
        raise ConfigError(f"cannot load the certificate and key of {what} ({files.cert}): {exc}; "
                          "they must be PEM files, the key unencrypted and matching the certificate") from exc


def _load_ca(ctx: ssl.SSLContext, files: TlsFiles) -> None:
    assert files.ca is not None
    try:
        ctx.load_verify_locations(cafile=files.ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA bundle {variable(files.prefix + '_ca')}={files.ca}: {exc}") from exc


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """Verifies the server with ``files.ca`` (the system's roots when unset) and its host
    name; presents ``files.cert`` when set."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.ca:
        _load_ca(ctx, files)
    if files.cert:
        _load_chain(ctx, files)
    return ctx


def server_context(files: TlsFiles, *, mutual: bool) -> ssl.SSLContext:
    """Serves ``files.cert``; with ``mutual`` requires a client certificate signed by
    ``files.ca``."""
    if not files.cert:
        raise ConfigError(f"serving over TLS needs {variable(files.prefix + '_cert')} and "
                          f"{variable(files.prefix + '_key')}")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, files)
    if mutual:
        if not files.ca:
            raise ConfigError(f"{variable(files.prefix + '_mutual')} needs {variable(files.prefix + '_ca')}: "
                              "the CA that signs the client certificates")
        _load_ca(ctx, files)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# -- per backend ------------------------------------------------------------------------
def plane_server_context(settings: Settings) -> ssl.SSLContext | None:
    """The TCP request plane's listener context, or None to serve plain TCP."""
    files = TlsFiles.of(settings, "tls")
    if not files.cert:
        if settings.tls_mutual:
            raise ConfigError("SERVEMESH_TLS_MUTUAL needs SERVEMESH_TLS_CERT and SERVEMESH_TLS_KEY "
                              "(the listener's own certificate)")
        return None
    return server_context(files, mutual=settings.tls_mutual)


def plane_client_context(settings: Settings) -> ssl.SSLContext | None:
    """The context to call TLS instances of the TCP request plane with, or None when no
    ``tls_ca`` is set (such a process cannot call them)."""
    files = TlsFiles.of(settings, "tls")
    return client_context(files) if files.ca else None


def nats_context(settings: Settings) -> ssl.SSLContext | None:
    """The context for NATS, when any of ``nats_ca`` / ``nats_cert`` is set (else nats-py
    uses the system's roots for ``tls://`` URLs and servers that require TLS)."""
    files = TlsFiles.of(settings, "nats")
    return client_context(files) if files.any else None


class PemMaterial(NamedTuple):
    """What ``grpc.ssl_channel_credentials`` takes (None: the system's roots / no client
    certificate)."""

    root: bytes | None
    cert: bytes | None
    key: bytes | None


def pem_material(files: TlsFiles) -> PemMaterial:
    if files.cert and not files.key:
        raise ConfigError(f"{variable(files.prefix + '_cert')} needs {variable(files.prefix + '_key')} too")
    return PemMaterial(
        read_pem(files.ca, files.prefix + "_ca") if files.ca else None,
        read_pem(files.cert, files.prefix + "_cert") if files.cert else None,
        read_pem(files.key, files.prefix + "_key") if files.key else None,
    )
