"""Authoring mistakes fail at decoration time with a message that says what to do."""

from __future__ import annotations

import pytest

from servemesh import ServiceContext, async_init, depends, endpoint, entrypoint, on_shutdown, service
from servemesh.errors import ConfigError
from servemesh.sdk.serve import _check_kwargs
from servemesh.sdk.spec import capabilities_of, spec_of


def test_decorators_only_attach_metadata():
    class Plain:
        @endpoint()
        async def generate(self, request: dict):
            yield request

        @async_init
        async def setup(self) -> None:
            pass

    decorated = service(name="plain", namespace="ns")(Plain)
    assert decorated is Plain and type(Plain) is type  # no generated subclass
    spec = spec_of(Plain)
    assert spec.path == "ns.plain"
    assert [e.name for e in spec.endpoints] == ["generate"]
    assert spec.async_init == ("setup",)


def test_endpoint_must_be_async():
    with pytest.raises(ConfigError, match="must be `async def`"):
        class Bad:
            @endpoint()
            def generate(self, request):
                return request


def test_two_endpoints_with_one_name():
    with pytest.raises(ConfigError, match="two endpoints named 'generate'"):
        @service(name="dup")
        class Dup:
            @endpoint()
            async def generate(self, request):
                yield 1

            @endpoint(name="generate")
            async def other(self, request):
                yield 2


def test_entrypoint_and_endpoint_conflict():
    with pytest.raises(ConfigError, match=r"@entrypoint .* and @endpoint"):
        @service(name="both")
        class Both:
            @entrypoint
            async def main(self) -> None:
                pass

            @endpoint()
            async def generate(self, request):
                yield 1


def test_hooks_must_be_async_and_names_valid():
    with pytest.raises(ConfigError, match="must be `async def`"):
        class Bad:
            @on_shutdown
            def stop(self) -> None:
                pass
    with pytest.raises(ConfigError, match="service name"):
        service(name="has space")(type("X", (), {}))


def test_subclass_overrides_an_endpoint():
    @service(name="base")
    class Base:
        @endpoint()
        async def generate(self, request):
            yield "base"

    @service(name="child")
    class Child(Base):
        @endpoint()
        async def generate(self, request):
            yield "child"

    assert [e.method for e in spec_of(Child).endpoints] == ["generate"]
    with pytest.raises(ConfigError, match="not a servemesh service"):
        spec_of(type("Undecorated", (Base,), {}))


def test_missing_and_unknown_constructor_kwargs():
    @service(name="needs")
    class Needs:
        def __init__(self, ctx: ServiceContext, engine_args: dict) -> None:
            self.engine_args = engine_args

        @endpoint()
        async def generate(self, request):
            yield 1

    with pytest.raises(ConfigError, match=r"needs engine_args: pass serve\(.*Needs, engine_args=...\)"):
        _check_kwargs((Needs,), {})
    with pytest.raises(ConfigError, match="no service's __init__ takes colour"):
        _check_kwargs((Needs,), {"engine_args": {}, "colour": "red"})
    _check_kwargs((Needs,), {"engine_args": {}})


def test_depends_needs_a_service():
    with pytest.raises(ConfigError, match="not a servemesh service"):
        class Uses:
            other = depends(dict)


def test_capabilities_known_at_run_time_are_functions_of_the_instance():
    @service(name="engine", namespace="ns", capabilities=lambda self: {"model": self.model})
    class Engine:
        def __init__(self, model: str) -> None:
            self.model = model

        @endpoint(capabilities=lambda self: {"shard": self.model.upper()})
        async def generate(self, request):
            yield request

        @endpoint(capabilities={"kind": "stats"})
        async def stats(self, request) -> dict:
            return {}

    assert type(Engine) is type and not hasattr(Engine, "model")  # only metadata was attached
    spec = spec_of(Engine)
    generate, stats = spec.endpoints
    engine = Engine("m1")
    assert capabilities_of(spec, generate, engine) == {"model": "m1", "shard": "M1"}
    assert capabilities_of(spec, stats, engine) == {"model": "m1", "kind": "stats"}
    assert capabilities_of(spec, stats, Engine("m2"))["model"] == "m2"


def test_capabilities_must_be_a_dict_or_a_function_returning_one():
    with pytest.raises(ConfigError, match="capabilities must be a dict or a function"):
        @service(name="bad", capabilities=["model"])  # type: ignore[arg-type]
        class Bad:
            pass

    @service(name="wrong")
    class Wrong:
        @endpoint(capabilities=lambda self: "model=m")
        async def generate(self, request):
            yield request

    spec = spec_of(Wrong)
    with pytest.raises(ConfigError, match=r"capabilities function of servemesh.wrong.generate must return a dict"):
        capabilities_of(spec, spec.endpoints[0], Wrong())
