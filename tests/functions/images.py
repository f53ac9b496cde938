"""Images in tests: a tiny base root file system, hand-written wheels (pip runs offline from
them), and an image pulled back from a registry, unpacked and its command run."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from servemesh.testing import free_port, wait_until


def rootfs_tar(path: Path) -> Path:
    """A base root file system (a tar): the image's Python is the test's own interpreter."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in (("etc/os-release", b"ID=servemesh-test\n"), ("tmp/.keep", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(out.getvalue())
    return path


def write_wheel(directory: Path, name: str, version: str, files: dict[str, str], tag: str = "py3-none-any") -> Path:
    """A pure-Python wheel written by hand, for the Pythons ``tag`` names: ``files`` are paths in the wheel."""
    directory.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    entries = {**files,
               f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
               f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: servemesh-tests\nRoot-Is-Purelib: true\n"
                                f"Tag: {tag}\n"}
    record = []
    for path, text in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    entries[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = directory / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in entries.items():
            zf.writestr(path, text)
    return wheel


def layer_files(data: bytes) -> dict[str, bytes]:
    """The regular files of a gzip layer blob, by path."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, check=True)


def pull_and_unpack(reference: str, work: Path) -> Path:
    """``skopeo copy`` the image into an OCI layout, ``umoci unpack`` it: the bundle directory."""
    layout = work / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{reference}", f"oci:{layout}:pulled")
    bundle = work / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:pulled", str(bundle)], check=True,
                   capture_output=True, timeout=120)
    return bundle


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def serve_unpacked(bundle: Path, work: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run the image's own command and environment against the unpacked root (no chroot: the
    test's interpreter stands in for the base image's python3, and nothing of the host's
    ``PYTHONPATH`` is passed on). Yields the URL once ``/ready`` answers 200, and the process."""
    root = bundle / "rootfs"
    process = json.loads((bundle / "config.json").read_text())["process"]
    port = free_port()
    args = [sys.executable if a == "python3" else str(root) + a if a.startswith("/app") else a
            for a in process["args"]]
    args[args.index("--port") + 1] = str(port)
    args[args.index("--host") + 1] = "127.0.0.1"
    env = dict(e.split("=", 1) for e in process["env"])
    env["PYTHONPATH"] = ":".join(str(root) + p for p in env["PYTHONPATH"].split(":"))
    env["SERVEMESH_STATE_DIR"] = str(work / "state")
    log = open(work / "served.log", "wb")
    proc = subprocess.Popen(args, cwd=root / process["cwd"].lstrip("/"), env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(url), "the unpacked function is ready", 30, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
