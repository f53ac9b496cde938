"""The session API through HTTP: a Burr app served unchanged by the one-call server,
and mounted into a user's own FastAPI app (the router and post / post_streaming)."""

from __future__ import annotations

import datetime
import enum

import httpx
import pydantic
import pytest
from fastapi import FastAPI

from servemesh import DistributedRuntime
from servemesh.gateway.sessions import session_router
from servemesh.gateway.sessions.chat import ChatFlavour
from servemesh.gateway.sessions.fastapi import post, post_streaming
from servemesh.http import HttpServer
from servemesh.sessions import BurrApp, Sessions, open_store

from .sessions_helpers import burr_chat, parse_sse, served

KEY = {"app_id": "a1", "partition_key": "p"}


async def whole_api(c: httpx.AsyncClient, prefix: str) -> None:
    """Every route of the session API, for the Burr chat app under ``prefix``."""
    r = await c.get(f"{prefix}/exists", params=KEY)
    assert r.status_code == 404 and "getOrCreate" in r.json()["error"]
    r = await c.post(f"{prefix}/getOrCreate", json=KEY)
    assert r.status_code == 200
    body = r.json()
    assert body["state"] == {"history": [], "prompt": "", "reply": "", "turns": 0}
    assert (body["next_method"], body["sequence_id"], body["app_id"], body["partition_key"]) == ("ask", 0, "a1", "p")
    assert (await c.get(f"{prefix}/exists", params=KEY)).json()["sequence_id"] == 0  # persisted at once
    listed = (await c.get(f"{prefix}/list", params={"partition_key": "p"})).json()
    assert [s["app_id"] for s in listed["items"]] == ["a1"] and listed["cursor"] is None

    # the wrong action: 409 naming the next one
    r = await c.post(f"{prefix}/answer", json=KEY)
    assert r.status_code == 409 and r.json()["next_action"] == "ask"
    # bad and unknown inputs: 422 naming the field
    r = await c.post(f"{prefix}/ask", json={**KEY, "message": ["not", "text"]})
    assert r.status_code == 422 and r.json()["field"] == "message"
    r = await c.post(f"{prefix}/ask", json={**KEY, "message": "hi", "temperature": 2})
    assert r.status_code == 422 and r.json()["field"] == "temperature"
    # a failing action: 500 with its error; the stored state is as it was
    r = await c.post(f"{prefix}/ask", json={**KEY, "message": "boom"})
    assert r.status_code == 500 and r.json()["error_type"] == "RuntimeError" and "on fire" in r.json()["error"]
    assert (await c.get(f"{prefix}/exists", params=KEY)).json()["sequence_id"] == 0

    r = await c.post(f"{prefix}/ask", json={**KEY, "message": "hello world", "shout": True},
                     headers={"If-Match": "0"})
    assert r.status_code == 200 and r.headers["etag"] == '"1"'
    assert r.json()["state"]["prompt"] == "HELLO WORLD" and r.json()["next_method"] == "answer"
    # a stale If-Match: 409, nothing stored
    r = await c.post(f"{prefix}/answer", json=KEY, headers={"If-Match": "0"})
    assert r.status_code == 409 and r.json()["sequence_id"] == 1
    # streaming: chunks, then the typed state
    r = await c.post(f"{prefix}/answer/stream", json={**KEY, "style": "bot"}, headers={"If-Match": '"1"'})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = parse_sse(r.text)
    assert [f["chunk"]["delta"] for f in frames[:-2]] == ["bot: ", "HELLO ", "WORLD "]
    assert frames[-2]["session"]["state"]["reply"] == "bot: HELLO WORLD" and frames[-1] == "[DONE]"
    assert frames[-2]["session"]["sequence_id"] == 2 and frames[-2]["session"]["next_method"] == "ask"
    r = await c.post(f"{prefix}/ask", json={**KEY, "message": "again"})
    assert r.json()["sequence_id"] == 3

    # fork at a sequence id, with overrides: lineage stored and returned
    r = await c.post(f"{prefix}/fork", json={**KEY, "new_app_id": "a2", "at_sequence_id": 1,
                                              "state_overrides": {"turns": 7}})
    assert r.status_code == 201
    fork = r.json()
    assert fork["parent"] == {"partition_key": "p", "app_id": "a1", "sequence_id": 1}
    assert fork["state"]["prompt"] == "HELLO WORLD" and fork["state"]["turns"] == 7
    assert fork["next_method"] == "answer" and fork["sequence_id"] == 0
    again = (await c.get(f"{prefix}/exists", params={"app_id": "a2", "partition_key": "p"})).json()
    assert again["parent"] == fork["parent"]
    r = await c.post(f"{prefix}/fork", json={**KEY, "new_app_id": "a3", "state_overrides": {"turns": "many"}})
    assert r.status_code == 422 and r.json()["field"] == "state_overrides.turns"
    r = await c.post(f"{prefix}/fork", json={**KEY, "new_app_id": "a3", "state_overrides": {"nope": 1}})
    assert r.status_code == 422

    steps = (await c.get(f"{prefix}/history", params=KEY)).json()["steps"]
    assert [(s["sequence_id"], s["method"]) for s in steps] == [(0, None), (1, "ask"), (2, "answer"), (3, "ask")]
    assert steps[1]["inputs"] == {"message": "hello world", "shout": True}
    await c.post(f"{prefix}/getOrCreate", json={"app_id": "z", "partition_key": "q"})
    assert (await c.get(f"{prefix}/partitions")).json()["partitions"] == ["p", "q"]
    page = (await c.get(f"{prefix}/list", params={"limit": 2})).json()
    rest = (await c.get(f"{prefix}/list", params={"limit": 2, "cursor": page["cursor"]})).json()
    assert [s["app_id"] for s in page["items"] + rest["items"]] == ["a1", "a2", "z"]

    assert (await c.delete(f"{prefix}/session", params={"app_id": "a2", "partition_key": "p"})).status_code == 204
    assert (await c.get(f"{prefix}/exists", params={"app_id": "a2", "partition_key": "p"})).status_code == 404

    schema = (await c.get("/openapi.json")).json()
    names = set(schema["components"]["schemas"])
    assert {"ChatState", "ChatSession", "ChatAskRequest", "ChatAnswerRequest", "ChatAction"} <= names
    ask = schema["components"]["schemas"]["ChatAskRequest"]
    assert ask["required"] == ["app_id", "message"] and ask["additionalProperties"] is False
    assert schema["components"]["schemas"]["ChatAction"]["enum"] == ["ask", "answer"]


