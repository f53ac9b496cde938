"""Persona 1, the default user: a class, an endpoint, `python3 persona1_default.py`.

serve() does everything: builds the runtime, constructs the class, serves
`demo.worker.generate`, and stops gracefully on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import BaseModel, Field

import servemesh
from servemesh import endpoint, service


class ChatRequest(BaseModel):
    prompt: str
    max_tokens: int = Field(default=8, ge=1, le=256)


class Token(BaseModel):
    text: str
    index: int


@service(name="worker", namespace="demo")
class Worker:
    def __init__(self) -> None:
        self.prefix = "echo"

    @endpoint()
    async def generate(self, request: ChatRequest) -> AsyncIterator[Token]:
        words = f"{self.prefix}: {request.prompt}".split()
        for i in range(request.max_tokens):
            yield Token(text=words[i % len(words)], index=i)


if __name__ == "__main__":
    servemesh.configure_logging()
    servemesh.run(Worker)
