"""The object store: values shared between replicas by opaque, content-addressed refs.

::

    async with open_objects(ObjectStoreSettings.from_settings(settings)) as objects:
        ref = await objects.acreate({"data": "value"})   # 'obj-<sha256 hex>'
        value = await objects.aget(ref)
        # from a synchronous handler in a worker thread: objects.create(...) / objects.get(ref)

Refs are never paths, pickle is refused unless the operator allows it, objects
expire (``ttl``) and are collected, and sizes are limited; ``docs/objects.md``
says what each guarantee covers. Backends: ``LocalStore`` (a directory),
``JetStreamStore`` (a NATS JetStream bucket, imported on first use) and
``MemoryStore`` (the in-memory twin).
"""

from __future__ import annotations

from typing import Any

from .base import FOREVER, ObjectMeta, ObjectStore
from .errors import (
    InvalidObjectRef,
    ObjectCorrupted,
    ObjectNotFound,
    ObjectRefused,
    ObjectStoreError,
    ObjectStoreUnavailable,
    ObjectTooLarge,
)
from .facade import Objects
from .local import LocalStore
from .memory import MemoryStore
from .refs import check_ref, is_ref, ref_from_tensor
from .settings import ObjectStoreSettings
from .stores import open_objects, open_store

__all__ = [
    "FOREVER",
    "InvalidObjectRef",
    "JetStreamStore",
    "LocalStore",
    "MemoryStore",
    "ObjectCorrupted",
    "ObjectMeta",
    "ObjectNotFound",
    "ObjectRefused",
    "ObjectStore",
    "ObjectStoreError",
    "ObjectStoreSettings",
    "ObjectStoreUnavailable",
    "ObjectTooLarge",
    "Objects",
    "check_ref",
    "is_ref",
    "open_objects",
    "open_store",
    "ref_from_tensor",
]


def __getattr__(name: str) -> Any:
    # nats-py is imported only by code that uses JetStream
    if name == "JetStreamStore":
        from .jetstream import JetStreamStore

        return JetStreamStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
