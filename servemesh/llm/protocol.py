"""What flows between the pipeline's components (wire structs, validated on arrival).

Requests are pydantic models (validated by the endpoint, with errors that name the
field). The streamed outputs, one per token or burst, are msgspec Structs: cheap to
make, encoded natively on the wire; a reader validates what arrives with
:func:`engine_output` / :func:`processor_output`.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from pydantic import BaseModel, Field


class SamplingParams(BaseModel):
    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None


class EngineRequest(BaseModel):
    """Processor → engine: token ids in, token ids out."""

    model: str
    token_ids: list[int] = Field(min_length=1)
    sampling: SamplingParams = SamplingParams()
    stop_token_ids: list[int] = []


class EngineOutput(msgspec.Struct, omit_defaults=True):
    """Engine → processor, streamed: new token ids, and last a finish reason."""

    token_ids: list[int] = []
    finish_reason: Literal["stop", "length"] | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, object]] | None = None


class ProcessorRequest(BaseModel):
    """Frontend → processor: an OpenAI-style chat or completion request, validated."""

    model: str
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    sampling: SamplingParams = SamplingParams()
    stop: list[str] = []


class ProcessorOutput(msgspec.Struct, omit_defaults=True):
    """Processor → frontend, streamed: text deltas, then finish reason and usage.

    Tokens that were ready together travel in one item: ``text`` is all of their
    text, and ``pieces`` (when there are several) the lengths of the per-token
    pieces it is made of, in order, so the frontend can still stream one delta per
    token."""

    text: str = ""
    pieces: list[int] | None = None
    finish_reason: Literal["stop", "length"] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def engine_output(item: Any) -> EngineOutput:
    """An engine's streamed item as an ``EngineOutput`` (as it is in process; validated
    from its wire form; ``msgspec.ValidationError`` says what is wrong)."""
    return item if type(item) is EngineOutput else msgspec.convert(item, EngineOutput)


def processor_output(item: Any) -> ProcessorOutput:
    """A processor's streamed item as a ``ProcessorOutput`` (see :func:`engine_output`)."""
    return item if type(item) is ProcessorOutput else msgspec.convert(item, ProcessorOutput)
