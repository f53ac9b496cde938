"""The capability wire: what an API server sends a replica over the request plane, and
what comes back. Pure functions and structs, no I/O.

A call is an :class:`InferCall`: the request body exactly as the client sent it (the
AnyServe contents JSON, never parsed by the API server), the labels asked for (every
``X-Capability-*`` header), whether the answer is streamed, and the delegation chain.
The answer is the contents JSON of each response, as bytes, ready to be an HTTP body
or an SSE ``data:`` line. A replica serves two runtime endpoints of the capability
namespace: ``{ns}.replica.infer`` (one answer: the runtime's unary fast path) and
``{ns}.replica.stream``; the capabilities of their discovery records are
:func:`record_capabilities`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from ..errors import ConfigError, ValidationError
from ..runtime.records import capabilities_match
from ..tensors import InferRequest, InferResponse, decode_contents_request, encode_contents_response
from ..tensors.contents_json import encode_contents_request

#: the component and endpoints every replica serves in the capability namespace
COMPONENT = "replica"
UNARY = "infer"
STREAM = "stream"

#: HTTP headers (lower case, as ASGI gives them) and gRPC metadata keys
CAPABILITY_PREFIX = "x-capability-"
DELEGATED_FROM = "x-delegated-from"
DELEGATION_DEPTH = "x-delegation-depth"

_REPLICA_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: a chain entry: a replica id, and the tag of the labels it was asked for (``hop``)
_HOP = re.compile(r"([A-Za-z0-9._:-]{1,128})(?:@([0-9a-f]{8}))?")
#: most entries an ``X-Delegated-From`` header may hold, and the largest depth it may state
MAX_CHAIN = 64
MAX_DEPTH_HEADER = 1 << 20
_LABEL_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_encode_json = msgspec.json.Encoder().encode

Labels = dict[str, Any]


class InferCall(msgspec.Struct, array_like=True, omit_defaults=True):
    """One request for a replica (the payload of its runtime endpoints)."""

    #: the AnyServe contents JSON of the request, as received
    body: bytes
    #: the labels asked for: ``X-Capability-Type: chat`` is ``{"type": "chat"}``
    want: dict[str, str]
    #: the hops this request was delegated (or called) from, oldest first (``hop``)
    chain: list[str] = []
    #: how many delegations it went through (at least ``len(chain)``)
    depth: int = 0


def paths(namespace: str) -> tuple[str, str]:
    """The runtime paths of a replica's unary and streaming endpoints."""
    return f"{namespace}.{COMPONENT}.{UNARY}", f"{namespace}.{COMPONENT}.{STREAM}"


# -- labels -------------------------------------------------------------------------------
def check_labels(labels: Mapping[str, Any], where: str = "capability") -> Labels:
    """A capability's labels, checked: names of letters, digits, ``_`` and ``-``; values
    JSON scalars (or lists of them), as headers can ask for them."""
    out: Labels = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise ConfigError(f"{where} label {key!r} is invalid: use letters, digits, '_' and '-' (at most 64)")
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, (str, int, float, bool)):
                raise ConfigError(f"{where} label {key}={value!r} is invalid: values are strings, numbers or "
                                  "booleans (or lists of them)")
        out[key] = value
    return out


def match_key(key: str) -> str:
    """Label names compare case-blind, ``-`` and ``_`` alike (``X-Capability-Model-Name``
    asks for ``model_name``)."""
    return key.lower().replace("-", "_")


def normalized(labels: Mapping[str, Any]) -> Labels:
    return {match_key(k): v for k, v in labels.items()}


