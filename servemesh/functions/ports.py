"""Ports: the fields of a function's Inputs, Params and Outputs, their JSON Schemas, and
the rules they must follow (``servemesh validate``).

Rules: every port is typed and not ``Any`` (also not inside a container: ``list[Any]``);
its type has a JSON Schema; port names are unique across inputs, params and outputs.
Nested models are ports like any other.
"""

from __future__ import annotations

import inspect
import typing
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, TypeAdapter

if TYPE_CHECKING:
    from .function import Function

#: the kinds of port, in the order of the seed's metadata
KINDS = ("inputs", "params", "outputs")


def models_of(func: Function) -> dict[str, type[BaseModel]]:
    return {"inputs": func.input_model, "params": func.param_model, "outputs": func.output_model}


def metadata_of(func: Function) -> dict[str, Any]:
    """``{"name", "version", "description", "category", "inputs", "params", "outputs"}``, the last
    three JSON Schemas (nested models in ``$defs``)."""
    from .. import __version__

    meta: dict[str, Any] = {"name": func.name, "version": func.version, "description": func.description,
                            "category": func.category}
    for kind, model in models_of(func).items():
        meta[kind] = model.model_json_schema()
    meta["servemesh"] = __version__
    return meta


def port_problems(func: Function) -> list[str]:
    """Every broken port rule, each as ``file:line: kind.port: what is wrong``."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for kind, model in models_of(func).items():
        for name, field in model.model_fields.items():
            where = f"{location(model, name)}: {kind}.{name}"
            if name in seen:
                problems.append(f"{where}: the port name {name!r} is also {seen[name]}.{name}; port names must be "
                                "unique across inputs, params and outputs")
            else:
                seen[name] = kind
            annotation = field.annotation
            if annotation is None:
                problems.append(f"{where}: the port has no type; annotate it (name: str)")
                continue
            if _has_any(annotation):
                problems.append(f"{where}: the port's type is or holds Any ({_shown(annotation)}); give it a "
                                "concrete type")
                continue
            try:
                TypeAdapter(annotation).json_schema()
            except Exception as exc:
                problems.append(f"{where}: the type {_shown(annotation)} cannot be expressed in JSON Schema "
                                f"({type(exc).__name__}); use JSON types, pydantic models or media refs")
    return problems


def location(model: type, field: str | None = None) -> str:
    """``file:line`` of ``model`` (of its ``field`` when found in its source)."""
    try:
        file = inspect.getsourcefile(model) or "?"
        lines, start = inspect.getsourcelines(model)
    except (OSError, TypeError):
        return f"<{getattr(model, '__module__', '?')}.{getattr(model, '__qualname__', '?')}>"
    if field is not None:
        for offset, line in enumerate(lines):
            text = line.strip()
            if text.startswith(f"{field}:") or text.startswith(f"{field} ="):
                return f"{file}:{start + offset}"
    return f"{file}:{start}"


def _has_any(annotation: Any) -> bool:
    if annotation is Any or annotation is object:
        return True
    return any(_has_any(arg) for arg in typing.get_args(annotation) if not isinstance(arg, (str, int, float)))


def _shown(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or repr(annotation).replace("typing.", "")
