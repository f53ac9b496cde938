"""Inference parameters: a flat ``name -> bool | int | float | str`` mapping.

These are the values every form can carry: protobuf's ``InferParameter`` has bool,
int64, uint64, double and string members, and the JSON forms take the same scalars.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np

from ..errors import ValidationError

__all__ = ["ParamValue", "Parameters", "check_parameters"]

ParamValue: TypeAlias = bool | int | float | str
Parameters: TypeAlias = dict[str, ParamValue]

_LOW, _HIGH = -(2**63), 2**64 - 1


def check_parameters(params: object, where: str) -> Parameters:
    """A checked copy of ``params`` (``None`` is empty); numpy scalars become Python ones.

    ``where`` names the place in a message for the error, e.g. ``"parameters"`` or
    ``"inputs[0].parameters"``."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ValidationError(f"{where} must be an object of name: value pairs, got {type(params).__name__}",
                              field=where)
    out: Parameters = {}
    for key, value in params.items():
        if not isinstance(key, str):
            raise ValidationError(f"{where}: parameter names are strings, got {key!r}", field=where)
        out[key] = _value(value, key, where)
    return out


def _value(value: Any, key: str, where: str) -> ParamValue:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        number = int(value)
        if not _LOW <= number <= _HIGH:
            raise ValidationError(f"{where}: parameter {key!r} = {number} does not fit int64 or uint64",
                                  field=where)
        return number
    if isinstance(value, (float, np.floating)):
        return float(value)
    raise ValidationError(f"{where}: parameter {key!r} is {type(value).__name__} {value!r:.40}; "
                          "parameter values are bool, int, float or str", field=where)
