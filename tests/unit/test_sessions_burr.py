"""Burr specifics: the definition read from a Burr app, and a Burr persister as the store."""

from __future__ import annotations

import sys
from pathlib import Path

from burr.core import ApplicationBuilder
from burr.core.persistence import SQLLitePersister

from servemesh.sessions import BurrApp, BurrPersisterStore, Sessions

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "sessions"))
import burr_chat


def test_the_definition_read_from_a_burr_app():
    app = BurrApp(burr_chat.builder(), name="chat")
    assert (app.entrypoint, list(app.actions), app.state_model) == ("ask", ["ask", "answer"], burr_chat.ChatState)
    assert app.actions["ask"].inputs == {"message": (str, ...), "shout": (bool, False)}
    assert app.actions["answer"].streaming and app.actions["answer"].inputs == {"style": (str, "echo")}
    assert app.initial_state() == {"history": [], "prompt": "", "reply": "", "turns": 0}


async def test_a_burr_persister_as_the_store_is_read_by_burr_itself(tmp_path):
    db = str(tmp_path / "burr.db")
    persister = SQLLitePersister(db_path=db, table_name="burr_state", connect_kwargs={"check_same_thread": False})
    persister.initialize()
    app = BurrApp(burr_chat.builder(), name="chat")
    sessions = await Sessions(app, BurrPersisterStore(persister, app)).open()
    await sessions.get_or_create("p", "s1")
    await sessions.run("p", "s1", "ask", {"message": "hi"})

    # a plain Burr application resumes the session from the persister
    resumed = (ApplicationBuilder().with_graph(app.graph).with_typing(app.typing)
               .initialize_from(persister, resume_at_next_action=True, default_state={},
                                default_entrypoint="ask")
               .with_identifiers(app_id="s1", partition_key="p").build())
    assert resumed.state["prompt"] == "hi" and resumed.get_next_action().name == "answer"
    *_, state = await resumed.astep(inputs={"style": "burr"})
    assert state["reply"] == "burr: hi"
    persister.save("p", "s1", resumed.sequence_id, "answer", state, "completed")

    # and a session Burr saved is found by a fresh store on the same persister
    again = await Sessions(app, BurrPersisterStore(persister, app)).open()
    found = await again.get("p", "s1")
    assert (found.state["reply"], found.next_action, found.sequence_id) == ("burr: hi", "ask", 2)
    assert [s.app_id for s in (await again.list_sessions("p")).items] == ["s1"]
    after = await again.run("p", "s1", "ask", {"message": "more"}, if_match=2)
    assert after.sequence_id == 3 and persister.load("p", "s1")["state"]["prompt"] == "more"
