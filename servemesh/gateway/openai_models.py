"""OpenAI request bodies the frontend accepts, and their bounds.

Unknown fields are ignored, as OpenAI's own. Types are strict where OpenAI is
(``"stream": "yes"`` and ``"max_tokens": "5"`` are 400s, not coerced), numbers stay
within their wire types (int32 token counts, int64 seeds), and every text must be
valid Unicode: a lone surrogate (``"\\ud800"`` is valid JSON) is a 400 naming the
field, here rather than a failure deeper down.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

#: OpenAI's own limit on stop sequences
MAX_STOP = 4
#: characters of one stop sequence (matching costs grow with its square)
MAX_STOP_CHARS = 256
MAX_MESSAGES = 2048
#: characters of a whole prompt (every message's text together)
MAX_PROMPT_CHARS = 1 << 20
#: token counts are int32 on the wire of most engines
MAX_TOKENS = 2**31 - 1
MAX_MODEL_CHARS = 256
MAX_N = 128


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"holds a lone surrogate at position {exc.start}: text must be valid Unicode") from None
    return text


def _all_unicode(value: Any) -> Any:
    """Every string in a JSON value is valid Unicode (content parts, tool arguments, ...)."""
    if isinstance(value, str):
        _unicode(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _all_unicode(key)
            _all_unicode(item)
    elif isinstance(value, list):
        for item in value:
            _all_unicode(item)
    return value


def _stops(value: str | list[str] | None) -> str | list[str] | None:
    stops = [value] if isinstance(value, str) else value or []
    if len(stops) > MAX_STOP:
        raise ValueError(f"at most {MAX_STOP} stop sequences, not {len(stops)}")
    for stop in stops:
        _unicode(stop)
        if len(stop) > MAX_STOP_CHARS:
            raise ValueError(f"a stop sequence has at most {MAX_STOP_CHARS} characters, not {len(stop)}")
    return value


def text_of(content: str | list[dict[str, Any]] | None) -> int:
    """Characters of a message's text (the text parts of a list)."""
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    return sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))


Text = Annotated[str, AfterValidator(_unicode)]
Content = Annotated[str | list[dict[str, Any]] | None, AfterValidator(_all_unicode)]
Stop = Annotated[str | list[str] | None, AfterValidator(_stops)]
Tokens = Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class Message(_Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Content = None


def _prompt_size(messages: list[Message]) -> list[Message]:
    total = sum(text_of(m.content) for m in messages)
    if total > MAX_PROMPT_CHARS:
        raise ValueError(f"the messages hold {total} characters; at most {MAX_PROMPT_CHARS}")
    return messages


class _Common(_Strict):
    model: Text = Field(min_length=1, max_length=MAX_MODEL_CHARS)
    max_tokens: Tokens = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: Stop = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Common):
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES),
                        AfterValidator(_prompt_size)]
    max_completion_tokens: Tokens = None


class CompletionRequest(_Common):
    prompt: Annotated[Text, Field(max_length=MAX_PROMPT_CHARS)] | list[
        Annotated[Text, Field(max_length=MAX_PROMPT_CHARS)]]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every failure's body: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail
