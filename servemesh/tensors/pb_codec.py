"""The protobuf form: ``inference.ModelInferRequest`` / ``ModelInferResponse`` messages of
``servemesh.tensors.proto``. Pure functions, no I/O.

protobuf is imported by these functions, never when this module is: code that only
speaks JSON does not load it.

A message carries elements either typed, in each tensor's ``contents`` field for its
datatype, or raw, in ``raw_input_contents`` / ``raw_output_contents`` (one entry per
tensor, in order; layout in ``servemesh.tensors.raw``), never both. protobuf has no
field for FP16 and BF16, so ``to_proto`` writes a message with either of them raw.
``from_proto`` reads both ways, and FP16 / BF16 in ``fp32_contents`` too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from ..errors import RemoteError, SerializationError, ValidationError
from .datatypes import DATATYPES, info
from .params import Parameters, ParamValue, check_parameters
from .tensor import InferTensor
from .types import InferRequest, InferResponse, RequestedOutput

if TYPE_CHECKING:
    from .proto import grpc_predict_v2_pb2 as pb2

__all__ = ["from_proto", "to_proto"]

_PB2: Any = None


def _pb2() -> Any:
    """The generated messages module, imported on first use (and then kept)."""
    global _PB2
    if _PB2 is None:
        from .proto import grpc_predict_v2_pb2

        _PB2 = grpc_predict_v2_pb2
    return _PB2

_NAMES = ("inference.ModelInferRequest", "inference.ModelInferResponse", "inference.ModelStreamInferResponse")
_RAW_ONLY = frozenset({"FP16", "BF16"})
_FIELD_DTYPES = {"bool_contents": np.bool_, "int_contents": np.int32, "int64_contents": np.int64,
                 "uint_contents": np.uint32, "uint64_contents": np.uint64, "fp32_contents": np.float32,
                 "fp64_contents": np.float64}
_INT64_MAX = 2**63 - 1


@overload
def to_proto(message: InferRequest, *, raw: bool = False) -> pb2.ModelInferRequest: ...
@overload
def to_proto(message: InferResponse, *, raw: bool = False) -> pb2.ModelInferResponse: ...
def to_proto(message: InferRequest | InferResponse, *, raw: bool = False) -> Any:
    """The protobuf message for a request or response; ``raw=True`` writes every tensor
    raw (faster, and what Triton sends), otherwise typed unless FP16 / BF16 need raw."""
    from .proto import grpc_predict_v2_pb2 as pb2

    if isinstance(message, InferRequest):
        msg: Any = pb2.ModelInferRequest(model_name=message.model_name, model_version=message.model_version,
                                         id=message.id)
        tensors, entries, raw_field = message.inputs, msg.inputs, msg.raw_input_contents
        for output in message.outputs:
            _put_parameters(msg.outputs.add(name=output.name).parameters, output.parameters,
                            f"outputs[{output.name}].parameters")
    elif isinstance(message, InferResponse):
        msg = pb2.ModelInferResponse(model_name=message.model_name, model_version=message.model_version,
                                     id=message.id)
        tensors, entries, raw_field = message.outputs, msg.outputs, msg.raw_output_contents
    else:
        raise SerializationError(f"to_proto takes an InferRequest or InferResponse, got {type(message).__name__}")
    _put_parameters(msg.parameters, message.parameters, "parameters")
    for tensor in tensors:
        if not isinstance(tensor, InferTensor):
            raise SerializationError(f"a message's tensors must be InferTensor objects, got {type(tensor).__name__}")
    use_raw = raw or any(t.datatype in _RAW_ONLY for t in tensors)
    for tensor in tensors:
        entry = entries.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.parameters:
            _put_parameters(entry.parameters, tensor.parameters, f"{tensor.name}.parameters")
        if not use_raw and len(tensor.data):
            data = tensor.data
            values = data.tolist() if isinstance(data, np.ndarray) else data
            getattr(entry.contents, DATATYPES[tensor.datatype].contents_field).extend(values)
    if use_raw:
        raw_field.extend([t.to_raw() for t in tensors])
    return msg


@overload
def from_proto(message: pb2.ModelInferRequest) -> InferRequest: ...
@overload
def from_proto(message: pb2.ModelInferResponse | pb2.ModelStreamInferResponse) -> InferResponse: ...
@overload
def from_proto(message: Any) -> InferRequest | InferResponse: ...
def from_proto(message: Any) -> InferRequest | InferResponse:
    """An ``InferRequest`` from a ``ModelInferRequest``, an ``InferResponse`` from a
    ``ModelInferResponse`` or ``ModelStreamInferResponse``.

    Messages of the same name from other modules (tritonclient's, kserve's) are read
    through their wire bytes. A stream response whose ``error_message`` is set raises
    ``RemoteError``: the handler that made it reported a failure."""
    pb2 = _pb2()

    kind = type(message)
    if kind is not pb2.ModelInferRequest and kind is not pb2.ModelInferResponse:
        full_name = getattr(getattr(message, "DESCRIPTOR", None), "full_name", None)
        if full_name not in _NAMES:
            raise SerializationError("from_proto takes a ModelInferRequest, ModelInferResponse or "
                                     f"ModelStreamInferResponse message, got {type(message).__name__}")
        ours = getattr(pb2, full_name.rsplit(".", 1)[1])
        if not isinstance(message, ours):
            message = ours.FromString(message.SerializeToString())
        if isinstance(message, pb2.ModelStreamInferResponse):
            if message.error_message:
                raise RemoteError("InferError", message.error_message)
            message = message.infer_response
        kind = type(message)
    parameters = _get_parameters(message.parameters, "parameters")
    if kind is pb2.ModelInferRequest:
        request = InferRequest(message.model_name, model_version=message.model_version, id=message.id,
                               parameters=parameters)
        request.inputs = _tensors(message.inputs, message.raw_input_contents, "inputs")
        request.outputs = [RequestedOutput(o.name, _get_parameters(o.parameters, f"outputs[{o.name}].parameters")
                                           if o.parameters else {}) for o in message.outputs]
        return request
    response = InferResponse(message.model_name, model_version=message.model_version, id=message.id,
                             parameters=parameters)
    response.outputs = _tensors(message.outputs, message.raw_output_contents, "outputs")
    return response


def _tensors(entries: Sequence[Any], raws: Sequence[bytes], key: str) -> list[InferTensor]:
    if raws and len(raws) != len(entries):
        raise ValidationError(f"the message has {len(entries)} {key} but {len(raws)} raw contents; "
                              "raw contents need one entry per tensor", field=f"raw_{key[:-1]}_contents")
    tensors: list[InferTensor] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        tensor_name = entry.name
        if tensor_name in seen:
            raise ValidationError(f"{key} has two tensors named {tensor_name!r}", field=tensor_name)
        seen.add(tensor_name)
        name = tensor_name or f"{key}[{i}]"
        params = _get_parameters(entry.parameters, f"{name}.parameters") if entry.parameters else {}
        if raws:
            if entry.HasField("contents") and entry.contents.ListFields():
                raise ValidationError(f"tensor {name!r} has contents, but the message uses raw contents; "
                                      "a message uses one or the other", field=name)
            tensors.append(InferTensor.from_raw(tensor_name, entry.datatype, list(entry.shape), raws[i], params))
        else:
            tensors.append(_typed(entry, name, entry.contents.ListFields(), params))
    return tensors


def _typed(entry: Any, name: str, fields: list[tuple[Any, Any]], params: Parameters) -> InferTensor:
    if not fields:
        return InferTensor(entry.name, entry.datatype, entry.shape, [], params)
    if len(fields) > 1:
        names = " and ".join(field.name for field, _ in fields)
        raise ValidationError(f"tensor {name!r} has values in {names}; a tensor's values go in the one "
                              "field of its datatype", field=name)
    field, values = fields[0]
    expected = info(entry.datatype, name).contents_field
    if field.name != expected:
        raise ValidationError(f"tensor {name!r} is {entry.datatype}, so its values go in {expected}, "
                              f"not in {field.name}", field=name)
    if field.name == "bytes_contents":
        data: Any = list(values)
    else:
        data = np.fromiter(values, dtype=_FIELD_DTYPES[field.name], count=len(values))
    return InferTensor(entry.name, entry.datatype, entry.shape, data, params)


def _put_parameters(target: Any, params: Mapping[str, ParamValue], where: str) -> None:
    if not params:
        return
    for key, value in check_parameters(params, where).items():
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            if value > _INT64_MAX:
                slot.uint64_param = value
            else:
                slot.int64_param = value
        elif isinstance(value, float):
            slot.double_param = value
        else:
            slot.string_param = value


def _get_parameters(source: Any, where: str) -> Parameters:
    if not source:
        return {}
    out: Parameters = {}
    for key, param in source.items():
        which = param.WhichOneof("parameter_choice")
        if which is None:
            raise ValidationError(f"{where}: parameter {key!r} has no value", field=where)
        out[key] = getattr(param, which)
    return out
