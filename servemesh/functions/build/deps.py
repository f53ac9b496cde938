"""The dependency layer: the function's requirements and servemesh, installed for the base
image's Python under :data:`SITE` (on the image's ``PYTHONPATH``).

Requirements are resolved by pip for the *image*, not for this machine:
``pip install --target DIR --python-version 3.11 --implementation cp --platform
manylinux2014_x86_64 --only-binary=:all: --no-compile -r requirements``: wheels only (nothing
is compiled here), no bytecode (it would differ build to build). The result is cached by
what decides it, so a rebuild does not run pip again. servemesh itself goes in as its
package's source files (it runs as pure Python there: its one compiled module, built for
this machine, is left out); its own requirements are resolved like the function's unless
``servemesh_deps=False`` (a base image that already has them). With ``find_links`` pip
reads wheels from those places only (``--no-index --find-links``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ...errors import BuildError
from .layers import Layer, LayerWriter

SITE = "/opt/servemesh/site-packages"
DEFAULT_PLATFORM = "manylinux2014_x86_64"


def servemesh_requirements() -> list[str]:
    """servemesh's own install requirements (no extras), from its installed metadata."""
    try:
        requires = importlib.metadata.requires("servemesh") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return [r for r in requires if "extra ==" not in r]


def read_requirements(directory: Path) -> list[str]:
    path = directory / "requirements.txt"
    if not path.is_file():
        return []
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def resolve(requirements: list[str], python: str, platform: str, cache: Path, timeout: float = 900.0,
            find_links: Sequence[str] = ()) -> Path:
    """A directory with ``requirements`` installed for ``python`` on ``platform`` (cached).

    ``find_links``: directories (or URLs) of wheels that are the *only* source: pip runs with
    ``--no-index --find-links ...`` (air-gapped builds, and the tests).
    """
    links = [_link(link) for link in find_links]
    key = hashlib.sha256("\n".join([python, platform, *sorted(requirements), "--find-links", *links]).encode()
                         ).hexdigest()[:24]
    target = cache / f"site-{key}"
    if (target / ".complete").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="site-", dir=cache))
    req = work / "requirements.txt"
    req.write_text("\n".join(requirements) + "\n")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
           "--target", str(work / "site"), "--python-version", python, "--implementation", "cp",
           "--platform", platform, "--only-binary=:all:", "-r", str(req)]
    if links:
        cmd += ["--no-index", *(arg for link in links for arg in ("--find-links", link))]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        shutil.rmtree(work, ignore_errors=True)
        raise BuildError(f"pip did not resolve the requirements within {timeout:g}s") from None
    if done.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise BuildError(f"pip could not install the requirements for Python {python} on {platform} (wheels "
                         f"only):\n{done.stderr.strip()[-2000:]}")
    shutil.rmtree(target, ignore_errors=True)
    (work / "site").rename(target)
    shutil.rmtree(work, ignore_errors=True)
    (target / ".complete").write_text("")
    return target


def _link(link: str) -> str:
    """A local directory made absolute (pip runs elsewhere); a URL as it is."""
    return link if "://" in link else str(Path(link).expanduser().resolve())


def dependency_layer(requirements: list[str], python: str, cache: Path, *,
                     platform: str = DEFAULT_PLATFORM, find_links: Sequence[str] = ()) -> Layer:
    writer = LayerWriter()
    writer.add_dir(SITE)
    if requirements:
        site = resolve(requirements, python, platform, cache, find_links=find_links)
        writer.add_tree(site, SITE, ignore=(".complete",))
    import servemesh

    # its source only: a module compiled here (the in-process relay, ``runtime/_relay.c``)
    # is for this machine's Python and libc, not the image's; servemesh runs without it
    writer.add_tree(Path(servemesh.__file__).parent, f"{SITE}/servemesh", ignore=("*.so", "*.pyd"))
    return writer.layer(f"dependencies: servemesh + {len(requirements)} requirement(s) for Python {python}")
