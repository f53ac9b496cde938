"""API keys: ``Authorization: Bearer <key>`` on every HTTP surface and the system port.

Keys come from ``SERVEMESH_API_KEY`` (comma-separated) and ``SERVEMESH_API_KEY_FILE``
(one per line). A presented key is hashed and compared with the digest of every
configured key, with no early exit: the time taken says nothing about which key,
or how much of one, matched. Probes stay open; ``/metrics`` too with
``SERVEMESH_METRICS_PUBLIC``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ConfigError
from .shape import Shape, plain_shape, send_error

if TYPE_CHECKING:
    from ..config import Settings

#: paths every prober may reach without a key
PROBES = frozenset({"/health", "/live", "/ready"})


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class ApiKeys:
    """The configured keys (none: every request is let in)."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(k.encode("utf-8")) for k in keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        keys: list[str] = []
        if settings.api_key is not None:
            keys += [k.strip() for k in settings.api_key.split(",") if k.strip()]
            if not keys:
                raise ConfigError("SERVEMESH_API_KEY is set but holds no key (comma-separated keys)")
        if settings.api_key_file is not None:
            path = Path(settings.api_key_file)
            try:
                lines = path.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read the API key file {path} (SERVEMESH_API_KEY_FILE): {exc}") from exc
            found = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
            if not found:
                raise ConfigError(f"the API key file {path} (SERVEMESH_API_KEY_FILE) holds no key: "
                                  "one key per line")
            keys += found
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, authorization: bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries one of the keys."""
        scheme, _, token = (authorization or b"").partition(b" ")
        presented = _digest(token)
        matched = False
        for expected in self._digests:  # every key, always: no early exit
            matched |= hmac.compare_digest(presented, expected)
        return matched and scheme.lower() == b"bearer" and bool(token)


class AuthMiddleware:
    """Refuses requests without a valid key (401 in ``shape``, ``WWW-Authenticate: Bearer``),
    except to ``open_paths``."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, shape: Shape = plain_shape,
                 open_paths: frozenset[str] = PROBES) -> None:
        self.app = app
        self.keys = keys
        self.shape = shape
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.keys.enabled or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        if self.keys.check(header):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        message = ("an API key is required: send `Authorization: Bearer <key>`" if header is None
                   else "the API key is not valid")
        await send_error(send, self.shape, 401, message, "invalid_request_error", "invalid_api_key",
                         headers={"WWW-Authenticate": "Bearer"})


def open_paths(metrics_public: bool) -> frozenset[str]:
    return PROBES | {"/metrics"} if metrics_public else PROBES