async def test_a_burr_app_served_by_the_one_call_server(tmp_path):
    async with DistributedRuntime() as rt, served(burr_chat.builder, rt, store=f"sqlite:///{tmp_path}/s.db",
                                                  name="chat", chat=ChatFlavour(["ask", "answer"])) as client:
        assert (await client.get("/ready")).json()["ready"] is True
        await whole_api(client, "/chat")


async def test_a_burr_app_mounted_in_a_users_fastapi_app(tmp_path):
    """The router and the seed's post / post_streaming, in the user's own app and server."""

    class Reply(pydantic.BaseModel):
        prompt: str
        turns: int = 0
        mood: str = "calm"  # not in the state: its default

    class Summary(pydantic.BaseModel):
        turns: int
        action: str

    sessions = await Sessions(BurrApp(burr_chat.builder(), name="chat"), open_store(f"{tmp_path}/s.db")).open()
    user_app = FastAPI(title="mine")
    user_app.include_router(session_router(sessions.app, sessions, prefix="/chat"))
    single = burr_chat.application()
    post("/api/v0/ask", user_app, single, halt_after=["ask"], response_model=Reply)
    post_streaming("/api/v0/answer", user_app, single, halt_after=["answer"])

    @post("/api/v0/summary", user_app, single, halt_after=["ask"])
    def summary(state: dict, action: str, result: dict | None) -> Summary:
        return Summary(turns=state["turns"], action=action)

    server = HttpServer(user_app, "127.0.0.1", 0)
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            await whole_api(c, "/chat")
            r = await c.post("/api/v0/ask", json={"message": "hi there"})
            assert r.status_code == 200 and r.json() == {"prompt": "hi there", "turns": 0, "mood": "calm"}
            r = await c.post("/api/v0/ask", json={"mesage": "typo"})
            assert r.status_code == 422 and r.json()["field"] == "message"
            r = await c.post("/api/v0/answer", json={"style": "s"})
            frames = parse_sse(r.text)
            assert [f["chunk"]["delta"] for f in frames[:-2]] == ["s: ", "hi ", "there "]
            assert frames[-2]["state"]["reply"] == "s: hi there" and frames[-2]["state"]["turns"] == 1  # state type
            r = await c.post("/api/v0/summary", json={"message": "more"})
            assert r.json() == {"turns": 1, "action": "ask"}
            r = await c.post("/api/v0/summary", json={"message": "boom"})
            assert r.status_code == 500 and r.json()["error_type"] == "RuntimeError"
            schema = (await c.get("/openapi.json")).json()
            ok = schema["paths"]["/api/v0/summary"]["post"]["responses"]["200"]["content"]["application/json"]
            assert ok["schema"]["$ref"].endswith("/Summary")
            assert schema["paths"]["/api/v0/ask"]["post"]["responses"]["200"]["content"]["application/json"][
                "schema"]["$ref"].endswith("/Reply")
    finally:
        await server.stop()
        await sessions.close()


