"""``InferRequest`` and ``InferResponse``: the messages of the Open Inference Protocol v2.

They have the attribute shapes of KServe's protobuf messages and of AnyServe's Python
wrappers, so handler code written for either runs unchanged::

    text = request.inputs[0].contents.bytes_contents[0].decode()
    response = ModelInferResponse(model_name=request.model_name, id=request.id)
    response.add_output(name="text", datatype="BYTES", shape=[1], bytes_contents=[text.encode()])

and numpy in and out by tensor name::

    x = request.as_numpy("x")
    response.set_numpy("y", x * 2)

The messages are plain mutable containers; their tensors are immutable values
(``InferTensor``) that were checked when they were made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict, Unpack

import numpy as np

from ..errors import ValidationError
from .params import Parameters, ParamValue, check_parameters
from .tensor import InferTensor, tensor_from_fields

__all__ = ["ContentsFields", "InferRequest", "InferResponse", "ModelInferRequest", "ModelInferResponse",
           "RequestedOutput"]


class ContentsFields(TypedDict, total=False):
    """The ``InferTensorContents`` fields ``add_input`` / ``add_output`` take; give the one
    that matches the datatype (FP16 and BF16 take fp32_contents)."""

    bool_contents: Sequence[bool]
    int_contents: Sequence[int]
    int64_contents: Sequence[int]
    uint_contents: Sequence[int]
    uint64_contents: Sequence[int]
    fp32_contents: Sequence[float]
    fp64_contents: Sequence[float]
    bytes_contents: Sequence[bytes | str]


class RequestedOutput:
    """An output a request asks for, with its parameters (e.g. ``{"binary_data": True}``)."""

    __slots__ = ("name", "parameters")

    def __init__(self, name: str, parameters: Mapping[str, ParamValue] | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValidationError(f"a requested output's name must be a non-empty string, got {name!r}",
                                  field="outputs")
        self.name = name
        self.parameters: Parameters = check_parameters(parameters, f"outputs[{name}].parameters")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestedOutput):
            return NotImplemented
        return (self.name, self.parameters) == (other.name, other.parameters)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        params = f", parameters={self.parameters!r}" if self.parameters else ""
        return f"RequestedOutput({self.name!r}{params})"


def _find(tensors: list[InferTensor], name: str) -> InferTensor | None:
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    return None


def _require(tensors: list[InferTensor], name: str, kind: str) -> InferTensor:
    tensor = _find(tensors, name)
    if tensor is None:
        have = ", ".join(repr(t.name) for t in tensors) or "none"
        raise ValidationError(f"there is no {kind} named {name!r}; {kind}s: {have}", field=name)
    return tensor


def _add(tensors: list[InferTensor], tensor: InferTensor, kind: str) -> InferTensor:
    if _find(tensors, tensor.name) is not None:
        raise ValidationError(f"there already is an {kind} named {tensor.name!r}; set_numpy(...) replaces one",
                              field=tensor.name)
    tensors.append(tensor)
    return tensor


def _set(tensors: list[InferTensor], tensor: InferTensor) -> InferTensor:
    for i, old in enumerate(tensors):
        if old.name == tensor.name:
            tensors[i] = tensor
            return tensor
    tensors.append(tensor)
    return tensor


class InferRequest:
    """An inference request: the model to run, the input tensors, and optionally the
    outputs wanted (all outputs when empty). ``ModelInferRequest`` is the same class."""

    __slots__ = ("id", "inputs", "model_name", "model_version", "outputs", "parameters")

    def __init__(self, model_name: str = "", *, model_version: str = "", id: str = "",
                 parameters: Mapping[str, ParamValue] | None = None, inputs: Iterable[InferTensor] = (),
                 outputs: Iterable[RequestedOutput | str] = ()) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.id = id
        self.parameters: Parameters = check_parameters(parameters, "parameters")
        self.inputs: list[InferTensor] = list(inputs)
        self.outputs: list[RequestedOutput] = [o if isinstance(o, RequestedOutput) else RequestedOutput(o)
                                               for o in outputs]

    def add_input(self, name: str, datatype: str, shape: Iterable[int], *, data: Any = None,
                  parameters: Mapping[str, ParamValue] | None = None,
                  **contents: Unpack[ContentsFields]) -> InferTensor:
        """Append an input from ``data=`` (numpy array or list) or its contents field."""
        return _add(self.inputs, tensor_from_fields(name, datatype, shape, data, parameters, contents), "input")

    def add_requested_output(self, name: str, parameters: Mapping[str, ParamValue] | None = None) -> RequestedOutput:
        """Ask for output ``name`` (with e.g. ``{"binary_data": True}`` over REST)."""
        output = RequestedOutput(name, parameters)
        self.outputs.append(output)
        return output

    def get_input(self, name: str) -> InferTensor | None:
        return _find(self.inputs, name)

    def as_numpy(self, name: str) -> np.ndarray[Any, Any]:
        """Input ``name`` as a shaped, read-only array; ``ValidationError`` if it is missing."""
        return _require(self.inputs, name, "input").as_numpy()

    def set_numpy(self, name: str, array: Any, *, datatype: str | None = None,
                  parameters: Mapping[str, ParamValue] | None = None) -> InferTensor:
        """Set input ``name`` (replacing one of that name) from an array."""
        return _set(self.inputs, InferTensor.from_numpy(name, array, datatype, parameters))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InferRequest):
            return NotImplemented
        return all(getattr(self, a) == getattr(other, a) for a in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"InferRequest(model_name={self.model_name!r}, model_version={self.model_version!r}, "
                f"id={self.id!r}, parameters={self.parameters!r}, inputs={self.inputs!r}, outputs={self.outputs!r})")


class InferResponse:
    """An inference response: the model that ran and its output tensors.
    ``ModelInferResponse`` is the same class."""

    __slots__ = ("id", "model_name", "model_version", "outputs", "parameters")

    def __init__(self, model_name: str = "", *, model_version: str = "", id: str = "",
                 parameters: Mapping[str, ParamValue] | None = None, outputs: Iterable[InferTensor] = ()) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.id = id
        self.parameters: Parameters = check_parameters(parameters, "parameters")
        self.outputs: list[InferTensor] = list(outputs)

    def add_output(self, name: str, datatype: str, shape: Iterable[int], *, data: Any = None,
                   parameters: Mapping[str, ParamValue] | None = None,
                   **contents: Unpack[ContentsFields]) -> InferTensor:
        """Append an output from ``data=`` (numpy array or list) or its contents field."""
        return _add(self.outputs, tensor_from_fields(name, datatype, shape, data, parameters, contents), "output")

    def get_output(self, name: str) -> InferTensor | None:
        return _find(self.outputs, name)

    def as_numpy(self, name: str) -> np.ndarray[Any, Any]:
        """Output ``name`` as a shaped, read-only array; ``ValidationError`` if it is missing."""
        return _require(self.outputs, name, "output").as_numpy()

    def set_numpy(self, name: str, array: Any, *, datatype: str | None = None,
                  parameters: Mapping[str, ParamValue] | None = None) -> InferTensor:
        """Set output ``name`` (replacing one of that name) from an array."""
        return _set(self.outputs, InferTensor.from_numpy(name, array, datatype, parameters))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InferResponse):
            return NotImplemented
        return all(getattr(self, a) == getattr(other, a) for a in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"InferResponse(model_name={self.model_name!r}, model_version={self.model_version!r}, "
                f"id={self.id!r}, parameters={self.parameters!r}, outputs={self.outputs!r})")


ModelInferRequest = InferRequest
ModelInferResponse = InferResponse
