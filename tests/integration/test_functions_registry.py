"""The daemonless builder against a real registry (Debian's docker-registry on a free loopback
port): build and push, `skopeo inspect`, rebuilds that push nothing or one small layer,
refused overwrites and breaking changes, basic and bearer-token auth, and the image pulled
back (`skopeo copy`), unpacked (`umoci unpack`) and served from its root file system."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from servemesh.errors import PushRefused, RegistryError
from servemesh.functions.build import BuildOptions, Credentials, RegistryClient, build, push
from servemesh.functions.build.deps import SITE
from servemesh.functions.build.oci import METADATA_LABEL
from servemesh.testing import RegistryServer, TokenServer, free_port, wait_until
from tests.functions.dirs import write_function

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryServer]:
    with RegistryServer() as server:
        yield server


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A tiny base root file system (a tar): the image's Python is the test's own interpreter."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in (("etc/os-release", b"ID=servemesh-test\n"), ("tmp/.keep", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "rootfs.tar"
    path.write_bytes(out.getvalue())
    return path


def options(registry: RegistryServer, tmp_path: Path, rootfs: Path, prefix: str, **kw: object) -> BuildOptions:
    return BuildOptions(registry=f"{registry.host}/{prefix}", cache=tmp_path / "cache", base=str(rootfs),
                        servemesh_deps=False, **kw)  # type: ignore[arg-type]


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, check=True)


def test_build_push_inspect_and_incremental_pushes(registry: RegistryServer, tmp_path: Path, rootfs: Path) -> None:
    fns = tmp_path / "fns"
    target = write_function(fns)
    # the CLI, as users run it
    done = subprocess.run([sys.executable, "-m", "servemesh", "build", str(target), "--registry",
                           f"{registry.host}/team", "--base", str(rootfs), "--no-servemesh-deps", "--push"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, SERVEMESH_STATE_DIR=str(tmp_path / "state")))
    assert done.returncode == 0, done.stderr
    assert f"pushed {registry.host}/team/echo:1.0.0" in done.stdout

    inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/team/echo:1.0.0").stdout)
    assert len(inspected["Layers"]) == 3  # base, dependencies, app
    metadata = json.loads(inspected["Labels"][METADATA_LABEL])
    assert (metadata["name"], metadata["version"]) == ("echo", "1.0.0")
    assert metadata["inputs"]["properties"]["text"]["type"] == "string"
    config = json.loads(skopeo("inspect", "--config", "--tls-verify=false",
                               f"docker://{registry.host}/team/echo:1.0.0").stdout)
    assert config["config"]["Cmd"][:5] == ["python3", "-m", "servemesh", "serve-function", "/app"]
    assert f"PYTHONPATH={SITE}" in config["config"]["Env"]

    # a rebuild with no change: same digest, nothing uploaded, no manifest put
    opts = options(registry, tmp_path, rootfs, "team")
    with RegistryClient(registry.host) as client:
        same = push(build(target, opts), client)
        assert (same.uploaded, same.manifest_put) == ([], False)
        assert same.digest == inspected["Digest"]

    # a code change (and its patch version): one small layer, and the config
        changed = write_function(fns, version="1.0.1", expression="inputs.text.upper()")
        report = push(build(changed, opts), client)
    layers = [d for d, _ in report.uploaded if d != _config_digest(registry, "team/echo", "1.0.1")]
    assert len(layers) == 1 and len(report.uploaded) == 2, report.uploaded
    assert dict(report.uploaded)[layers[0]] < 4096
    assert report.compared_with == "1.0.0"


def test_overwrites_and_breaking_changes_are_refused(registry: RegistryServer, tmp_path: Path, rootfs: Path) -> None:
    fns = tmp_path / "fns"
    opts = options(registry, tmp_path, rootfs, "refusals")
    with RegistryClient(registry.host) as client:
        push(build(write_function(fns, name="tally"), opts), client)
        with pytest.raises(PushRefused, match="already pushed"):
            push(build(write_function(fns, name="tally", expression="inputs.text + '!'"), opts), client)
        forced = push(build(write_function(fns, name="tally", expression="inputs.text + '!'"), opts), client,
                      force=True)
        assert forced.manifest_put

        retyped = write_function(fns, name="tally", version="1.1.0", inputs="text: int")
        with pytest.raises(PushRefused) as refused:
            push(build(retyped, opts), client)
        assert "without a major version bump (1.0.0 -> 1.1.0)" in str(refused.value)
        assert refused.value.diff[0].startswith("~ inputs.text: type changed from")
        removed = write_function(fns, name="tally", version="1.1.0", inputs="other: str")
        with pytest.raises(PushRefused) as refused:
            push(build(removed, opts), client)
        assert '- inputs.text: removed ({"type":"string"})' in refused.value.diff
        assert push(build(write_function(fns, name="tally", version="2.0.0", inputs="other: str"), opts),
                    client).manifest_put
        assert sorted(client.tags("refusals/tally")) == ["1.0.0", "2.0.0"]


def test_basic_auth(tmp_path: Path, rootfs: Path) -> None:
    with RegistryServer(users={"ci": "s3cret"}) as secured:
        opts = options(secured, tmp_path, rootfs, "private")
        image = build(write_function(tmp_path / "fns"), opts)
        with RegistryClient(secured.host) as anonymous, pytest.raises(RegistryError, match="needs a user") as err:
            push(image, anonymous)
        assert err.value.status == 401
        with RegistryClient(secured.host, Credentials("ci", "wrong")) as wrong, pytest.raises(RegistryError):
            push(image, wrong)
        with RegistryClient(secured.host, Credentials("ci", "s3cret")) as client:
            assert push(image, client).manifest_put
            assert client.tags("private/echo") == ["1.0.0"]


def test_bearer_token_auth(tmp_path: Path, rootfs: Path) -> None:
    with TokenServer({"ci": "s3cret"}) as tokens, RegistryServer(token=tokens) as secured:
        opts = options(secured, tmp_path, rootfs, "tokens")
        image = build(write_function(tmp_path / "fns"), opts)
        with RegistryClient(secured.host, Credentials("ci", "s3cret")) as client:
            assert push(image, client).manifest_put
        assert tokens.issued >= 1
        with RegistryClient(secured.host, Credentials("ci", "nope")) as wrong, \
                pytest.raises(RegistryError, match=r"token service .* refused"):
            push(image, wrong)
        token = tokens.token("ci", "repository:tokens/echo:pull")
        with RegistryClient(secured.host, Credentials(token=token)) as given:  # a token as it is
            assert given.tags("tokens/echo") == ["1.0.0"]


def test_pulled_back_unpacked_and_served_from_its_root_file_system(registry: RegistryServer, tmp_path: Path,
                                                                   rootfs: Path) -> None:
    target = write_function(tmp_path / "fns", name="roundtrip")
    image = build(target, options(registry, tmp_path, rootfs, "pull"))
    with RegistryClient(registry.host) as client:
        push(image, client)
    layout = tmp_path / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{image.reference}", f"oci:{layout}:1.0.0")
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:1.0.0", str(bundle)], check=True,
                   capture_output=True, timeout=120)
    root = bundle / "rootfs"
    assert (root / "etc" / "os-release").read_text() == "ID=servemesh-test\n"
    assert (root / "app" / "main.py").is_file() and (root / SITE.lstrip("/") / "servemesh" / "__init__.py").is_file()

    # the image's own command and environment, run against the unpacked root (no chroot: the
    # test's interpreter stands in for the base image's python3)
    process = json.loads((bundle / "config.json").read_text())["process"]
    port = free_port()
    args = [sys.executable if a == "python3" else str(root) + a if a.startswith("/app") else a
            for a in process["args"]]
    args[args.index("--port") + 1] = str(port)
    args[args.index("--host") + 1] = "127.0.0.1"
    env = {k: v for k, v in (e.split("=", 1) for e in process["env"])}
    env["PYTHONPATH"] = str(root) + env["PYTHONPATH"]
    env["SERVEMESH_STATE_DIR"] = str(tmp_path / "state")
    log = open(tmp_path / "served.log", "wb")
    proc = subprocess.Popen(args, cwd=root / process["cwd"].lstrip("/"), env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(url), "the unpacked function is ready", 30, proc)
        out = httpx.post(f"{url}/execute", json={"inputs": {"text": "back"}, "params": {"times": 2}}).json()
        assert out["result"] == "back back"
        assert out["served_by"].startswith(str(root / SITE.lstrip("/")))  # servemesh from the image's layer
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _config_digest(registry: RegistryServer, repository: str, tag: str) -> str:
    with RegistryClient(registry.host) as client:
        found = client.get_manifest(repository, tag)
    assert found is not None
    return str(json.loads(found[0])["config"]["digest"])


def test_a_registry_reference_as_base(registry: RegistryServer, tmp_path: Path, rootfs: Path) -> None:
    with RegistryClient(registry.host) as client:
        base = build(write_function(tmp_path / "base", name="basefn"), options(registry, tmp_path, rootfs, "bases"))
        push(base, client)
        opts = BuildOptions(registry=f"{registry.host}/derived", cache=tmp_path / "cache",
                            base=str(base.reference), servemesh_deps=False)
        image = build(write_function(tmp_path / "fns"), opts)
        assert [x.digest for x in image.layers[:3]] == [x.digest for x in base.layers]
        report = push(image, client)  # the base's layers are read from the base's repository
        # 3 base layers, the app layer, the config (the dependency layer equals the base's: one blob)
        assert report.manifest_put and len(report.uploaded) == 5 and report.present == 0
