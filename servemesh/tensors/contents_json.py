"""The contents JSON form of AnyServe's ``/infer/json`` and ``/infer/stream``. Pure
functions, no I/O.

Each tensor carries its elements under ``contents``, by protobuf field name::

    {"model_name": "chat", "model_version": "", "id": "",
     "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                 "contents": {"bytes_contents": ["Hello"]}}]}

- BYTES elements are JSON strings holding their UTF-8 text. A tensor with any element
  that is not valid UTF-8 carries all of its elements base64-encoded under
  ``"bytes_contents_base64"`` instead, so nothing is lost or replaced; a reader that
  does not know that key fails on its absence rather than misreading base64 as text.
- FP16 and BF16 elements are numbers under ``fp32_contents`` (protobuf has no field
  for them); every value of both fits a float32 exactly.
- NaN and infinities are written as the strings ``"NaN"``, ``"Infinity"`` and
  ``"-Infinity"``, as protobuf's JSON mapping writes them: the body stays valid JSON for
  every parser. The decoders read those strings in float tensors, and the bare ``NaN`` /
  ``Infinity`` tokens Python's ``json`` module writes.
- Decoding is as lenient as AnyServe's own examples: ``datatype`` may be left out when
  the one contents field present says it (``bytes_contents`` BYTES, ``int_contents``
  INT32, ``int64_contents`` INT64, ``uint_contents`` UINT32, ``uint64_contents``
  UINT64, ``fp32_contents`` FP32, ``fp64_contents`` FP64, ``bool_contents`` BOOL), and
  ``shape`` when the tensor is flat; ``model_name``, ``model_version`` and ``id``
  default to empty.

Encoders return a dict for the caller's JSON encoder; decoders take bytes, str or an
already parsed dict.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import SerializationError, ValidationError
from ._jsonbody import list_of_objects, load_object, no_duplicates, optional_str, tensor_name
from .datatypes import CONTENTS_FIELDS, DATATYPES, bfloat16_to_float32
from .params import check_parameters
from .tensor import InferTensor
from .types import InferRequest, InferResponse, RequestedOutput

__all__ = ["decode_contents_request", "decode_contents_response", "encode_contents_request",
           "encode_contents_response"]

BASE64_FIELD = "bytes_contents_base64"
_FIELDS = (*CONTENTS_FIELDS, BASE64_FIELD)
_DATATYPE_OF_FIELD = {"bool_contents": "BOOL", "int_contents": "INT32", "int64_contents": "INT64",
                      "uint_contents": "UINT32", "uint64_contents": "UINT64", "fp32_contents": "FP32",
                      "fp64_contents": "FP64", "bytes_contents": "BYTES", BASE64_FIELD: "BYTES"}

Body = bytes | bytearray | memoryview | str | Mapping[str, Any]

#: infinities as protobuf's JSON mapping writes them (and NaN as "NaN")
_NONFINITE: dict[float, str] = {float("inf"): "Infinity", float("-inf"): "-Infinity"}
_FROM_TEXT = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_FLOAT_TYPES = frozenset(("FP16", "FP32", "FP64", "BF16"))


def encode_contents_request(request: InferRequest) -> dict[str, Any]:
    out = _head(request.model_name, request.model_version, request.id, request.parameters)
    out["inputs"] = [encode_tensor(t) for t in request.inputs]
    if request.outputs:
        out["outputs"] = [{"name": o.name, "parameters": dict(o.parameters)} if o.parameters else {"name": o.name}
                          for o in request.outputs]
    return out


def encode_contents_response(response: InferResponse) -> dict[str, Any]:
    out = _head(response.model_name, response.model_version, response.id, response.parameters)
    out["outputs"] = [encode_tensor(t) for t in response.outputs]
    return out


def decode_contents_request(body: Body) -> InferRequest:
    obj = load_object(body, "the request body")
    request = InferRequest(optional_str(obj, "model_name"), model_version=optional_str(obj, "model_version"),
                           id=optional_str(obj, "id"), parameters=check_parameters(obj.get("parameters"), "parameters"))
    request.inputs = no_duplicates([decode_tensor(t, f"inputs[{i}].")
                                    for i, t in enumerate(list_of_objects(obj, "inputs", optional=False))], "inputs")
    for i, item in enumerate(list_of_objects(obj, "outputs", optional=True)):
        where = f"outputs[{i}]."
        request.outputs.append(RequestedOutput(tensor_name(item, where),
                                               check_parameters(item.get("parameters"), where + "parameters")))
    return request


def decode_contents_response(body: Body) -> InferResponse:
    obj = load_object(body, "the response body")
    response = InferResponse(optional_str(obj, "model_name"), model_version=optional_str(obj, "model_version"),
                             id=optional_str(obj, "id"),
                             parameters=check_parameters(obj.get("parameters"), "parameters"))
    response.outputs = no_duplicates([decode_tensor(t, f"outputs[{i}].")
                                      for i, t in enumerate(list_of_objects(obj, "outputs", optional=True))], "outputs")
    return response


def _head(model_name: str, model_version: str, id: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "id": id}
    if parameters:
        out["parameters"] = check_parameters(parameters, "parameters")
    return out


def encode_tensor(tensor: InferTensor) -> dict[str, Any]:
    """One tensor in the contents form."""
    if not isinstance(tensor, InferTensor):
        raise SerializationError(f"a message's tensors must be InferTensor objects, got {type(tensor).__name__}")
    data = tensor.data
    field = DATATYPES[tensor.datatype].contents_field
    values: list[Any]
    if isinstance(data, np.ndarray):
        if tensor.datatype == "BF16":
            data = bfloat16_to_float32(data)
        values = data.tolist()
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            values = [v if math.isfinite(v) else "NaN" if v != v else _NONFINITE[v] for v in values]
    else:
        try:
            values = [item.decode() for item in data]
        except UnicodeDecodeError:
            field = BASE64_FIELD
            values = [base64.b64encode(item).decode("ascii") for item in data]
    out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
    if tensor.parameters:
        out["parameters"] = dict(tensor.parameters)
    out["contents"] = {field: values}
    return out


def decode_tensor(obj: Mapping[str, Any], where: str) -> InferTensor:
    """One tensor from the contents form; ``where`` (``"inputs[0]."``) prefixes error fields."""
    name = tensor_name(obj, where)
    contents = obj.get("contents")
    if contents is None:
        contents = {}
    if not isinstance(contents, Mapping):
        raise ValidationError(f"{where}contents must be an object of field: values, got {contents!r:.40}",
                              field=where + "contents")
    unknown = sorted(set(contents) - set(_FIELDS))
    if unknown:
        raise ValidationError(f"{where}contents has unknown field {unknown[0]!r}; the fields are "
                              f"{', '.join(_FIELDS)}", field=where + "contents")
    present = [key for key, value in contents.items() if value]
    if len(present) > 1:
        raise ValidationError(f"tensor {name!r} has values in {' and '.join(present)}; a tensor's values go in "
                              "the one field of its datatype", field=name)
    datatype = obj.get("datatype")
    if datatype is None:
        if not present:
            raise ValidationError(f"{where}datatype is missing, and no contents field says it", field=name)
        datatype = _DATATYPE_OF_FIELD[present[0]]
    field = present[0] if present else None
    values = contents[field] if field else []
    if not isinstance(values, list):
        raise ValidationError(f"tensor {name!r}: {field} must be a list, got {type(values).__name__}", field=name)
    if field is not None and isinstance(datatype, str) and datatype in DATATYPES:
        expected = DATATYPES[datatype].contents_field
        if field != expected and not (field == BASE64_FIELD and datatype == "BYTES"):
            raise ValidationError(f"tensor {name!r} is {datatype}, so its values go in {expected}, not in {field}",
                                  field=name)
    if field == BASE64_FIELD:
        values = _from_base64(values, name)
    elif datatype in _FLOAT_TYPES and any(type(v) is str for v in values):
        values = [_nonfinite(v, name) if type(v) is str else v for v in values]
    shape = obj.get("shape")
    if shape is None:
        shape = [len(values)]
    return InferTensor(name, datatype, shape, values, check_parameters(obj.get("parameters"), where + "parameters"))


def _nonfinite(text: str, name: str) -> float:
    value = _FROM_TEXT.get(text)
    if value is None:
        raise ValidationError(f"tensor {name!r} holds the string {text!r:.40}; a float is a number, or one of "
                              '"NaN", "Infinity", "-Infinity"', field=name)
    return value


def _from_base64(values: list[Any], name: str) -> list[bytes]:
    try:
        return [base64.b64decode(value, validate=True) for value in values]
    except (binascii.Error, TypeError, ValueError):
        raise ValidationError(f"tensor {name!r}: {BASE64_FIELD} holds a value that is not base64",
                              field=name) from None
