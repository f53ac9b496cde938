"""``ModelCatalog``: the models the live replicas serve, by their ``model`` label.

A handler with ``model="m"`` serves model ``m``; its versions are its ``version`` label
(``@app.capability(versions=[...])``), its metadata what it declared
(``capability.models.ModelSpec``), merged over every replica serving ``m`` (the first
declaration found wins). A model stays known after its last replica left (bounded),
so a gateway can tell "no live replica" (503) from "no such model" (404). Nothing
here is HTTP or gRPC: the KServe surfaces answer from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from ..errors import NoInstancesError
from .models import VERSION_LABEL, ModelSpec
from .routing import CapabilityRouter

#: the label that names a handler's model
MODEL_LABEL = "model"
#: models remembered after their replicas left
MAX_GONE = 1024


@dataclasses.dataclass
class ModelInfo:
    """One model as the live replicas serve it."""

    name: str
    #: every version some handler declared (none: the model answers unversioned requests only)
    versions: list[str] = dataclasses.field(default_factory=list)
    spec: ModelSpec | None = None
    #: some handler streams (a decoupled model, reached with ModelStreamInfer); None: unknown
    streams: bool | None = False
    #: some handler answers once (or may: unknown)
    unary: bool = False
    #: live replicas serving it
    replicas: int = 0

    @property
    def platform(self) -> str:
        return (self.spec.platform if self.spec is not None else "") or "servemesh"

    @property
    def declared(self) -> bool:
        return self.spec is not None and bool(self.spec.inputs or self.spec.outputs)


class ModelCatalog:
    """``ModelCatalog(router)``: read when asked, recomputed when the live set changes."""

    def __init__(self, router: CapabilityRouter) -> None:
        self.router = router
        self._generation: int | None = None
        self._models: dict[str, ModelInfo] = {}
        #: models that had a live replica once, and their last metadata
        self._gone: dict[str, ModelInfo] = {}

    def models(self) -> dict[str, ModelInfo]:
        """The models with a live replica now, by name."""
        generation = self.router.generation()
        if generation is None or generation != self._generation:
            self._models = self._collect()
            self._generation = generation
            for name, info in self._models.items():
                self._gone.pop(name, None)
                self._gone[name] = info  # the last metadata seen, newest last
            while len(self._gone) > MAX_GONE:
                del self._gone[next(iter(self._gone))]
        return self._models

    def get(self, name: str) -> ModelInfo | None:
        return self.models().get(name)

    def known(self) -> dict[str, ModelInfo]:
        """Every model seen, live or not (the live ones with their current metadata)."""
        live = self.models()
        return {**{n: i for n, i in self._gone.items() if n not in live}, **live}

    def require(self, name: str, version: str = "") -> ModelInfo | None:
        """The live model ``name`` (and ``version``); ``None`` if no replica ever served it
        (or not that version); ``NoInstancesError`` if one did and none is live now."""
        info = self.models().get(name)
        if info is None:
            if name in self._gone:
                raise NoInstancesError(f"model {name!r}", [])
            return None
        if version and version not in info.versions:
            return None
        return info

    def _collect(self) -> dict[str, ModelInfo]:
        found: dict[str, ModelInfo] = {}
        for view in self.router.replicas():
            named: set[str] = set()
            for labels, flag, declared in zip(view.labels, view.streams, _pad(view.models, len(view.labels)),
                                              strict=True):
                for name in _names(labels.get(MODEL_LABEL)):
                    info = found.get(name)
                    if info is None:
                        info = found[name] = ModelInfo(name)
                    if name not in named:
                        named.add(name)
                        info.replicas += 1
                    for version in _names(labels.get(VERSION_LABEL)):
                        if version not in info.versions:
                            info.versions.append(version)
                    if info.spec is None and declared is not None:
                        info.spec = ModelSpec.from_record(declared)
                    if flag is None:
                        info.streams = None if info.streams is not True else True
                        info.unary = True
                    elif flag:
                        info.streams = True
                    else:
                        info.unary = True
        return found


def _names(value: Any) -> Iterable[str]:
    if value is None or isinstance(value, dict):
        return ()
    items = value if isinstance(value, (list, tuple)) else [value]
    return [str(v) for v in items if not isinstance(v, (list, dict)) and str(v)]


def _pad(models: tuple[Any, ...], n: int) -> tuple[Any, ...]:
    return models if len(models) == n else (None,) * n


__all__ = ["MODEL_LABEL", "ModelCatalog", "ModelInfo"]
