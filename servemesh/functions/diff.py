"""What changed between two versions' metadata, and whether the change breaks consumers.

Breaking: a port removed, or a port whose type changed (its schema, nested models
resolved, descriptions and defaults ignored). Such a change needs a new major version.
Added ports are listed too but break nothing.
"""

from __future__ import annotations

import json
from typing import Any

from .ports import KINDS
from .semver import major

_NOISE = frozenset({"title", "description", "default", "examples"})


def changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(breaking, other)``: human-readable lines, ``- inputs.text: removed``."""
    breaking: list[str] = []
    other: list[str] = []
    for kind in KINDS:
        before = _ports(old.get(kind) or {})
        after = _ports(new.get(kind) or {})
        for name in sorted(set(before) - set(after)):
            breaking.append(f"- {kind}.{name}: removed ({_text(before[name])})")
        for name in sorted(set(before) & set(after)):
            if before[name] != after[name]:
                breaking.append(f"~ {kind}.{name}: type changed from {_text(before[name])} to {_text(after[name])}")
        for name in sorted(set(after) - set(before)):
            other.append(f"+ {kind}.{name}: added ({_text(after[name])})")
    return breaking, other


def needs_major(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The breaking changes from ``old`` to ``new`` when ``new`` keeps ``old``'s major version."""
    breaking, _ = changes(old, new)
    if not breaking:
        return []
    try:
        if major(str(new.get("version"))) > major(str(old.get("version"))):
            return []
    except ValueError:
        pass
    return breaking


def _ports(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.get("$defs", {})
    return {name: _clean(_resolve(prop, defs, 0)) for name, prop in (schema.get("properties") or {}).items()}


def _resolve(node: Any, defs: dict[str, Any], depth: int) -> Any:
    if depth > 32:
        return node
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _resolve(defs.get(ref.rsplit("/", 1)[1], {}), defs, depth + 1)
        return {k: _resolve(v, defs, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs, depth + 1) for v in node]
    return node


def _clean(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _clean(v) for k, v in sorted(node.items()) if k not in _NOISE}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def _text(schema: Any) -> str:
    text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= 120 else text[:117] + "..."
