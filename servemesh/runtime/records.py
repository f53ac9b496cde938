"""Instance records as stored in discovery, their keys, and capability matching."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from ..errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{kind} name {name!r} is invalid: use letters, digits, '_' and '-' only"
        )
    return name


def split_path(path: str) -> tuple[str, str, str]:
    """``"ns.component.endpoint"`` → its three checked parts."""
    parts = path.split(".") if isinstance(path, str) else []
    if len(parts) != 3:
        raise ConfigError(f"endpoint path {path!r} must look like 'namespace.component.endpoint'")
    ns, comp, ep = parts
    return check_name("namespace", ns), check_name("component", comp), check_name("endpoint", ep)


def instance_prefix(namespace: str, component: str | None = None, endpoint: str | None = None) -> str:
    prefix = f"instances/{namespace}/"
    if component is not None:
        prefix += f"{component}/"
        if endpoint is not None:
            prefix += f"{endpoint}:"
    return prefix


class InstanceRecord(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    """One live process serving one endpoint; the JSON value of its discovery key.
    (``dict=True``: room for ``path``, worked out once.)"""

    component: str
    endpoint: str
    namespace: str
    instance_id: int
    transport: dict[str, str]
    capabilities: dict[str, Any] = {}
    schema: dict[str, Any] | None = None

    @functools.cached_property
    def path(self) -> str:
        return f"{self.namespace}.{self.component}.{self.endpoint}"

    @property
    def key(self) -> str:
        return f"{instance_prefix(self.namespace, self.component, self.endpoint)}{self.instance_id:x}"

    @property
    def address(self) -> str:
        """The transport address, for messages."""
        return ", ".join(f"{k}={v}" for k, v in self.transport.items())

    def to_json(self) -> bytes:
        return json.dumps(msgspec.to_builtins(self), indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> InstanceRecord:
        return msgspec.json.decode(data, type=cls)


def _coerce_equal(have: Any, want: Any) -> bool:
    if have == want and type(have) is not bool and type(want) is not bool:
        return True
    if isinstance(have, bool) or isinstance(want, bool):
        return _as_bool(have) is not None and _as_bool(have) == _as_bool(want)
    if isinstance(have, str) and isinstance(want, str):
        return have == want
    try:
        return float(have) == float(want)
    except (TypeError, ValueError):
        return str(have) == str(want)


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    return None


def capabilities_match(labels: Mapping[str, Any], wanted: Mapping[str, Any] | None) -> bool:
    """Subset match with type coercion: ``{"gpus": "2"}`` matches ``{"gpus": 2, ...}``.

    A list label matches a wanted value that is one of its elements."""
    if not wanted:
        return True
    for key, want in wanted.items():
        if key not in labels:
            return False
        have = labels[key]
        if isinstance(have, (list, tuple)) and not isinstance(want, (list, tuple)):
            if not any(_coerce_equal(h, want) for h in have):
                return False
        elif not _coerce_equal(have, want):
            return False
    return True
