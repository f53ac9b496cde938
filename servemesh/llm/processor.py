"""The processor: chat template, tokenization, the engine call, detokenization, stop strings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from ..errors import ValidationError
from ..runtime import Client, Context
from ..runtime.ready import ready_batches
from ..sdk import ServiceContext, async_init, endpoint, service
from .protocol import EngineRequest, ProcessorOutput, ProcessorRequest, engine_output
from .text import IncrementalDetokenizer, StopMatcher
from .tokenizer import Tokenizer

log = logging.getLogger("servemesh.llm.processor")

ENGINE_PATH = "inference.engine.generate"
PROCESSOR_PATH = "inference.processor.process"


def _capabilities(self: Processor) -> dict[str, object]:
    caps: dict[str, object] = {"model": self.tokenizer.name}
    if self.context_length is not None:
        caps["context_length"] = self.context_length
    return caps


@service(name="processor", namespace="inference", capabilities=_capabilities)
class Processor:
    """Serves ``inference.processor.process`` for one model: text in, text deltas out.

    It calls the engines serving that model (``engine_path``; point it at the router
    component to route there instead), passing its context so a disconnect upstream
    stops generation downstream. It registers only once it sees an engine of its
    model, so a frontend that lists the model can have its requests served. It
    registers the smallest ``context_length`` its engines declare (if they do), and
    refuses a prompt that does not leave room for ``max_tokens`` in it."""

    def __init__(self, ctx: ServiceContext, tokenizer: Tokenizer, engine_path: str = ENGINE_PATH,
                 router: str = "least_loaded") -> None:
        self.ctx = ctx
        self.tokenizer = tokenizer
        self.engine_path = engine_path
        self.router = router
        self.engine: Client | None = None
        self.context_length: int | None = None

    @async_init
    async def connect(self) -> None:
        self.engine = await self.ctx.runtime.endpoint(self.engine_path).client(
            router=self.router,  # type: ignore[arg-type]
            capabilities={"model": self.tokenizer.name})
        if not self.engine.instance_ids():
            log.info("waiting for an engine of %s at %s before serving", self.tokenizer.name, self.engine_path)
        await self.engine.wait_for_instances()
        lengths = [i.capabilities.get("context_length") for i in self.engine.instances()]
        known = [n for n in lengths if isinstance(n, int) and n > 0]
        self.context_length = min(known) if known else None

    @endpoint()
    async def process(self, request: ProcessorRequest, context: Context) -> AsyncIterator[ProcessorOutput]:
        assert self.engine is not None
        tok = self.tokenizer
        field = "messages" if request.messages is not None else "prompt"
        if request.messages is not None:
            prompt = tok.chat_prompt([m.model_dump() for m in request.messages])
        else:
            prompt = request.prompt or ""
        try:
            token_ids = await asyncio.to_thread(tok.encode, prompt) if len(prompt) > 4096 else tok.encode(prompt)
        except UnicodeEncodeError as exc:
            raise ValidationError(f"holds a lone surrogate at position {exc.start}: text must be valid Unicode",
                                  field=field) from None
        limit = self.context_length
        if limit is not None and len(token_ids) + request.sampling.max_tokens > limit:
            raise ValidationError(f"the prompt has {len(token_ids)} tokens and max_tokens is "
                                  f"{request.sampling.max_tokens}: together over the model's context length of "
                                  f"{limit} tokens; shorten the prompt or lower max_tokens", field=field)
        engine_request = EngineRequest(model=tok.name, token_ids=token_ids, sampling=request.sampling,
                                       stop_token_ids=tok.stop_token_ids)
        detok = IncrementalDetokenizer(tok.token_bytes)
        stops = StopMatcher(request.stop)
        produced = 0
        finish = "length"
        stream = self.engine.generate(engine_request, context=context, annotated=False)
        batches = ready_batches(stream)
        try:
            async for batch in batches:  # the engine's tokens that were ready together, relayed together
                pieces: list[str] = []
                hit = False
                for item in batch:
                    out = engine_output(item)
                    produced += len(out.token_ids)
                    text, hit = stops.push(detok.push(out.token_ids))
                    if text:
                        pieces.append(text)
                    if hit:
                        finish = "stop"
                        break
                    if out.finish_reason is not None:
                        finish = out.finish_reason  # the engine's stream ends right after this item
                if pieces:
                    yield _output(pieces)
                if hit:
                    break  # leaving the loop cancels the engine's generation
        finally:
            await batches.aclose()
            await stream.aclose()
        if not stops.stopped:
            tail, _ = stops.push(detok.flush())
            tail += stops.flush()
            if tail:
                yield ProcessorOutput(text=tail)
        yield ProcessorOutput(finish_reason=finish, prompt_tokens=len(token_ids),  # type: ignore[arg-type]
                              completion_tokens=produced)


def _output(pieces: list[str]) -> ProcessorOutput:
    """One item for the text of several tokens (``ProcessorOutput.pieces``)."""
    if len(pieces) == 1:
        return ProcessorOutput(text=pieces[0])
    return ProcessorOutput(text="".join(pieces), pieces=[len(p) for p in pieces])
