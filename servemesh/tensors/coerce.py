"""Whatever a handler returns or streams, as an ``InferResponse``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from ..errors import RemoteError, SerializationError
from .contents_json import decode_contents_response
from .types import InferResponse

__all__ = ["response_from_any"]

_RESPONSE_KEYS = frozenset(("model_name", "model_version", "id", "parameters", "outputs"))


def response_from_any(item: Any) -> InferResponse:
    """An ``InferResponse`` from what a handler returned or streamed:

    - an ``InferResponse`` (returned as it is);
    - a protobuf ``ModelInferResponse`` or ``ModelStreamInferResponse`` (its
      ``infer_response``), from ``servemesh.tensors.proto`` or any module of the same
      proto package (tritonclient's, kserve's);
    - a dict in the contents JSON form, or AnyServe's stream dicts
      ``{"infer_response": {...}}``.

    A stream item with a non-empty ``error_message`` (AnyServe's ``stream.error(msg)``)
    raises ``RemoteError``; anything else raises ``SerializationError``."""
    if isinstance(item, InferResponse):
        return item
    if isinstance(item, Mapping):
        if item.get("error_message"):
            raise RemoteError("InferError", str(item["error_message"]))
        if "infer_response" in item:
            return response_from_any(item["infer_response"])
        unknown = sorted(str(k) for k in item if k not in _RESPONSE_KEYS)
        if unknown or "outputs" not in item:
            what = f"has keys {', '.join(map(repr, unknown))}" if unknown else "has no \"outputs\""
            raise SerializationError(f"a handler returned a dict that is not a response: it {what} (a contents JSON "
                                     "response has \"outputs\", and may have \"model_name\", \"model_version\", "
                                     "\"id\", \"parameters\")")
        return decode_contents_response(item)
    name = getattr(getattr(item, "DESCRIPTOR", None), "full_name", None)
    if name in ("inference.ModelInferResponse", "inference.ModelStreamInferResponse"):
        from .pb_codec import from_proto

        return cast(InferResponse, from_proto(item))
    raise SerializationError(f"a handler returned {type(item).__name__}; it must return or stream an "
                             "InferResponse (ModelInferResponse), a ModelInferResponse or ModelStreamInferResponse "
                             "protobuf message, or a dict in the contents JSON form")
