"""Pydantic models generated from a definition: per-action inputs, state overrides.

Built once per app. Every model forbids unknown fields: a misspelt input is an
error naming it, never silently dropped.
"""

from __future__ import annotations

import enum
from typing import Any

import pydantic

from ..errors import ValidationError
from .definition import REQUIRED, ActionSpec, Definition

STRICT = pydantic.ConfigDict(extra="forbid")


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.replace("-", "_").split("_"))


def inputs_model(app: Definition, spec: ActionSpec) -> type[pydantic.BaseModel]:
    """``{<app>}{<Action>}Inputs``: the action's inputs."""
    fields: dict[str, Any] = {n: (ann, ... if d is REQUIRED else d) for n, (ann, d) in spec.inputs.items()}
    return pydantic.create_model(f"{_camel(app.name)}{_camel(spec.name)}Inputs", __config__=STRICT, **fields)


def overrides_model(app: Definition) -> type[pydantic.BaseModel]:
    """The state's fields, each optional: what a fork may override."""
    name = f"{_camel(app.name)}StateOverrides"
    if app.state_model is None:
        return pydantic.create_model(name, __config__=pydantic.ConfigDict(extra="allow"))
    fields = {n: (f.annotation | None, None) for n, f in app.state_model.model_fields.items()}  # type: ignore[operator]
    return pydantic.create_model(name, __config__=STRICT, **fields)  # type: ignore[call-overload]


def actions_enum(app: Definition) -> type[enum.Enum]:
    """The app's actions as a string enum: the type of ``next_method``."""
    return enum.Enum(f"{_camel(app.name)}Action", {n: n for n in app.actions}, type=str)  # type: ignore[misc,return-value]


class Models:
    """The generated models of one app, built once."""

    def __init__(self, app: Definition) -> None:
        self.app = app
        self.inputs = {name: inputs_model(app, spec) for name, spec in app.actions.items()}
        self.overrides = overrides_model(app)
        self.actions = actions_enum(app)

    def validate_inputs(self, action: str, inputs: dict[str, Any]) -> dict[str, Any]:
        model = self.inputs[action]
        try:
            parsed = model.model_validate(inputs)
        except pydantic.ValidationError as exc:
            raise _invalid(exc, action) from None
        return {name: getattr(parsed, name) for name in model.model_fields}

    def apply_overrides(self, state: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        merged = {**state, **overrides}
        if self.app.state_model is None:
            return merged
        try:
            return self.app.state_model.model_validate(merged).model_dump(mode="json")
        except pydantic.ValidationError as exc:
            raise _invalid(exc, "fork") from None


def _invalid(exc: pydantic.ValidationError, where: str) -> ValidationError:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err.get("loc", ())) or None
    return ValidationError(str(err.get("msg", "invalid")), field, where)
