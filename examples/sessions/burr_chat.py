"""A small Burr application, unchanged by serving: a chat that echoes (pydantic state, one streaming action).

    servemesh sessions serve examples/sessions/burr_chat.py:builder
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pydantic
from burr.core import ApplicationBuilder, State, action
from burr.core.action import streaming_action
from burr.integrations.pydantic import PydanticTypingSystem


class ChatState(pydantic.BaseModel):
    history: list[str] = []
    prompt: str = ""
    reply: str = ""
    turns: int = 0


@action(reads=["history"], writes=["history", "prompt"])
def ask(state: State, message: str, shout: bool = False) -> State:
    if message == "boom":
        raise RuntimeError("the model is on fire")
    text = message.upper() if shout else message
    return state.update(prompt=text).append(history=f"user: {text}")


@streaming_action(reads=["prompt", "turns"], writes=["reply", "history", "turns"])
async def answer(state: State, style: str = "echo") -> AsyncGenerator[tuple[dict, State | None], None]:
    words = [style + ":", *state["prompt"].split()]
    for word in words:
        yield {"delta": word + " "}, None
    reply = " ".join(words)
    yield {"reply": reply}, state.update(reply=reply, turns=state["turns"] + 1).append(history=f"bot: {reply}")


def builder() -> ApplicationBuilder:
    """The application definition: what a Burr user already has."""
    return (
        ApplicationBuilder()
        .with_actions(ask=ask, answer=answer)
        .with_transitions(("ask", "answer"), ("answer", "ask"))
        .with_typing(PydanticTypingSystem(ChatState))
        .with_state(ChatState())
        .with_entrypoint("ask")
    )


def application():  # a built Burr Application
    return builder().build()