async def test_the_openai_flavour_drives_a_session(tmp_path):
    async with DistributedRuntime() as rt, served(burr_chat.builder, rt, store="memory://", name="chat",
                                                  chat=ChatFlavour(["ask", "answer"])) as c:
        from openai import AsyncOpenAI

        oai = AsyncOpenAI(base_url=f"{str(c.base_url).rstrip('/')}/v1", api_key="unused")
        out = await oai.chat.completions.create(model="chat", user="u1",
                                                messages=[{"role": "user", "content": "hi you"}])
        assert out.choices[0].message.content == "echo: hi you"
        stream = await oai.chat.completions.create(model="chat", user="u1", stream=True,
                                                   messages=[{"role": "user", "content": "and again"}])
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
        assert text == "echo: and again "
        session = (await c.get("/chat/exists", params={"app_id": "u1", "partition_key": ""})).json()
        assert session["state"]["turns"] == 2 and session["sequence_id"] == 4
        r = await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "user"


@pytest.mark.parametrize("store", ["memory://", "sqlite"])
async def test_plain_app_served_over_http(tmp_path, store):
    from .sessions_helpers import counter

    url = f"sqlite:///{tmp_path}/c.db" if store == "sqlite" else store
    async with DistributedRuntime() as rt, served(counter.app, rt, store=url) as c:
        await c.post("/counter/getOrCreate", json={"app_id": "x"})
        r = await c.post("/counter/add", json={"app_id": "x", "amount": 100})
        assert r.json()["next_method"] == "countdown"
        r = await c.post("/counter/countdown/stream", json={"app_id": "x", "step": 30})
        frames = parse_sse(r.text)
        assert [f["chunk"] for f in frames[:-2]] == [100, 70, 40, 10]
        assert frames[-2]["session"]["state"]["total"] == 0
        r = await c.post("/counter/add", json={"app_id": "x", "amount": -1})
        assert r.status_code == 500 and r.json()["error_type"] == "ValueError"
        r = await c.post("/counter/add", json={"app_id": "x", "amount": "lots"})
        assert r.status_code == 422 and r.json()["field"] == "amount"


async def test_a_client_leaving_a_stream_cancels_the_action_and_stores_nothing():
    import asyncio

    from servemesh.sessions import StatefulApp

    class Talk(pydantic.BaseModel):
        said: list[str] = []

    talk = StatefulApp("talk", Talk)
    cancelled = asyncio.Event()

    @talk.action
    async def speak(state: Talk, word: str):
        yield word
        try:
            await asyncio.Event().wait()  # never ends by itself: only a cancellation stops it
        except asyncio.CancelledError:
            cancelled.set()
            raise
        yield state

    talk.transitions(("speak", "speak"))
    async with DistributedRuntime() as rt, served(talk, rt, store="memory://") as c:
        await c.post("/talk/getOrCreate", json={"app_id": "t"})
        async with c.stream("POST", "/talk/speak/stream", json={"app_id": "t", "word": "hi"}) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    assert line == 'data: {"chunk":"hi"}'
                    break
        await asyncio.wait_for(cancelled.wait(), 10)
        session = (await c.get("/talk/exists", params={"app_id": "t"})).json()
        assert session["sequence_id"] == 0 and session["state"] == {"said": []}


class Mood(enum.Enum):
    calm = "calm"
    loud = "loud"


class Note(pydantic.BaseModel):
    text: str
    at: datetime.date


class Diary(pydantic.BaseModel):
    notes: list[Note] = []
    mood: Mood = Mood.calm


async def test_typed_inputs_nested_models_dates_and_enums_travel_to_a_replica(etcd, namespace):
    from servemesh.sessions import StatefulApp

    diary = StatefulApp("diary", Diary)

    @diary.action
    def write(state: Diary, note: Note, mood: Mood = Mood.calm) -> Diary:
        return state.model_copy(update={"notes": [*state.notes, note], "mood": mood})

    diary.transitions(("write", "write"))
    from .test_sessions_replicas import replicas_and_gateway

    # the replica runs in a runtime of its own: the inputs cross TCP
    async with replicas_and_gateway(etcd, namespace, diary, "memory://", replicas=1) as c:
        await c.post("/diary/getOrCreate", json={"app_id": "d"})
        r = await c.post("/diary/write", json={"app_id": "d", "note": {"text": "hi", "at": "2026-12-01"},
                                               "mood": "loud"})
        assert r.status_code == 200, r.text
        assert r.json()["state"] == {"notes": [{"text": "hi", "at": "2026-12-01"}], "mood": "loud"}
        r = await c.post("/diary/write", json={"app_id": "d", "note": {"text": "x", "at": "someday"}})
        assert r.status_code == 422 and r.json()["field"] == "note.at"
