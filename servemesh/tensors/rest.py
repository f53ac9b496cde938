"""The KServe Open Inference Protocol v2 REST form, with the binary tensor data
extension. Pure functions, no I/O.

A body is a JSON object, optionally followed by binary tensor data; the
``Inference-Header-Content-Length`` header gives the length of the JSON part when there
is binary data. Tensors carry their elements in JSON as ``"data"``, a flat or row-major
nested list (BYTES as strings: UTF-8 text), or as raw bytes after the JSON when their
``parameters`` hold ``"binary_data_size"``, in the order of the tensors (see
``servemesh.tensors.raw`` for the layout).

Outputs go binary when the request asks (an output's ``"binary_data": true``, or the
request's ``"binary_data_output": true`` unless that output says false), when the
caller passes ``binary=True``, and always when JSON cannot carry their elements
exactly: BYTES that are not UTF-8, and floats that are NaN or infinite.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from ..errors import SerializationError, ValidationError
from ._jsonbody import list_of_objects, load_object, no_duplicates, optional_str, required, tensor_name
from .datatypes import DATATYPES, bfloat16_to_float32
from .params import check_parameters
from .raw import array_raw, pack_bytes
from .tensor import InferTensor
from .types import InferRequest, InferResponse, RequestedOutput

__all__ = ["HEADER_LENGTH", "decode_rest_request", "decode_rest_response", "encode_rest_request",
           "encode_rest_response"]

#: the HTTP header that gives the length of the JSON part of a body with binary data
HEADER_LENGTH = "Inference-Header-Content-Length"

_encode = msgspec.json.Encoder().encode

Buffer = bytes | bytearray | memoryview


def decode_rest_request(body: Buffer, header_length: int | str | None = None, *, model_name: str = "",
                        model_version: str = "") -> InferRequest:
    """A request from a ``POST /v2/models/{model_name}[/versions/{v}]/infer`` body.

    ``header_length`` is the ``Inference-Header-Content-Length`` header's value (None
    when absent: the whole body is JSON). The model comes from the URL, so it is
    passed in. ``binary_data_size`` is taken out of the inputs' parameters."""
    head, binary = _split(body, header_length)
    obj = load_object(head, "the request JSON")
    request = InferRequest(model_name, model_version=model_version, id=optional_str(obj, "id"),
                           parameters=check_parameters(obj.get("parameters"), "parameters"))
    request.inputs = _tensors(list_of_objects(obj, "inputs", optional=False), "inputs", binary)
    for i, item in enumerate(list_of_objects(obj, "outputs", optional=True)):
        where = f"outputs[{i}]."
        request.outputs.append(RequestedOutput(tensor_name(item, where),
                                               check_parameters(item.get("parameters"), where + "parameters")))
    return request


def decode_rest_response(body: Buffer, header_length: int | str | None = None) -> InferResponse:
    """A response body as a client reads it (``binary_data_size`` is taken out)."""
    head, binary = _split(body, header_length)
    obj = load_object(head, "the response JSON")
    response = InferResponse(optional_str(obj, "model_name"), model_version=optional_str(obj, "model_version"),
                             id=optional_str(obj, "id"),
                             parameters=check_parameters(obj.get("parameters"), "parameters"))
    response.outputs = _tensors(list_of_objects(obj, "outputs", optional=True), "outputs", binary)
    return response


def encode_rest_request(request: InferRequest, *, binary: bool = False) -> tuple[bytes, int | None]:
    """A request body and its ``Inference-Header-Content-Length`` (None: no binary part).
    ``binary=True`` sends every input as binary data."""
    head: dict[str, Any] = {}
    if request.id:
        head["id"] = request.id
    if request.parameters:
        head["parameters"] = check_parameters(request.parameters, "parameters")
    chunks: list[Buffer] = []
    head["inputs"] = [_encode_tensor(t, binary, chunks) for t in request.inputs]
    if request.outputs:
        head["outputs"] = [{"name": o.name, "parameters": dict(o.parameters)} if o.parameters else {"name": o.name}
                           for o in request.outputs]
    return _join(head, chunks)


