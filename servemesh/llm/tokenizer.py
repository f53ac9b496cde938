"""Tokenizers the processor can use: a byte-level one (mock engine) and a GGUF model's own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..errors import ConfigError, ValidationError


class Tokenizer(Protocol):
    name: str
    stop_token_ids: list[int]

    def encode(self, text: str) -> list[int]: ...

    def token_bytes(self, token_id: int) -> bytes: ...

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> str: ...


def _content_text(content: Any) -> str:
    """OpenAI message content: a string, or a list of parts of which text parts count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(part.get("text", "")) for part in content if part.get("type") == "text")


class ByteTokenizer:
    """One token per UTF-8 byte (ids 0-255), BOS 256, EOS 257. Deterministic and tiny:
    the mock engine's vocabulary, and a fair test of multi-byte detokenization."""

    BOS = 256
    EOS = 257

    def __init__(self, name: str = "mock") -> None:
        self.name = name
        self.stop_token_ids = [self.EOS]

    def encode(self, text: str) -> list[int]:
        return [self.BOS, *text.encode("utf-8")]

    def token_bytes(self, token_id: int) -> bytes:
        return bytes((token_id,)) if 0 <= token_id < 256 else b""

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> str:
        parts = [f"<|{m['role']}|>\n{_content_text(m.get('content'))}\n" for m in messages]
        return "".join(parts) + "<|assistant|>\n"


#: Chat formats for GGUF files that carry no ``tokenizer.chat_template``, by architecture.
BUILTIN_TEMPLATES = {
    # Gemma: system text joins the first user turn; the model's turn is "model"
    "gemma": (
        "{{ bos_token }}"
        "{% set system = namespace(text='') %}"
        "{% for m in messages %}{% if m['role'] in ['system', 'developer'] %}"
        "{% set system.text = system.text + m['content'] + '\n\n' %}{% endif %}{% endfor %}"
        "{% set first = namespace(done=false) %}"
        "{% for m in messages if m['role'] not in ['system', 'developer'] %}"
        "{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
        "<start_of_turn>{{ role }}\n"
        "{% if not first.done and role == 'user' %}{{ system.text }}{% set first.done = true %}{% endif %}"
        "{{ m['content'] | trim }}<end_of_turn>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
}


class GGUFTokenizer:
    """The vocabulary and chat template stored in a GGUF file (loaded vocab-only: fast)."""

    def __init__(self, model_path: str, name: str) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise ConfigError("the GGUF tokenizer needs llama-cpp-python: pip install 'servemesh[llm]'") from exc
        self.name = name
        self._llm = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)
        meta: dict[str, str] = dict(self._llm.metadata)
        arch = meta.get("general.architecture", "")
        # the file's own template, else the documented format of its architecture
        self._template_text = meta.get("tokenizer.chat_template") or BUILTIN_TEMPLATES.get(arch.rstrip("0123456789"))
        eos = self._llm.token_eos()
        self.stop_token_ids = [eos]
        for special in ("<end_of_turn>", "<|eot_id|>", "<|im_end|>"):
            ids = self._llm.tokenize(special.encode(), add_bos=False, special=True)
            if len(ids) == 1 and ids[0] not in self.stop_token_ids:
                self.stop_token_ids.append(ids[0])
        self._bos = self._llm._model.token_get_text(self._llm.token_bos())
        self._eos = self._llm._model.token_get_text(eos)
        self._template: Any = None
        self._pieces: dict[int, bytes] = {}

    def encode(self, text: str) -> list[int]:
        # the chat template already starts with the BOS token; add it only when absent
        add_bos = not text.startswith(self._bos)
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = b"" if token_id in self.stop_token_ids else self._piece(token_id)
        return piece

    def _piece(self, token_id: int) -> bytes:
        import ctypes

        import llama_cpp

        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self._llm._model.vocab, token_id, buf, size, 0, False)
            if n >= 0:
                return buf.raw[:n]
            size = -n  # the piece needs this many bytes

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> str:
        if self._template is None:
            if not self._template_text:
                raise ValidationError(f"model {self.name} has no chat template: use /v1/completions with a prompt",
                                      field="messages")
            import jinja2
            import jinja2.sandbox

            def raise_exception(message: str) -> None:
                raise ValueError(message)

            env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self._template_text)
        msgs = [{"role": m["role"], "content": _content_text(m.get("content"))} for m in messages]
        try:
            return str(self._template.render(messages=msgs, add_generation_prompt=True,
                                             bos_token=self._bos, eos_token=self._eos))
        except ValueError as exc:  # the template's own check (e.g. roles must alternate)
            raise ValidationError(str(exc), field="messages") from exc
