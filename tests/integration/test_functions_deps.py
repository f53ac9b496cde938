"""The dependency layer for real: pip resolves the function's requirements for the image's
Python, offline, from a wheel directory (``--find-links``, as an air-gapped build does); the
package lands in the dependency layer, a rebuild does not run pip, a requirements change
gives a new dependency layer, and the function served from the pulled-back, unpacked image
imports the package (and servemesh) from the image's layer, not from this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from servemesh.errors import BuildError
from servemesh.functions.build import BuildOptions, RegistryClient, build
from servemesh.functions.build.deps import SITE
from servemesh.testing import RegistryServer
from tests.functions.dirs import write_function
from tests.functions.images import layer_files, pull_and_unpack, rootfs_tar, serve_unpacked, write_wheel

PKG = "smtinydep"  # not installed on this machine: only the image has it
MAIN = f'''
import servemesh
import {PKG}
from metadata import Inputs, Outputs, Params, func


@func.on_execute
async def main(inputs: Inputs, params: Params) -> Outputs:
    return Outputs(result={PKG}.VALUE + " " + inputs.text, served_by={PKG}.__file__ + "|" + servemesh.__file__)
'''


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryServer]:
    with RegistryServer() as server:
        yield server


def function_with_requirement(root: Path, requirement: str, version: str = "1.0.0") -> Path:
    target = write_function(root, name="withdeps", version=version)
    (target / "main.py").write_text(MAIN)
    (target / "requirements.txt").write_text(f"# what the image needs\n{requirement}\n")
    return target


def test_requirements_are_installed_offline_cached_and_served_from_the_image(
        registry: RegistryServer, tmp_path: Path) -> None:
    with pytest.raises(ImportError):
        __import__(PKG)
    wheels = tmp_path / "wheels"
    for version in ("1.0", "2.0"):
        write_wheel(wheels, PKG, version, {f"{PKG}/__init__.py": f'VALUE = "{PKG} {version}"\n'})
    rootfs = rootfs_tar(tmp_path / "rootfs.tar")
    target = function_with_requirement(tmp_path / "fns", f"{PKG}==1.0")

    # the CLI, as an air-gapped user runs it: the wheel directory from SERVEMESH_FUNCTION_FIND_LINKS
    state = tmp_path / "state"
    done = subprocess.run([sys.executable, "-m", "servemesh", "build", str(target), "--registry",
                           f"{registry.host}/deps", "--base", str(rootfs), "--no-servemesh-deps", "--push"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, SERVEMESH_STATE_DIR=str(state),
                                   SERVEMESH_FUNCTION_FIND_LINKS=str(wheels)))
    assert done.returncode == 0, done.stderr
    assert f"pushed {registry.host}/deps/withdeps:1.0.0" in done.stdout

    opts = BuildOptions(registry=f"{registry.host}/deps", cache=state / "build-cache", base=str(rootfs),
                        servemesh_deps=False, find_links=[str(wheels)])
    first = build(target, opts)
    with RegistryClient(registry.host) as client:
        found = client.get_manifest("deps/withdeps", "1.0.0")
    assert found is not None and found[2] == first.digest  # the CLI's build and this one: the same image

    # the dependency layer (after the base's): the package, installed by pip for the image's Python
    deps = layer_files(first.layers[1].fetch())
    site = SITE.lstrip("/")
    assert deps[f"{site}/{PKG}/__init__.py"] == f'VALUE = "{PKG} 1.0"\n'.encode()
    assert b"Version: 1.0" in deps[f"{site}/{PKG}-1.0.dist-info/METADATA"]
    assert f"{site}/servemesh/__init__.py" in deps  # and servemesh's own source
    assert not any(name.endswith(".so") for name in deps if "/servemesh/" in name)  # built for this machine
    assert not any(name.endswith(".pyc") for name in deps)  # --no-compile: no bytecode in the digest
    app = layer_files(first.layers[2].fetch())
    assert f"{PKG}/__init__.py" not in " ".join(app)  # the app layer holds the function only

    # a rebuild with the same requirements does not run pip: with the wheels gone it still
    # builds, the same image (and without the cache, pip fails for want of them: the control)
    (tmp_path / "wheels").rename(tmp_path / "wheels-away")
    assert build(target, opts).digest == first.digest
    uncached = BuildOptions(registry=opts.registry, cache=tmp_path / "cache-2", base=str(rootfs),
                            servemesh_deps=False, find_links=[str(wheels)])
    with pytest.raises(BuildError, match=f"(?s)pip could not install.*No matching distribution found for {PKG}==1.0"):
        build(target, uncached)
    (tmp_path / "wheels-away").rename(tmp_path / "wheels")

    # pip run again into an empty cache: the same bytes, the same digest
    assert build(target, uncached).digest == first.digest

    # a requirements change: a new dependency layer, with the new version in it
    bumped = function_with_requirement(tmp_path / "fns", f"{PKG}==2.0", version="1.0.1")
    second = build(bumped, opts)
    assert second.layers[0].digest == first.layers[0].digest
    assert second.layers[1].digest != first.layers[1].digest
    assert layer_files(second.layers[1].fetch())[f"{site}/{PKG}/__init__.py"] == f'VALUE = "{PKG} 2.0"\n'.encode()

    # pulled back, unpacked and served: the package and servemesh come from the image's layer
    bundle = pull_and_unpack(f"{registry.host}/deps/withdeps:1.0.0", tmp_path)
    root = bundle / "rootfs"
    with serve_unpacked(bundle, tmp_path) as (url, proc):
        out = httpx.post(f"{url}/execute", json={"inputs": {"text": "hi"}}).json()
        assert out["result"] == f"{PKG} 1.0 hi"
        package_file, servemesh_file = out["served_by"].split("|")
        assert package_file == str(root / site / PKG / "__init__.py")
        assert servemesh_file == str(root / site / "servemesh" / "__init__.py")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_requirements_are_resolved_for_the_base_images_python(tmp_path: Path) -> None:
    """pip resolves for the Python the base's config names (``PYTHON_VERSION``), else
    ``SERVEMESH_FUNCTION_PYTHON``: never this machine's. The wheel here is for 3.12 only."""
    from servemesh.functions.build.oci import write_layout

    wheels = tmp_path / "wheels"
    write_wheel(wheels, PKG, "1.0", {f"{PKG}/__init__.py": 'VALUE = "for 3.12"\n'}, tag="py312-none-any")
    base_fn = write_function(tmp_path / "base", name="pybase",
                             dockerfile="FROM scratch\nENV PYTHON_VERSION=3.12.4\nCOPY . /base\n")
    base = build(base_fn, BuildOptions(registry="r.example/x", cache=tmp_path / "cache", servemesh_deps=False))
    write_layout(tmp_path / "layout", "base", base.manifest, base.blobs())

    target = function_with_requirement(tmp_path / "fns", f"{PKG}==1.0")

    def options(base_ref: str, python: str = "3.11") -> BuildOptions:
        return BuildOptions(registry="r.example/x", cache=tmp_path / "cache", base=base_ref, python=python,
                            servemesh_deps=False, find_links=[str(wheels)])

    on_312 = build(target, options(f"oci:{tmp_path / 'layout'}:base"))
    assert f"{SITE.lstrip('/')}/{PKG}/__init__.py" in layer_files(on_312.layers[len(base.layers)].fetch())
    with pytest.raises(BuildError, match=f"(?s)for Python 3.11 .*No matching distribution found for {PKG}"):
        build(target, options("scratch"))  # no PYTHON_VERSION: the default, 3.11
    assert build(target, options("scratch", python="3.12")).layers[0].digest == \
        on_312.layers[len(base.layers)].digest  # SERVEMESH_FUNCTION_PYTHON=3.12: the same dependency layer
