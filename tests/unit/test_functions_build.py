"""The builder's pure parts: Dockerfile plans, deterministic layers, image documents."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from servemesh.errors import BuildError
from servemesh.functions.build import BuildOptions, build, image_reference
from servemesh.functions.build.dockerfile import plan
from servemesh.functions.build.layers import LayerWriter
from servemesh.functions.build.registry import Reference
from tests.functions.dirs import write_function

SEED_DOCKERFILE = """FROM torch-cuda:latest # or FROM hyko-sdk:latest

WORKDIR /app

COPY . .

CMD ["poetry", "run", "uvicorn", "--host", "0.0.0.0", "--port", "3000", "main:func"]
"""


def test_the_seeds_dockerfile_is_followed() -> None:
    steps = plan(SEED_DOCKERFILE.replace(" # or FROM hyko-sdk:latest", ""))
    assert steps.base == "torch-cuda:latest"
    assert steps.workdir == "/app"
    assert [(sources, dest) for _, sources, dest in steps.copies] == [(["."], "/app/")]
    assert steps.cmd == ["poetry", "run", "uvicorn", "--host", "0.0.0.0", "--port", "3000", "main:func"]


def test_env_expose_label_arg_and_continuations() -> None:
    steps = plan('ARG BASE=python:3.11-slim\nFROM $BASE\nENV A=1 B="two words"\nENV C three words\n'
                 'EXPOSE 3000 9000/udp\nLABEL team=ml\nWORKDIR /srv\nWORKDIR app\nCOPY a.py \\\n  b.py ./\n'
                 'CMD python3 -m servemesh\n')
    assert steps.base == "python:3.11-slim"
    assert steps.env == {"A": "1", "B": "two words", "C": "three words"}
    assert steps.exposed == ["3000/tcp", "9000/udp"]
    assert steps.labels == {"team": "ml"}
    assert steps.workdir == "/srv/app"
    assert [(s, d) for _, s, d in steps.copies] == [(["a.py", "b.py"], "/srv/app/")]
    assert steps.cmd == ["/bin/sh", "-c", "python3 -m servemesh"]


def test_run_is_refused_naming_its_line() -> None:
    with pytest.raises(BuildError, match=r"^Dockerfile:4: RUN cannot be honoured"):
        plan("FROM python:3.11\n\nWORKDIR /app\nRUN pip install torch\nCOPY . .\n")
    with pytest.raises(BuildError, match=r"Dockerfile:2: COPY options"):
        plan("FROM x\nCOPY --from=builder /a /b\n")
    with pytest.raises(BuildError, match="no FROM"):
        plan("# nothing\n")


def test_layers_are_deterministic(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("a = 1\n")
    (tmp_path / "b.txt").write_text("b\n")

    def layer() -> tuple[str, str]:
        writer = LayerWriter()
        writer.add_tree(tmp_path, "/app")
        built = writer.layer()
        return built.digest, built.diff_id

    first = layer()
    os.utime(tmp_path / "b.txt", (1, 1))  # times and caches never change a digest
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    assert layer() == first
    (tmp_path / "b.txt").write_text("changed\n")
    assert layer() != first


def test_layer_entries_are_sorted_root_owned_and_undated(tmp_path: Path) -> None:
    (tmp_path / "z.py").write_text("z")
    (tmp_path / "a.py").write_text("a")
    writer = LayerWriter()
    writer.add_tree(tmp_path, "/app")
    with tarfile.open(fileobj=io.BytesIO(writer.tar())) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["app", "app/a.py", "app/z.py"]
    assert {(m.uid, m.gid, m.mtime, m.uname) for m in members} == {(0, 0, 0, "")}


def test_same_input_same_digest(tmp_path: Path) -> None:
    target = write_function(tmp_path / "fns")
    options = BuildOptions(registry="registry.example:5000/team", cache=tmp_path / "cache", base="scratch",
                           servemesh_deps=False)
    first = build(target, options)
    assert build(target, options).digest == first.digest
    assert str(first.reference) == "registry.example:5000/team/echo:1.0.0"
    write_function(tmp_path / "fns", expression="inputs.text.upper()")
    assert build(target, options).digest != first.digest


def test_references() -> None:
    assert image_reference("127.0.0.1:5000/fns", "Echo", "1.0.0+b1").ref == "1.0.0_b1"
    ref = Reference.parse("python:3.11-slim")
    assert (ref.host, ref.repository, ref.tag) == ("registry-1.docker.io", "library/python", "3.11-slim")
    ref = Reference.parse("127.0.0.1:5000/fns/echo@sha256:ab")
    assert (ref.host, ref.repository, ref.digest) == ("127.0.0.1:5000", "fns/echo", "sha256:ab")


def test_a_seed_style_dockerfile_is_followed(tmp_path: Path) -> None:
    import json

    target = write_function(tmp_path / "fns", dockerfile=(
        "FROM scratch\nWORKDIR /app\nCOPY . .\nENV MODEL=tiny\nEXPOSE 3000\n"
        'CMD ["python3", "-m", "uvicorn", "--host", "0.0.0.0", "--port", "3000", "main:func"]\n'))
    image = build(target, BuildOptions(registry="r.example/x", cache=tmp_path / "cache", servemesh_deps=False))
    config = json.loads(image.config)["config"]
    assert config["Cmd"][-1] == "main:func" and config["WorkingDir"] == "/app"
    assert "MODEL=tiny" in config["Env"] and config["ExposedPorts"] == {"3000/tcp": {}}
    assert image.base == "scratch" and len(image.layers) == 2  # FROM scratch: dependencies, then COPY . .
    with tarfile.open(fileobj=io.BytesIO(image.layers[1].fetch()), mode="r:gz") as tar:
        assert {"app/main.py", "app/metadata.py", "app/Dockerfile"} <= set(tar.getnames())
    (target / "Dockerfile").write_text("FROM scratch\nWORKDIR /app\nRUN pip install torch\n")
    with pytest.raises(BuildError, match=r"Dockerfile:3: RUN cannot be honoured"):
        build(target, BuildOptions(registry="r.example/x", cache=tmp_path / "cache", servemesh_deps=False))


def test_cuda_base_and_local_layout_bases(tmp_path: Path) -> None:
    from servemesh.functions.build.oci import write_layout

    target = write_function(tmp_path / "fns")
    opts = BuildOptions(registry="r.example/x", cache=tmp_path / "cache", servemesh_deps=False, cuda=True)
    with pytest.raises(BuildError, match="SERVEMESH_FUNCTION_CUDA_BASE"):
        build(target, opts)
    first = build(target, BuildOptions(registry="r.example/x", cache=tmp_path / "cache", servemesh_deps=False,
                                       base="scratch"))
    write_layout(tmp_path / "layout", "base", first.manifest, first.blobs())
    opts.cuda_base = f"oci:{tmp_path / 'layout'}:base"  # SERVEMESH_FUNCTION_CUDA_BASE
    stacked = build(target, opts)
    assert stacked.base == f"oci:{tmp_path / 'layout'}:base"
    assert [layer.digest for layer in stacked.layers[:2]] == [layer.digest for layer in first.layers]
    assert len(stacked.layers) == 4


def test_a_build_does_not_need_the_functions_requirements(tmp_path: Path) -> None:
    import json

    target = write_function(tmp_path / "fns")
    main = target / "main.py"
    main.write_text("import torch_is_not_installed_here\n" + main.read_text())
    image = build(target, BuildOptions(registry="r.example/x", cache=tmp_path / "cache", base="scratch",
                                       servemesh_deps=False))
    label = json.loads(json.loads(image.config)["config"]["Labels"]["org.servemesh.function"])
    assert label["inputs"]["properties"]["text"]["type"] == "string"


def test_same_input_same_digest_from_another_process_path_and_clock(tmp_path: Path) -> None:
    """The digest depends on the files' content only: not on where the directory is, its
    files' times or permission bits beyond executable, nor on the process (hash seed)."""
    import shutil
    import subprocess
    import sys

    target = write_function(tmp_path / "fns")
    (target / "data").mkdir()
    (target / "data" / "table.csv").write_text("a,b\n1,2\n")
    options = BuildOptions(registry="registry.example:5000/team", cache=tmp_path / "cache", base="scratch",
                           servemesh_deps=False)
    here = build(target, options).digest
    elsewhere = tmp_path / "somewhere" / "else" / "text" / "echo" / "1.0.0"  # the layout names the category
    shutil.copytree(target, elsewhere)
    os.utime(elsewhere / "main.py", (123456789, 123456789))
    (elsewhere / "data" / "table.csv").chmod(0o600)
    done = subprocess.run([sys.executable, "-m", "servemesh", "build", str(elsewhere), "--registry",
                           "registry.example:5000/team", "--base", "scratch", "--no-servemesh-deps"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONHASHSEED="12345", SERVEMESH_STATE_DIR=str(tmp_path / "s")))
    assert done.returncode == 0, done.stderr
    assert f"built registry.example:5000/team/echo:1.0.0 {here} " in done.stdout
    (elsewhere / "data" / "table.csv").chmod(0o755)  # executable: a different layer
    assert build(elsewhere, options).digest != here


def test_the_scaffolds_dockerfile_is_followed(tmp_path: Path) -> None:
    import json

    from servemesh.functions.scaffold import new_function

    target = new_function("text/shout", str(tmp_path))
    image = build(target, BuildOptions(registry="r.example/x", cache=tmp_path / "cache", base="scratch",
                                       servemesh_deps=False))
    config = json.loads(image.config)["config"]
    assert config["Cmd"] == ["python3", "-m", "uvicorn", "--host", "0.0.0.0", "--port", "3000", "main:func"]
    assert config["WorkingDir"] == "/app"
    with tarfile.open(fileobj=io.BytesIO(image.layers[-1].fetch()), mode="r:gz") as tar:
        assert {"app/main.py", "app/metadata.py", "app/requirements.txt"} <= set(tar.getnames())
