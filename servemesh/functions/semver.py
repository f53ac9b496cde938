"""Semantic versions (``MAJOR.MINOR.PATCH[-pre][+build]``): parse, check, order."""

from __future__ import annotations

import re

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                     r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
                     r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$")


def is_semver(text: object) -> bool:
    return isinstance(text, str) and _SEMVER.match(text) is not None


def parse(text: str) -> tuple[int, int, int, tuple[tuple[int, int | str], ...]]:
    """A sort key: ``1.0.0-rc.1 < 1.0.0``. ``ValueError`` for text that is not semver."""
    m = _SEMVER.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    pre = m.group(4)
    # a release sorts after all its pre-releases
    key: tuple[tuple[int, int | str], ...] = ((1, 0),) if pre is None else tuple(
        (0, int(p)) if p.isdigit() else (0, p) for p in pre.split("."))
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), key


def major(text: str) -> int:
    return parse(text)[0]


def tag_of(version: str) -> str:
    """An image tag for ``version`` (``+`` is not allowed in tags)."""
    return version.replace("+", "_")
