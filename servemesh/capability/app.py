"""``App`` (AnyServe's ``AnyServe``): capability handlers declared with a decorator.

::

    app = App()

    @app.capability(type="chat", model="demo")
    def chat(request: ModelInferRequest, context: Context) -> ModelInferResponse: ...

    @app.capability(type="chat", stream=True)
    def chat_stream(request, context, stream):
        stream.send(response)

The decorator only records the handler and its labels; ``servemesh serve module:app``
(or ``app.run()``) serves them as a replica.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from .models import VERSION_LABEL, ModelSpec, model_spec
from .wire import Labels, check_labels, normalized


@dataclasses.dataclass(frozen=True)
class CapabilitySpec:
    """One handler of an app and the capability it serves."""

    labels: Labels
    handler: Callable[..., Any]
    stream: bool
    #: ``async def`` (runs on the event loop) rather than ``def`` (runs in a worker thread)
    is_async: bool
    #: an ``async def`` generator (yields its responses) rather than a ``stream.send`` caller
    is_generator: bool
    #: the labels, normalized for matching (``wire.normalized``)
    keys: Labels
    #: the handler takes ``(request, context[, stream])``, not just ``(request)``
    takes_context: bool = True
    #: the model metadata it declared (inputs, outputs, platform, versions), if any
    model: ModelSpec | None = None

    @property
    def name(self) -> str:
        return str(getattr(self.handler, "__qualname__", repr(self.handler)))


class App:
    """A set of capability handlers, served together by one replica process."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._specs: list[CapabilitySpec] = []

    def capability(self, *, stream: bool = False, inputs: Any = None, outputs: Any = None,
                   platform: str | None = None, versions: Any = None,
                   **labels: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declare a handler of the capability ``labels`` (``type="chat", model="demo"``).

        ``handler(request, context) -> response``, or with ``stream=True``
        ``handler(request, context, stream)`` calling ``stream.send(response)`` (an
        ``async def`` generator taking ``(request, context)`` may ``yield`` instead).
        ``def`` handlers run in worker threads, ``async def`` ones on the event loop.

        ``inputs`` / ``outputs`` (``TensorSpec(name, datatype, shape)`` each), ``platform``
        and ``versions`` declare the model's metadata, which the KServe (OIP v2) gateway
        reports (docs/kserve.md); ``versions`` become the ``version`` label."""
        if not labels:
            raise ConfigError("@app.capability(...) needs at least one label, e.g. type='chat'")
        model = model_spec(inputs, outputs, platform, versions)
        if model is not None and model.versions:
            if VERSION_LABEL in labels:
                raise ConfigError("give versions= or a version label, not both")
            labels[VERSION_LABEL] = list(model.versions)
        checked = check_labels(labels)
        if not isinstance(stream, bool):
            raise ConfigError(f"stream= must be True or False, not {stream!r}")

        def decorate(handler: Callable[..., Any]) -> Callable[..., Any]:
            self._specs.append(dataclasses.replace(_spec(handler, checked, stream), model=model))
            return handler

        return decorate

    @property
    def specs(self) -> list[CapabilitySpec]:
        return list(self._specs)

    def get_capabilities(self) -> list[Labels]:
        """The label sets of every handler, in declaration order."""
        return [dict(s.labels) for s in self._specs]

    def run(self, argv: list[str] | None = None) -> None:
        """Serve this app as a replica, with the flags of ``servemesh serve`` read from the
        command line (``python chat_app.py --port 50051 --api-server http://...``)."""
        from ..cli.capability import serve_app  # the CLI assembles the replica (apps layer)

        serve_app(self, argv)

    def __repr__(self) -> str:
        return f"App({self.name!r}, capabilities={self.get_capabilities()})"


#: AnyServe's name for the app
AnyServe = App


def _spec(handler: Callable[..., Any], labels: Labels, stream: bool) -> CapabilitySpec:
    if not callable(handler):
        raise ConfigError(f"@app.capability(...) decorates a function, not {type(handler).__name__}")
    func = inspect.unwrap(handler)
    name = getattr(func, "__qualname__", repr(handler))
    is_gen = inspect.isasyncgenfunction(func)
    is_async = is_gen or inspect.iscoroutinefunction(func)
    if inspect.isgeneratorfunction(func):
        raise ConfigError(f"capability handler {name} is a generator: stream with stream.send(...) "
                          "(stream=True), or make it an async generator")
    params = [p for p in inspect.signature(handler).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    wanted: tuple[int, ...]
    if is_gen:
        if not stream:
            raise ConfigError(f"capability handler {name} is an async generator: declare it with stream=True")
        wanted = (2,)
    else:
        wanted = (3,) if stream else (1, 2)
    if len(params) not in wanted:
        shape = ("(request, context, stream)" if stream and not is_gen
                 else "(request, context)" if is_gen else "(request, context) or (request)")
        raise ConfigError(f"capability handler {name} must take {shape}; it takes {len(params)} parameters")
    return CapabilitySpec(labels, handler, stream, is_async, is_gen, normalized(labels), len(params) > 1)
