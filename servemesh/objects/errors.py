"""The object store's errors: branches of servemesh's one tree, drawn in ``servemesh.errors``."""

from __future__ import annotations

from ..errors import (
    OBJECT_REF_FIELD as REF_FIELD,
)
from ..errors import (
    InvalidObjectRef,
    ObjectCorrupted,
    ObjectNotFound,
    ObjectRefused,
    ObjectStoreError,
    ObjectStoreUnavailable,
    ObjectTooLarge,
)

__all__ = ["REF_FIELD", "InvalidObjectRef", "ObjectCorrupted", "ObjectNotFound", "ObjectRefused",
           "ObjectStoreError", "ObjectStoreUnavailable", "ObjectTooLarge"]
