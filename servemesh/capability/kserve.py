"""AnyServe's ``anyserve.kserve`` names, for handlers that build tensors by hand::

    from servemesh.capability.kserve import InferOutputTensor, InferTensorContents, ModelInferResponse

    ModelInferResponse(model_name="echo", id=request.id, outputs=[
        InferOutputTensor(name="output", datatype="BYTES", shape=[1],
                          contents=InferTensorContents(bytes_contents=[b"hi"]))])

``InferOutputTensor`` and ``InferInputTensor`` make checked ``InferTensor`` values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ValidationError
from ..tensors import InferTensor, ModelInferRequest, ModelInferResponse
from ..tensors.params import ParamValue
from .context import Context
from .stream import Stream


@dataclasses.dataclass
class InferTensorContents:
    """A tensor's elements by protobuf field; give the one field of the datatype."""

    bool_contents: Sequence[bool] = ()
    int_contents: Sequence[int] = ()
    int64_contents: Sequence[int] = ()
    uint_contents: Sequence[int] = ()
    uint64_contents: Sequence[int] = ()
    fp32_contents: Sequence[float] = ()
    fp64_contents: Sequence[float] = ()
    bytes_contents: Sequence[bytes | str] = ()


def InferOutputTensor(name: str, datatype: str, shape: Sequence[int],
                      contents: InferTensorContents | None = None,
                      parameters: Mapping[str, ParamValue] | None = None) -> InferTensor:
    """A tensor from AnyServe's constructor arguments."""
    fields = {k: v for k, v in dataclasses.asdict(contents or InferTensorContents()).items() if len(v)}
    if len(fields) > 1:
        raise ValidationError(f"tensor {name!r} has values in {' and '.join(fields)}; a tensor's values go in the "
                              "one field of its datatype", field=name)
    data: Any = next(iter(fields.values())) if fields else []
    return InferTensor(name, datatype, shape, list(data), parameters)


InferInputTensor = InferOutputTensor

__all__ = ["Context", "InferInputTensor", "InferOutputTensor", "InferTensorContents", "ModelInferRequest",
           "ModelInferResponse", "Stream"]
