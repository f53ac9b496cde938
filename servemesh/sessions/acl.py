"""Who may touch which sessions: principals with hashed API keys and granted partitions.

The principals file (``SERVEMESH_SESSIONS_PRINCIPALS``) holds no key, only its SHA-256
(``servemesh sessions hash-key``)::

    {"principals": [
      {"name": "alice", "key_sha256": "9f86d0...", "partitions": ["$self", "shared"]},
      {"name": "ops", "key_sha256": "...", "admin": true}]}

``"$self"`` is the principal's own name: a partition key bound to the principal.
Without ``partitions`` a principal gets ``["$self"]``. An admin may touch and list
every partition. A presented key is compared with every digest, with no early exit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SELF = "$self"


def hash_key(key: str) -> str:
    """The hex SHA-256 of ``key``: what the principals file stores."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class Principal:
    name: str
    partitions: frozenset[str]
    admin: bool = False

    def may(self, partition_key: str) -> bool:
        return self.admin or partition_key in self.partitions

    def visible(self) -> list[str] | None:
        """The partitions ``list`` may show (``None``: all)."""
        return None if self.admin else sorted(self.partitions)


class Principals:
    def __init__(self, entries: Iterable[tuple[str, Principal]]) -> None:
        self._entries = [(bytes.fromhex(digest), principal) for digest, principal in entries]

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_data(cls, data: Any, where: str = "principals") -> Principals:
        items = data.get("principals") if isinstance(data, dict) else None
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{where} must be an object with a non-empty list under \"principals\"")
        entries = []
        for i, item in enumerate(items):
            try:
                name = str(item["name"])
                digest = str(item["key_sha256"]).lower()
                bytes.fromhex(digest)
                if len(digest) != 64:
                    raise ValueError("key_sha256 is not 64 hex digits")
                grants = item.get("partitions", [SELF])
                if not isinstance(grants, list):
                    raise ValueError("partitions is not a list")
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"{where}: principal #{i} is invalid ({exc}); each needs \"name\" and "
                                  "\"key_sha256\" (servemesh sessions hash-key KEY)") from exc
            partitions = frozenset(name if g == SELF else str(g) for g in grants)
            entries.append((digest, Principal(name, partitions, bool(item.get("admin", False)))))
        return cls(entries)

    @classmethod
    def from_file(cls, path: str) -> Principals:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the session principals file {path} "
                              f"(SERVEMESH_SESSIONS_PRINCIPALS): {exc}") from exc
        return cls.from_data(data, f"the session principals file {path}")

    def authenticate(self, token: str) -> Principal | None:
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found = None
        for digest, principal in self._entries:  # every entry, always: no early exit
            if hmac.compare_digest(presented, digest):
                found = principal
        return found
