"""Reading JSON bodies with errors that say where: shared by the two JSON codecs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import msgspec

from ..errors import ValidationError
from .tensor import InferTensor

_decode = msgspec.json.Decoder().decode


def load_object(body: bytes | bytearray | memoryview | str | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    """``body`` parsed as a JSON object (a mapping is taken as already parsed).

    ``NaN``, ``Infinity`` and ``-Infinity`` are read too, as Python's json module
    writes them."""
    if isinstance(body, Mapping):
        return body
    try:
        value = _decode(body)
    except (msgspec.DecodeError, TypeError) as exc:
        try:  # the slow path, for the non-standard NaN / Infinity tokens
            value = json.loads(body if isinstance(body, str) else bytes(body))
        except (ValueError, TypeError):
            raise ValidationError(f"{what} is not valid JSON: {exc}", field="body") from None
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be a JSON object, got {type(value).__name__}", field="body")
    return value


def optional_str(obj: Mapping[str, Any], key: str, where: str = "") -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError(f"{where}{key} must be a string, got {value!r:.40}", field=where + key)
    return value


def required(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj or obj[key] is None:
        raise ValidationError(f"{where}{key} is missing", field=where + key)
    return obj[key]


def list_of_objects(obj: Mapping[str, Any], key: str, *, optional: bool) -> list[Mapping[str, Any]]:
    value = obj.get(key)
    if value is None:
        if optional:
            return []
        raise ValidationError(f"{key} is missing: give a list of tensors", field=key)
    if not isinstance(value, list):
        raise ValidationError(f"{key} must be a list, got {type(value).__name__}", field=key)
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise ValidationError(f"{key}[{i}] must be an object, got {type(item).__name__}", field=f"{key}[{i}]")
    return value


def tensor_name(obj: Mapping[str, Any], where: str) -> str:
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ValidationError(f"{where}name must be a non-empty string, got {name!r:.40}", field=where + "name")
    return name


def no_duplicates(tensors: list[InferTensor], key: str) -> list[InferTensor]:
    seen: set[str] = set()
    for tensor in tensors:
        if tensor.name in seen:
            raise ValidationError(f"{key} has two tensors named {tensor.name!r}", field=tensor.name)
        seen.add(tensor.name)
    return tensors
