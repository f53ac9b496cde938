"""What a capability handler may say about the model it serves: inputs, outputs,
platform and versions (the Open Inference Protocol's model metadata).

::

    @app.capability(model="add_sub", versions=["1"], platform="numpy",
                    inputs=[TensorSpec("INPUT0", "FP32", [16]), TensorSpec("INPUT1", "FP32", [16])],
                    outputs=[TensorSpec("OUTPUT0", "FP32", [16]), TensorSpec("OUTPUT1", "FP32", [16])])

A declaration is optional: an undeclared model still serves, and its metadata says
what is known (its name, whether it streams). ``versions`` become the handler's
``version`` label, so a request for a version is routed by labels like any other.
The declaration travels in the replica's discovery records (:meth:`ModelSpec.to_record`)
to gateways, which answer metadata requests from it. Pure data, no I/O.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError, ValidationError
from ..tensors import DATATYPES

#: the label that carries a handler's declared versions
VERSION_LABEL = "version"
#: at most this many tensors or versions per declaration (they travel in discovery records)
MAX_ITEMS = 256


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output: ``TensorSpec("INPUT0", "FP32", [16])``; ``-1`` is a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __init__(self, name: str, datatype: str, shape: Iterable[int]) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a tensor declaration needs a name, not {name!r}")
        if datatype not in DATATYPES:
            raise ConfigError(f"tensor {name!r}: unknown datatype {datatype!r}; known: {', '.join(DATATYPES)}")
        dims = tuple(shape)
        if any(isinstance(d, bool) or not isinstance(d, int) or d < -1 for d in dims):
            raise ConfigError(f"tensor {name!r}: shape {list(dims)} must hold integers >= 0, or -1 (variable)")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "datatype", datatype)
        object.__setattr__(self, "shape", dims)

    def to_record(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def of(cls, value: TensorSpec | Mapping[str, Any] | Sequence[Any]) -> TensorSpec:
        """A ``TensorSpec``, a ``{"name", "datatype", "shape"}`` dict or a ``(name, datatype, shape)`` tuple."""
        if isinstance(value, TensorSpec):
            return value
        if isinstance(value, Mapping):
            return cls(value.get("name"), value.get("datatype"), value.get("shape") or ())  # type: ignore[arg-type]
        if isinstance(value, (tuple, list)) and len(value) == 3:
            return cls(value[0], value[1], value[2])
        raise ConfigError(f"a tensor declaration is a TensorSpec(name, datatype, shape), not {value!r:.60}")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The declared metadata of one handler's model (all parts optional)."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    platform: str = ""
    versions: tuple[str, ...] = ()

    def to_record(self) -> dict[str, Any]:
        """The form carried in discovery records and registrations (JSON)."""
        return {"inputs": [t.to_record() for t in self.inputs], "outputs": [t.to_record() for t in self.outputs],
                "platform": self.platform, "versions": list(self.versions)}

    def check_inputs(self, model: str, inputs: Sequence[Any]) -> None:
        """``ValidationError`` naming the tensor when ``inputs`` (``InferTensor``s) do not fit
        the declared inputs: an unknown name, another datatype, another shape (``-1``
        takes any size), a declared input missing. Nothing is checked without a declaration."""
        if not self.inputs:
            return
        declared = self._declared
        for tensor in inputs:
            found = declared.get(tensor.name)
            if found is None:
                raise ValidationError(f"model {model!r} has no input {tensor.name!r} (inputs: {', '.join(declared)})",
                                      field=tensor.name)
            spec, exact = found
            if tensor.datatype != spec.datatype:
                raise ValidationError(f"tensor {tensor.name!r} is {tensor.datatype}, but model {model!r} takes "
                                      f"{spec.datatype}", field=tensor.name)
            shape = tensor.shape
            if shape != exact and (len(shape) != len(spec.shape)
                                   or any(d not in (-1, s) for d, s in zip(spec.shape, shape, strict=True))):
                raise ValidationError(f"tensor {tensor.name!r} has shape {list(shape)}, but model {model!r} takes "
                                      f"{list(spec.shape)}", field=tensor.name)
        given = {t.name for t in inputs}
        for name in declared:
            if name not in given:
                raise ValidationError(f"model {model!r} needs input {name!r}", field=name)

    @functools.cached_property
    def _declared(self) -> dict[str, tuple[TensorSpec, list[int]]]:
        """Each declared input by name, with its shape as a list (what a tensor's shape equals)."""
        return {t.name: (t, list(t.shape)) for t in self.inputs}

    @classmethod
    def from_record(cls, value: Any) -> ModelSpec | None:
        """A record's declaration; ``None`` for none, or for one that does not parse (a
        record is other processes' data: it never breaks the reader)."""
        if not isinstance(value, Mapping):
            return None
        try:
            return model_spec(value.get("inputs"), value.get("outputs"), value.get("platform"), value.get("versions"))
        except ConfigError:
            return None


def model_spec(inputs: Any = None, outputs: Any = None, platform: Any = None, versions: Any = None) -> ModelSpec | None:
    """The declaration ``@app.capability(inputs=, outputs=, platform=, versions=)`` makes
    (``None`` when nothing is declared); ``ConfigError`` for a malformed one."""
    if inputs is None and outputs is None and platform is None and versions is None:
        return None
    if platform is not None and not isinstance(platform, str):
        raise ConfigError(f"platform= must be a string, not {platform!r}")
    if isinstance(versions, (str, int)):
        versions = [versions]
    checked_versions: list[str] = []
    for v in versions or ():
        if isinstance(v, bool) or not isinstance(v, (str, int)) or not str(v) or "/" in str(v):
            raise ConfigError(f"versions= holds {v!r}: versions are non-empty strings (or integers) without '/'")
        checked_versions.append(str(v))
    spec = ModelSpec(_tensors(inputs, "inputs"), _tensors(outputs, "outputs"), platform or "",
                     tuple(dict.fromkeys(checked_versions)))
    if len(spec.versions) > MAX_ITEMS:
        raise ConfigError(f"versions= holds more than {MAX_ITEMS} versions")
    return spec


def _tensors(values: Any, what: str) -> tuple[TensorSpec, ...]:
    if values is None:
        return ()
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise ConfigError(f"{what}= is a list of TensorSpec(name, datatype, shape), not {values!r:.60}")
    tensors = tuple(TensorSpec.of(v) for v in values)
    if len(tensors) > MAX_ITEMS:
        raise ConfigError(f"{what}= holds more than {MAX_ITEMS} tensors")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ConfigError(f"{what}= names a tensor twice: {names}")
    return tensors


__all__ = ["VERSION_LABEL", "ModelSpec", "TensorSpec", "model_spec"]
