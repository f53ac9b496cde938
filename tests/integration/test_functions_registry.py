"""The daemonless builder against a real registry (Debian's docker-registry on a free loopback
port): build and push, `skopeo inspect`, rebuilds that push nothing or one small layer,
refused overwrites and breaking changes, basic and bearer-token auth, and the image pulled
back (`skopeo copy`), unpacked (`umoci unpack`) and served from its root file system."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from servemesh.errors import PushRefused, RegistryError
from servemesh.functions.build import BuildOptions, Credentials, RegistryClient, build, push
from servemesh.functions.build.deps import SITE
from servemesh.functions.build.oci import METADATA_LABEL
from servemesh.testing import RegistryServer, TokenServer
from tests.functions.dirs import write_function
from tests.functions.images import pull_and_unpack, rootfs_tar, serve_unpacked, skopeo

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryServer]:
    with RegistryServer() as server:
        yield server


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A tiny base root file system (a tar): the image's Python is the test's own interpreter."""
    return rootfs_tar(tmp_path / "rootfs.tar")


def options(registry: RegistryServer, tmp_path: Path, rootfs: Path, prefix: str, **kw: object) -> BuildOptions:
    return BuildOptions(registry=f"{registry.host}/{prefix}", cache=tmp_path / "cache", base=str(rootfs),
                        servemesh_deps=False, **kw)  # type: ignore[arg-type]


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
    bundle = pull_and_unpack(str(image.reference), tmp_path)
    root = bundle / "rootfs"
    assert (root / "etc" / "os-release").read_text() == "ID=servemesh-test\n"
    assert (root / "app" / "main.py").is_file() and (root / SITE.lstrip("/") / "servemesh" / "__init__.py").is_file()
    with serve_unpacked(bundle, tmp_path) as (url, proc):
        out = httpx.post(f"{url}/execute", json={"inputs": {"text": "back"}, "params": {"times": 2}}).json()
        assert out["result"] == "back back"
        assert out["served_by"].startswith(str(root / SITE.lstrip("/")))  # servemesh from the image's layer
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


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


def test_the_cli_refuses_overwrites_and_breaking_changes_and_builds_cuda(registry: RegistryServer, tmp_path: Path,
                                                                        rootfs: Path) -> None:
    """What a user sees: exit 1 with the refusal (and the diff), `--force` overwriting, `--cuda`
    taking SERVEMESH_FUNCTION_CUDA_BASE."""
    fns = tmp_path / "fns"
    env = dict(os.environ, SERVEMESH_STATE_DIR=str(tmp_path / "state"))

    def cli(target: Path, *extra: str, **more_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "servemesh", "build", str(target), "--registry",
                               f"{registry.host}/cli", "--no-servemesh-deps", *extra], capture_output=True,
                              text=True, timeout=120, env=dict(env, **more_env))

    first = cli(write_function(fns, name="cmd"), "--base", str(rootfs), "--push")
    assert first.returncode == 0, first.stderr
    changed = write_function(fns, name="cmd", expression="inputs.text + '?'")
    refused = cli(changed, "--base", str(rootfs), "--push")
    assert refused.returncode == 1 and "already pushed" in refused.stderr and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    forced = cli(changed, "--base", str(rootfs), "--push", "--force")
    assert forced.returncode == 0, forced.stderr
    with RegistryClient(registry.host) as client:
        found = client.get_manifest("cli/cmd", "1.0.0")
    assert found is not None and found[2] in forced.stdout  # the tag names the forced build now

    breaking = cli(write_function(fns, name="cmd", version="1.1.0", inputs="words: list[str]"), "--base",
                   str(rootfs), "--push")
    assert breaking.returncode == 1, breaking.stdout
    assert "breaks 1.0.0 without a major version bump (1.0.0 -> 1.1.0); make it 2.0.0" in breaking.stderr
    assert '  - inputs.text: removed ({"type":"string"})' in breaking.stderr
    with RegistryClient(registry.host) as client:
        assert client.tags("cli/cmd") == ["1.0.0"]

    # --cuda: the configured CUDA base (here an OCI layout written by --output), not --base / FROM
    layout = tmp_path / "cuda-layout"
    made = cli(write_function(fns, name="cudabase"), "--base", str(rootfs), "--output", str(layout))
    assert made.returncode == 0, made.stderr
    cuda = cli(write_function(fns, name="oncuda"), "--cuda", "--output", str(tmp_path / "out"),
               SERVEMESH_FUNCTION_CUDA_BASE=f"oci:{layout}:1.0.0")
    assert cuda.returncode == 0, cuda.stderr
    assert f"base oci:{layout}:1.0.0" in cuda.stdout and "(5 layers" in cuda.stdout
    missing = cli(write_function(fns, name="oncuda"), "--cuda")
    assert missing.returncode == 1 and "SERVEMESH_FUNCTION_CUDA_BASE" in missing.stderr
