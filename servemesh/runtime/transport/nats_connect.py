"""Opening the NATS connection: credentials, TLS, and errors that say what to fix.

The first connection is tried once, for ``connect_timeout``: refused credentials or
certificates fail at once with a ``ConfigError``; once connected, nats-py
reconnects for as long as the process runs (``docs/security.md``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from ...config import Settings
from ...errors import ConfigError
from .. import tls
from ..tasks import within

log = logging.getLogger("servemesh.transport.nats")
#: nats-server's asynchronous answer to a SUB or PUB this user may not make
_DENIED = re.compile(r'permissions violation for (subscription|publish) to "?([^"\s]+)', re.IGNORECASE)


def connect_options(url: str, settings: Settings | None) -> tuple[str, dict[str, Any]]:
    """nats-py's credential and TLS options from settings and the URL (docs/security.md);
    returns the URL without its user part (its credentials move into the options)."""
    options: dict[str, Any] = {}
    parts = urlsplit(url)
    if parts.username is not None:  # nats://user:password@host, or nats://token@host
        url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        if parts.password is None:
            options["token"] = unquote(parts.username)
        else:
            options["user"], options["password"] = unquote(parts.username), unquote(parts.password)
    if settings is None:
        return url, options
    s = settings
    chosen = [name for name, value in (("SERVEMESH_NATS_CREDS", s.nats_creds), ("SERVEMESH_NATS_NKEY", s.nats_nkey),
                                       ("SERVEMESH_NATS_USER", s.nats_user or s.nats_password)) if value]
    if len(chosen) > 1:
        raise ConfigError(f"set one way to authenticate to NATS, not {' and '.join(chosen)}")
    if chosen:
        options.clear()  # the settings win over the URL
    for setting, path in (("nats_creds", s.nats_creds), ("nats_nkey", s.nats_nkey)):
        if path:
            try:
                import nkeys  # noqa: F401  (nats-py needs it to sign the server's nonce)
            except ImportError as exc:
                raise ConfigError(f"{tls.variable(setting)} needs the nkeys package: "
                                  "pip install 'nats-py[nkeys]'") from exc
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"cannot read {tls.variable(setting)}={path}: {exc.strerror or exc}") from exc
    if s.nats_creds:
        options["user_credentials"] = s.nats_creds
    if s.nats_nkey:
        options["nkeys_seed"] = s.nats_nkey
    if s.nats_user or s.nats_password:
        if not (s.nats_user and s.nats_password):
            raise ConfigError("NATS user authentication needs both SERVEMESH_NATS_USER and SERVEMESH_NATS_PASSWORD")
        options["user"], options["password"] = s.nats_user, s.nats_password
    context = tls.nats_context(s)
    if context is not None:
        options["tls"] = context
    return url, options


def _connect_hint(exc: BaseException, tls_used: bool) -> str:
    """What to do about a failed first connection."""
    import nats.errors

    if isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower():
        return ("NATS refused the credentials: check SERVEMESH_NATS_USER / SERVEMESH_NATS_PASSWORD, "
                "SERVEMESH_NATS_NKEY or SERVEMESH_NATS_CREDS (or the user:password in SERVEMESH_NATS)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ("NATS's certificate is not trusted: set SERVEMESH_NATS_CA to the CA that signed it; its names "
                "(SAN) must include the host in SERVEMESH_NATS")
    if isinstance(exc, ssl.SSLError) or (tls_used and isinstance(exc, (ConnectionResetError, BrokenPipeError))):
        # TLS 1.3: a refused client certificate often shows as the server hanging up
        return ("the TLS handshake with NATS failed or the server hung up after it: if the server verifies "
                "clients, set SERVEMESH_NATS_CERT and SERVEMESH_NATS_KEY to a certificate signed by its ca_file")
    return "start it with `servemesh up` or point SERVEMESH_NATS at a running nats-server"


def _checked(check: Callable[[], None], value: str) -> str:
    check()
    return value


def denied(exc: BaseException) -> tuple[str, str] | None:
    """("subscribe" | "publish", subject) when ``exc`` is nats-server refusing one."""
    found = _DENIED.search(str(exc))
    if found is None:
        return None
    return ("subscribe" if found.group(1).lower() == "subscription" else "publish"), found.group(2)


async def connect(url: str, name: str, timeout: float, *, on_lost: Callable[[], None] | None = None,
                  on_back: Callable[[], None] | None = None, settings: Settings | None = None,
                  on_denied: Callable[[str, str], None] | None = None) -> Any:
    """A connection that reconnects forever once up; the first connection is tried for
    ``timeout`` seconds, and refused credentials or certificates fail it at once.
    ``on_denied(action, subject)`` hears of each subscribe or publish the server refused."""
    import nats.aio.client

    shown = tls.redact_url(url)
    url, options = connect_options(url, settings)
    up = False
    first_error: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        if not up:
            first_error[:] = [exc]
            return
        refused = denied(exc)
        if refused is not None and on_denied is not None:
            on_denied(*refused)
        log.warning("nats connection %s: %r", name, exc)

    async def on_disconnect() -> None:
        if not up:
            return
        log.warning("nats connection %s lost; reconnecting", name)
        if on_lost is not None:
            on_lost()

    async def on_reconnect() -> None:
        log.info("nats connection %s re-established", name)
        if on_back is not None:
            on_back()

    nc = nats.aio.client.Client()
    # nats-py upgrades to TLS only when the server asks for it: where TLS is expected,
    # a server that does not ask is refused before a password or token is sent
    wants_tls = urlsplit(url).scheme == "tls" or "tls" in options

    def no_plaintext() -> None:
        if wants_tls and not nc._server_info.get("tls_required"):
            raise ConfigError(f"NATS at {shown} does not use TLS, though a tls:// URL or SERVEMESH_NATS_CA / "
                              "SERVEMESH_NATS_CERT asks for it: enable TLS on the server (a tls block in its "
                              "configuration); nothing secret was sent")

    for key in ("password", "token"):
        if wants_tls and options.get(key) is not None:
            options[key] = functools.partial(_checked, no_plaintext, options[key])
    try:
        # no reconnecting during the first connection: nats-py would retry refused
        # credentials forever; it is turned on below, once connected
        options.update(name=name, connect_timeout=timeout, error_cb=on_error, disconnected_cb=on_disconnect,
                       reconnected_cb=on_reconnect, max_reconnect_attempts=-1, allow_reconnect=False)
        await within(nc.connect(url, **options), timeout)
        no_plaintext()
    except Exception as exc:
        with contextlib.suppress(Exception):
            if nc.is_connected:
                await within(nc.close(), timeout)
            elif nc._transport is not None:  # nats-py leaves it open, and close() may wait forever
                nc._transport.close()
        if isinstance(exc, ConfigError):
            raise
        cause = first_error[0] if isinstance(exc, TimeoutError) and first_error else exc
        tls_used = wants_tls or bool(nc._server_info.get("tls_required"))
        raise ConfigError(f"cannot connect to NATS at {shown}: {_connect_hint(cause, tls_used)} ({cause!r})") from exc
    up = True
    nc.options["allow_reconnect"] = True
    return nc
