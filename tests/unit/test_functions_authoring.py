"""Authoring typed functions: decorators, typed signatures, metadata schemas, validation rules,
the compatibility diff, semver."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from servemesh.errors import FunctionError
from servemesh.functions import Function, FunctionContext, Image, validate
from servemesh.functions.diff import changes, needs_major
from servemesh.functions.semver import is_semver, parse
from tests.functions.dirs import write_function


class In(BaseModel):
    text: str


class Par(BaseModel):
    times: int = 1


class Out(BaseModel):
    text: str


def test_decorators_return_what_they_decorate() -> None:
    func = Function(description="d", name="f", version="1.2.3")
    assert func.set_input(In) is In and func.set_param(Par) is Par and func.set_output(Out) is Out

    async def start() -> None: ...

    async def run(inputs: In, params: Par) -> Out:
        return Out(text=inputs.text)

    async def stop() -> None: ...

    assert func.on_startup(start) is start
    assert func.on_execute(run) is run
    assert func.on_shutdown(stop) is stop
    assert (func.startup, func.execute, func.shutdown) == (start, run, stop)


def test_models_from_a_typed_signature() -> None:
    func = Function(name="typed", version="1.0.0")

    @func.on_execute
    async def run(inputs: In, params: Par, ctx: FunctionContext) -> Out:
        return Out(text=inputs.text)

    assert (func.inputs, func.params, func.outputs) == (In, Par, Out)
    assert func.context_param == "ctx"


def test_hooks_must_be_async_and_models_must_be_models() -> None:
    func = Function(name="f", version="1.0.0")
    with pytest.raises(FunctionError, match="async def"):
        func.on_execute(lambda inputs, params: None)
    with pytest.raises(FunctionError, match="pydantic model"):
        func.set_input(dict)  # type: ignore[type-var]


def test_metadata_has_the_json_schemas_of_every_port() -> None:
    class Box(BaseModel):
        width: int

    class Inputs(BaseModel):
        image: Image
        box: Box  # nested models are allowed

    func = Function(description="crops", name="crop", version="2.0.0")
    func.set_input(Inputs)
    func.set_output(Out)
    meta = func.metadata()
    assert (meta["name"], meta["version"], meta["description"]) == ("crop", "2.0.0", "crops")
    assert meta["inputs"]["properties"]["image"]["format"] == "servemesh-object-ref"
    assert meta["inputs"]["properties"]["image"]["contentMediaType"] == "image/*"
    assert meta["inputs"]["$defs"]["Box"]["properties"]["width"]["type"] == "integer"
    assert meta["params"]["properties"] == {}
    assert meta["outputs"]["required"] == ["text"]


def test_name_and_version_come_from_the_seed_layout(tmp_path: Path) -> None:
    target = tmp_path / "vision" / "crop" / "1.4.0"
    target.mkdir(parents=True)
    (target / "metadata.py").write_text("from servemesh.functions import Function\nfunc = Function('crops')\n")
    (target / "main.py").write_text("from metadata import func\n\n@func.on_execute\nasync def main(i, p):\n"
                                    "    return {}\n")
    from servemesh.functions import load_function

    func = load_function(target)
    assert (func.category, func.name, func.version) == ("vision", "crop", "1.4.0")


def test_a_valid_function_has_no_problems(tmp_path: Path) -> None:
    assert validate(write_function(tmp_path)) == []


def test_validate_reports_every_problem_at_once_with_locations(tmp_path: Path) -> None:
    target = tmp_path / "text" / "bad" / "v1"
    target.mkdir(parents=True)
    (target / "metadata.py").write_text('''from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from servemesh.functions import Function

func = Function(description="broken")


@func.set_input
class Inputs(BaseModel):
    text: str
    anything: Any
    items: list[Any]
    call: Callable[[int], int]


@func.set_param
class Params(BaseModel):
    text: str = "again"


@func.set_output
class Outputs(BaseModel):
    result: str
''')
    (target / "main.py").write_text("from metadata import func  # no on_execute\n")
    problems = validate(target)
    text = "\n".join(problems)
    metadata = str(target.resolve() / "metadata.py")
    assert f"{metadata}:8: version 'v1' is not a semantic version" in text
    assert "main.py: no on_execute" in text
    assert f"{metadata}:21: params.text: the port name 'text' is also inputs.text" in text
    assert f"{metadata}:14: inputs.anything: the port's type is or holds Any" in text
    assert f"{metadata}:15: inputs.items: the port's type is or holds Any" in text
    assert f"{metadata}:16: inputs.call: the type" in text and "cannot be expressed in JSON Schema" in text
    assert len(problems) == 6, problems


def test_an_untyped_port_is_reported_with_its_line(tmp_path: Path) -> None:
    target = write_function(tmp_path, inputs="text: str\nuntyped = 3")
    problems = validate(target)
    assert len(problems) == 1
    assert f"{target.resolve() / 'metadata.py'}:" in problems[0]
    assert "untyped" in problems[0] and "non-annotated" in problems[0]


def test_a_directory_without_a_function(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("x = 1\n")
    assert "no Function found" in validate(tmp_path)[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no main.py or metadata.py" in validate(empty)[0]


def _meta(version: str, **inputs: dict) -> dict:
    return {"version": version, "inputs": {"properties": inputs}, "params": {}, "outputs": {}}


def test_removed_or_retyped_ports_break_without_a_major_bump() -> None:
    old = _meta("1.0.0", text={"type": "string", "description": "a"}, n={"type": "integer"})
    assert needs_major(old, _meta("1.1.0", text={"type": "string", "description": "b"}, n={"type": "integer"})) == []
    removed = needs_major(old, _meta("1.1.0", text={"type": "string"}))
    assert removed == ['- inputs.n: removed ({"type":"integer"})']
    retyped = needs_major(old, _meta("1.0.1", text={"type": "integer"}, n={"type": "integer"}))
    assert retyped[0].startswith("~ inputs.text: type changed")
    assert needs_major(old, _meta("2.0.0", text={"type": "integer"})) == []
    assert changes(old, _meta("1.1.0", text={"type": "string"}, n={"type": "integer"},
                              extra={"type": "string"}))[1] == ['+ inputs.extra: added ({"type":"string"})']


def test_nested_models_are_compared_resolved() -> None:
    def meta(version: str, width: str) -> dict:
        return {"version": version, "inputs": {"properties": {"box": {"$ref": "#/$defs/Box"}},
                                               "$defs": {"Box": {"properties": {"w": {"type": width}}}}}}

    assert needs_major(meta("1.0.0", "integer"), meta("1.1.0", "string"))


def test_semver() -> None:
    assert is_semver("1.0.0") and is_semver("1.0.0-rc.1+build.5")
    assert not is_semver("v1") and not is_semver("1.0") and not is_semver("01.0.0")
    assert parse("1.0.0-rc.1") < parse("1.0.0") < parse("1.0.10") < parse("2.0.0")


def test_a_main_importing_what_only_the_image_has_still_validates(tmp_path: Path) -> None:
    """The seed's functions import torch in main.py; the build machine need not have it."""
    target = write_function(tmp_path)
    main = target / "main.py"
    (tmp_path / "main.txt").write_text(main.read_text())
    main.write_text("import torch_is_not_installed_here\n" + main.read_text())
    assert validate(target) == []
    main.write_text("import torch_is_not_installed_here\nfrom metadata import func\n")
    assert "no on_execute" in validate(target)[0]
    (target / "helpers.py").write_text("from . import nothing\n")
    main.write_text("import helpers\n")  # a module of the function's own: its failure is reported
    assert "importing the function failed: ImportError" in validate(target)[0]
    from servemesh.errors import FunctionInvalid
    from servemesh.functions import load_function

    main.write_text("import torch_is_not_installed_here\n" + (tmp_path / "main.txt").read_text())
    with pytest.raises(FunctionInvalid, match="ModuleNotFoundError"):  # serving needs everything
        load_function(target)