def encode_rest_response(response: InferResponse, request: InferRequest | None = None, *,
                         binary: bool = False) -> tuple[bytes, int | None]:
    """A response body and its ``Inference-Header-Content-Length`` (None: no binary part).

    ``request`` says which outputs go binary (``binary_data``, ``binary_data_output``);
    ``binary`` is the choice for outputs it says nothing about. Every output of
    ``response`` is encoded: leaving out outputs the request did not ask for is the
    server's choice, made before this."""
    wants = _binary_choice(request, binary)
    head: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version:
        head["model_version"] = response.model_version
    if response.id:
        head["id"] = response.id
    if response.parameters:
        head["parameters"] = check_parameters(response.parameters, "parameters")
    chunks: list[Buffer] = []
    head["outputs"] = [_encode_tensor(t, wants(t.name), chunks) for t in response.outputs]
    return _join(head, chunks)


def _split(body: Buffer, header_length: int | str | None) -> tuple[memoryview, memoryview]:
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view):]
    try:
        length = int(header_length)
    except (TypeError, ValueError):
        raise ValidationError(f"{HEADER_LENGTH} must be an integer, got {header_length!r:.40}",
                              field=HEADER_LENGTH) from None
    if not 0 < length <= len(view):
        raise ValidationError(f"{HEADER_LENGTH} is {length}, but the body has {len(view)} bytes",
                              field=HEADER_LENGTH)
    return view[:length], view[length:]


def _tensors(items: list[Mapping[str, Any]], key: str, binary: memoryview) -> list[InferTensor]:
    tensors: list[InferTensor] = []
    offset = 0
    for i, item in enumerate(items):
        where = f"{key}[{i}]."
        name = tensor_name(item, where)
        datatype = required(item, "datatype", where)
        shape = required(item, "shape", where)
        params = check_parameters(item.get("parameters"), where + "parameters")
        size = params.pop("binary_data_size", None)
        if size is None:
            if "data" not in item:
                raise ValidationError(f"tensor {name!r} has neither data nor a binary_data_size parameter",
                                      field=name)
            tensors.append(InferTensor(name, datatype, shape, item["data"], params))
            continue
        if "data" in item:
            raise ValidationError(f"tensor {name!r} has both data and binary_data_size; give one", field=name)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValidationError(f"tensor {name!r}: binary_data_size must be a byte count, got {size!r}",
                                  field=name)
        if offset + size > len(binary):
            raise ValidationError(
                f"tensor {name!r} needs {size} bytes of binary data from offset {offset}, but the binary part "
                f"has {len(binary)} bytes" + ("" if len(binary) else f" (is the {HEADER_LENGTH} header missing?)"),
                field=name)
        tensors.append(InferTensor.from_raw(name, datatype, shape, binary[offset:offset + size], params))
        offset += size
    if offset != len(binary):
        raise ValidationError(f"the body has {len(binary)} bytes of binary data, but its tensors' "
                              f"binary_data_size add up to {offset}", field="body")
    return no_duplicates(tensors, key)


def _binary_choice(request: InferRequest | None, default: bool) -> Callable[[str], bool]:
    if request is None:
        return lambda name: default
    everything = request.parameters.get("binary_data_output")
    fallback = everything if isinstance(everything, bool) else default
    chosen = {o.name: o.parameters["binary_data"] for o in request.outputs
              if isinstance(o.parameters.get("binary_data"), bool)}
    return lambda name: bool(chosen.get(name, fallback))


def _encode_tensor(tensor: InferTensor, binary: bool, chunks: list[Buffer]) -> dict[str, Any]:
    if not isinstance(tensor, InferTensor):
        raise SerializationError(f"a message's tensors must be InferTensor objects, got {type(tensor).__name__}")
    out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
    params = dict(tensor.parameters)
    values = None if binary else _json_values(tensor)
    if values is None:
        data = tensor.data
        chunk: Buffer
        if isinstance(data, np.ndarray):
            chunk = array_raw(data, DATATYPES[tensor.datatype])
        else:
            chunk = pack_bytes(data, tensor.name)
        params["binary_data_size"] = len(chunk)
        chunks.append(chunk)
    if params:
        out["parameters"] = params
    if values is not None:
        out["data"] = values
    return out


def _json_values(tensor: InferTensor) -> list[Any] | None:
    """The elements as JSON values, or None when JSON cannot carry them exactly."""
    data = tensor.data
    if not isinstance(data, np.ndarray):
        try:
            return [item.decode() for item in data]
        except UnicodeDecodeError:
            return None
    if tensor.datatype == "BF16":
        data = bfloat16_to_float32(data)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        return None
    values: list[Any] = data.tolist()
    return values


def _join(head: dict[str, Any], chunks: Sequence[Buffer]) -> tuple[bytes, int | None]:
    text = _encode(head)
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)