def matches(labels: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    """``labels`` (already :func:`normalized`) offer everything ``want`` asks for, values
    compared with type coercion (``"2"`` matches ``2``)."""
    return capabilities_match(labels, want)


def want_from_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The labels asked for by ``X-Capability-*`` headers (ASGI's raw, lower-case names)."""
    want: dict[str, str] = {}
    for name, value in raw:
        if name.startswith(b"x-capability-"):
            key = match_key(name[13:].decode("latin-1"))
            if not key or not _LABEL_KEY.fullmatch(key):
                raise ValidationError(f"header {name.decode('latin-1')!r} names no capability label",
                                      field=name.decode("latin-1"))
            try:
                text = value.decode("utf-8").strip()  # what clients send; HTTP's own Latin-1 otherwise
            except UnicodeDecodeError:
                text = value.decode("latin-1").strip()
            if want.get(key, text) != text:
                raise ValidationError(f"header {name.decode('latin-1')} is given twice, as {want[key]!r:.40} and "
                                      f"{text!r:.40}: give each label once", field=name.decode("latin-1"))
            want[key] = text
    return want


def chain_from_headers(delegated_from: str | None, depth: str | None) -> tuple[list[str], int]:
    """The delegation chain of ``X-Delegated-From`` (comma-separated hops: replica ids,
    each with the tag of the labels it was asked for, ``rp1@0a1b2c3d``, or without) and
    ``X-Delegation-Depth``."""
    chain = [c.strip() for c in delegated_from.split(",") if c.strip()] if delegated_from else []
    if len(chain) > MAX_CHAIN:
        raise ValidationError(f"X-Delegated-From holds {len(chain)} replicas; at most {MAX_CHAIN}",
                              field="X-Delegated-From")
    for entry in chain:
        if not _HOP.fullmatch(entry):
            raise ValidationError(f"X-Delegated-From holds {entry!r:.60}, which is not a replica id",
                                  field="X-Delegated-From")
    n = len(chain)
    if depth is not None and depth.strip():
        try:
            n = int(depth)
        except ValueError:
            raise ValidationError(f"X-Delegation-Depth must be an integer, not {depth!r:.40}",
                                  field="X-Delegation-Depth") from None
        if not 0 <= n <= MAX_DEPTH_HEADER:
            raise ValidationError(f"X-Delegation-Depth must be from 0 to {MAX_DEPTH_HEADER}, not {depth.strip():.40}",
                                  field="X-Delegation-Depth")
    return chain, max(n, len(chain))


def want_tag(want: Mapping[str, Any]) -> str:
    """A short, stable tag of the labels ``want`` (the same in every process)."""
    text = json.dumps(sorted((str(k), str(v)) for k, v in want.items()), separators=(",", ":"))
    return hashlib.blake2s(text.encode(), digest_size=4).hexdigest()


def hop(replica_id: str, want: Mapping[str, Any]) -> str:
    """The chain entry of ``replica_id`` passing on a request it was asked ``want`` for."""
    return f"{replica_id}@{want_tag(want)}"


def excluded(chain: Sequence[str], want: Mapping[str, Any]) -> set[str]:
    """Replicas that must not be asked ``want`` for this request: each that was already
    asked for it on the way here (a loop), and each the chain names without a tag."""
    if not chain:
        return set()
    tag = want_tag(want)
    out = set()
    for entry in chain:
        replica, _, entry_tag = entry.partition("@")
        if not entry_tag or entry_tag == tag:
            out.add(replica)
    return out


def replicas_of(chain: Sequence[str]) -> list[str]:
    """The replica ids of a chain's hops, oldest first."""
    return [entry.partition("@")[0] for entry in chain]


def check_replica_id(replica_id: str) -> str:
    if not isinstance(replica_id, str) or not _REPLICA_ID.fullmatch(replica_id):
        raise ConfigError(f"replica id {replica_id!r} is invalid: 1 to 128 letters, digits, '.', '_', ':' or '-'")
    return replica_id


# -- the records of a replica ------------------------------------------------------------------
def record_capabilities(replica_id: str, endpoint: str, labels: Sequence[Mapping[str, Any]],
                        streams: Sequence[bool] | None = None,
                        models: Sequence[Mapping[str, Any] | None] | None = None) -> dict[str, Any]:
    """The ``capabilities`` of a replica's discovery records: its id, its OIP gRPC
    endpoint, its handlers' label sets, which of them stream (``None``: unknown, as
    for a replica registered by hand, which may serve either) and the model metadata
    each declared (``ModelSpec.to_record()``, or ``None``)."""
    caps: dict[str, Any] = {"replica_id": replica_id, "endpoint": endpoint, "capabilities": [dict(x) for x in labels]}
    if streams is not None:
        caps["streams"] = list(streams)
    if models is not None and any(m is not None for m in models):
        caps["models"] = [None if m is None else dict(m) for m in models]
    return caps


class ReplicaView(msgspec.Struct, frozen=True):
    """A replica as routing sees it, read from its record's capabilities once."""

    instance_id: int
    replica_id: str
    endpoint: str
    labels: tuple[Labels, ...]
    #: normalized labels, for matching
    keys: tuple[Labels, ...]
    streams: tuple[bool | None, ...]
    #: each handler's declared model metadata (``ModelSpec.to_record()``), or ``None``
    models: tuple[Mapping[str, Any] | None, ...] = ()

    @classmethod
    def of(cls, instance_id: int, caps: Mapping[str, Any]) -> ReplicaView | None:
        labels = caps.get("capabilities")
        rid = caps.get("replica_id")
        if not isinstance(rid, str) or not isinstance(labels, list):
            return None
        sets = tuple(dict(x) for x in labels if isinstance(x, dict))
        streams = caps.get("streams")
        flags: tuple[bool | None, ...] = (tuple(bool(s) for s in streams)
                                          if isinstance(streams, list) and len(streams) == len(sets)
                                          else (None,) * len(sets))
        models = caps.get("models")
        declared: tuple[Mapping[str, Any] | None, ...] = (
            tuple(m if isinstance(m, dict) else None for m in models)
            if isinstance(models, list) and len(models) == len(sets) else (None,) * len(sets))
        return cls(instance_id, rid, str(caps.get("endpoint") or ""), sets,
                   tuple(normalized(x) for x in sets), flags, declared)

    def serves(self, want: Mapping[str, Any], stream: bool | None) -> bool:
        """True if one of its handlers offers ``want`` (and streams, or not, as asked;
        ``None``: either)."""
        for keys, flag in zip(self.keys, self.streams, strict=True):
            if (stream is None or flag is None or flag == stream) and matches(keys, want):
                return True
        return False


# -- bodies ------------------------------------------------------------------------------------
def decode_request(body: bytes) -> InferRequest:
    return decode_contents_request(body)


def encode_request(request: InferRequest) -> bytes:
    return _encode_json(encode_contents_request(request))


def encode_response(response: InferResponse) -> bytes:
    """The contents JSON of ``response``, as bytes (NaN and infinities as the strings
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"``: valid JSON, never ``null``)."""
    return _encode_json(encode_contents_response(response))
