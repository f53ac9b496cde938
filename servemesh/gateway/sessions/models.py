"""The HTTP models of one app's session API, generated from its definition.

``{App}Session`` is the one response (``state`` typed by the app's state model,
``next_method`` an enum of its actions); each action gets ``{App}{Action}Request``
(``app_id``, ``partition_key`` and the action's inputs). Request models forbid
unknown fields.
"""

from __future__ import annotations

from typing import Any

import pydantic

from ...sessions.definition import REQUIRED, RESERVED, Definition
from ...sessions.records import MAX_ID, MAX_SEQUENCE, Session
from ...sessions.schema import STRICT, Models, _camel

AppId = pydantic.constr(min_length=1, max_length=MAX_ID)  # type: ignore[misc]
PartitionKey = pydantic.constr(max_length=MAX_ID)  # type: ignore[misc]
Sequence = pydantic.conint(ge=0, le=MAX_SEQUENCE)  # type: ignore[misc]


class LineageModel(pydantic.BaseModel):
    partition_key: str
    app_id: str
    sequence_id: int


class SessionKey(pydantic.BaseModel):
    model_config = STRICT
    app_id: AppId  # type: ignore[valid-type]
    partition_key: PartitionKey = ""  # type: ignore[valid-type]


class PartitionsPage(pydantic.BaseModel):
    partitions: list[str]
    cursor: str | None = None


class HttpModels:
    """Every model of one app's API, built once."""

    def __init__(self, app: Definition, models: Models | None = None) -> None:
        self.domain = models or Models(app)
        name = _camel(app.name)
        state: Any = app.state_model or dict[str, Any]
        self.session = pydantic.create_model(
            f"{name}Session",
            state=(state, ...), next_method=(self.domain.actions | None, ...),  # type: ignore[operator,arg-type]
            last_method=(str | None, None), app_id=(str, ...), partition_key=(str, ...), sequence_id=(int, ...),
            parent=(LineageModel | None, None), created_at=(float, ...), updated_at=(float, ...),
            __doc__=f"A session of {app.name}: its state and the action it may run next.")
        self.page = pydantic.create_model(f"{name}SessionPage", items=(list[self.session], ...),  # type: ignore[name-defined]
                                          cursor=(str | None, None))
        self.requests: dict[str, type[pydantic.BaseModel]] = {}
        for action, spec in app.actions.items():
            fields: dict[str, Any] = {n: (ann, ... if d is REQUIRED else d) for n, (ann, d) in spec.inputs.items()
                                      if n not in RESERVED}
            self.requests[action] = pydantic.create_model(
                f"{name}{_camel(action)}Request", __base__=SessionKey, **fields)
        overrides = self.domain.overrides
        self.fork = pydantic.create_model(
            f"{name}ForkRequest", __base__=SessionKey, new_app_id=(AppId, ...),
            new_partition_key=(PartitionKey | None, None), at_sequence_id=(Sequence | None, None),  # type: ignore[operator,arg-type]
            state_overrides=(overrides, pydantic.Field(default_factory=overrides)))
        self.step = pydantic.create_model(
            f"{name}Step", sequence_id=(int, ...), method=(str | None, ...), inputs=(dict[str, Any], ...),
            state=(state, ...), next_method=(str | None, ...), created_at=(float, ...))
        self.history = pydantic.create_model(f"{name}History", steps=(list[self.step], ...))  # type: ignore[name-defined]


def session_body(session: Session) -> dict[str, Any]:
    """A session as the body of ``{App}Session``."""
    parent = session.parent
    return {"state": session.state, "next_method": session.next_action, "last_method": session.last_action,
            "app_id": session.app_id, "partition_key": session.partition_key,
            "sequence_id": session.sequence_id,
            "parent": None if parent is None else {"partition_key": parent.partition_key, "app_id": parent.app_id,
                                                   "sequence_id": parent.sequence_id},
            "created_at": session.created_at, "updated_at": session.updated_at}
