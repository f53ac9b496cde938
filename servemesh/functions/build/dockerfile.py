"""The Dockerfile instructions the builder honours without a daemon, parsed into a plan.

Honoured: ``FROM``, ``WORKDIR``, ``COPY``, ``ENV``, ``CMD``, ``ENTRYPOINT``, ``EXPOSE``,
``LABEL``, ``USER``, ``ARG`` (defaults only). Anything else (``RUN``, ``ADD`` of URLs, ...)
is refused with a ``BuildError`` naming the line: running commands needs a container
runtime, and this builder has none. Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex

from ...errors import BuildError

HONOURED = ("FROM", "WORKDIR", "COPY", "ENV", "CMD", "ENTRYPOINT", "EXPOSE", "LABEL", "USER", "ARG")
_ARG = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


@dataclasses.dataclass(frozen=True)
class Instruction:
    line: int
    op: str
    args: str

    def where(self, file: str) -> str:
        return f"{file}:{self.line}"


@dataclasses.dataclass
class Plan:
    """What a Dockerfile asks for, in order. ``steps`` are the layer-making ``COPY``s with the
    ``WORKDIR`` in force: ``(instruction, sources, destination)``."""

    base: str | None = None
    workdir: str = "/"
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    exposed: list[str] = dataclasses.field(default_factory=list)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    user: str | None = None
    copies: list[tuple[Instruction, list[str], str]] = dataclasses.field(default_factory=list)


def instructions(text: str) -> list[Instruction]:
    """Logical lines (continuations joined, comments dropped), each with its first line number."""
    out: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        op, _, args = full.partition(" ")
        out.append(Instruction(start, op.upper(), args.strip()))
    if pending:
        op, _, args = pending.strip().partition(" ")
        out.append(Instruction(start, op.upper(), args.strip()))
    return out


def plan(text: str, file: str = "Dockerfile") -> Plan:
    """The plan of a Dockerfile; ``BuildError`` naming the first line it cannot honour."""
    result = Plan()
    args: dict[str, str] = {}
    seen_from = False
    for ins in instructions(text):
        where = ins.where(file)
        if ins.op not in HONOURED:
            hint = (" (running commands needs a container runtime; put what it installs in requirements.txt, "
                    "which the builder installs into the dependency layer, or bake it into the base image)"
                    if ins.op == "RUN" else "")
            raise BuildError(f"{where}: {ins.op} cannot be honoured by the daemonless builder{hint}; it honours "
                             f"{', '.join(HONOURED)}")
        value = _substitute(ins.args, {**args, **result.env})
        if ins.op == "ARG":
            name, _, default = value.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif ins.op == "FROM":
            if seen_from:
                raise BuildError(f"{where}: multi-stage builds (a second FROM) cannot be honoured")
            seen_from = True
            parts = value.split()
            if not parts or (len(parts) > 1 and parts[1].upper() != "AS"):
                raise BuildError(f"{where}: FROM needs one image reference")
            result.base = parts[0]
        elif not seen_from:
            raise BuildError(f"{where}: {ins.op} before FROM")
        elif ins.op == "WORKDIR":
            result.workdir = _join(result.workdir, value)
        elif ins.op == "ENV":
            result.env.update(_pairs(value, where))
        elif ins.op == "LABEL":
            result.labels.update(_pairs(value, where))
        elif ins.op in ("CMD", "ENTRYPOINT"):
            command = _command(value, where)
            if ins.op == "CMD":
                result.cmd = command
            else:
                result.entrypoint = command
        elif ins.op == "EXPOSE":
            result.exposed += [p if "/" in p else f"{p}/tcp" for p in value.split()]
        elif ins.op == "USER":
            result.user = value
        elif ins.op == "COPY":
            words = _words(value, where)
            if any(w.startswith("--") for w in words):
                raise BuildError(f"{where}: COPY options ({' '.join(w for w in words if w.startswith('--'))}) "
                                 "cannot be honoured")
            if len(words) < 2:
                raise BuildError(f"{where}: COPY needs a source and a destination")
            dest = words[-1]
            target = _join(result.workdir, dest)
            if dest.endswith("/") or dest in (".", "./"):
                target = target.rstrip("/") + "/"
            result.copies.append((ins, words[:-1], target))
    if not seen_from:
        raise BuildError(f"{file}: no FROM line")
    return result


def _substitute(value: str, names: dict[str, str]) -> str:
    return _ARG.sub(lambda m: names.get(m.group(1), m.group(0)), value)


def _join(workdir: str, path: str) -> str:
    if path.startswith("/"):
        return path.rstrip("/") or "/"
    base = workdir.rstrip("/")
    clean = path.rstrip("/")
    if clean in ("", "."):
        return base or "/"
    return f"{base}/{clean.removeprefix('./')}"


def _words(value: str, where: str) -> list[str]:
    if value.startswith("["):
        return _json_list(value, where)
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise BuildError(f"{where}: {exc}") from None


def _json_list(value: str, where: str) -> list[str]:
    try:
        items = json.loads(value)
    except ValueError as exc:
        raise BuildError(f"{where}: not a JSON array: {exc}") from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise BuildError(f"{where}: the JSON form is an array of strings")
    return items


def _command(value: str, where: str) -> list[str]:
    if value.startswith("["):
        return _json_list(value, where)
    return ["/bin/sh", "-c", value]


def _pairs(value: str, where: str) -> dict[str, str]:
    words = _words(value, where)
    if len(words) >= 2 and "=" not in words[0]:  # the legacy form: ENV KEY value with spaces
        return {words[0]: " ".join(words[1:])}
    out = {}
    for word in words:
        key, eq, val = word.partition("=")
        if not eq:
            raise BuildError(f"{where}: expected KEY=value, got {word!r}")
        out[key] = val
    return out
