"""``build()``: a function directory to an OCI image, in Python, without a daemon.

Layers, in order: the base image's; the dependency layer (``deps``); one layer per ``COPY``
of the directory's Dockerfile (without one: ``COPY . /app``). The config inherits the
base's, adds ``PYTHONPATH``, the Dockerfile's ``ENV`` / ``WORKDIR`` / ``EXPOSE`` / ``CMD``
(without one: ``python3 -m servemesh serve-function /app --host 0.0.0.0 --port 3000``) and
the labels, the function's metadata JSON in ``org.servemesh.function``. Every document is
canonical and every date fixed: the same directory and base give the same digest.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ...errors import BuildError, FunctionInvalid
from ..semver import tag_of
from ..validate import validate
from . import oci
from .deps import SITE, dependency_layer, read_requirements, servemesh_requirements
from .dockerfile import Plan, plan
from .layers import LayerWriter, read_ignore_file, sha256
from .registry import Credentials, Reference, RegistryClient

PORT = 3000
DEFAULT_CMD = ["python3", "-m", "servemesh", "serve-function", "/app", "--host", "0.0.0.0", "--port", str(PORT)]


@dataclasses.dataclass
class BuildOptions:
    """``registry`` is ``HOST[:PORT]/PREFIX``; ``base`` overrides the Dockerfile's ``FROM``."""

    registry: str
    cache: Path
    base: str | None = None
    cuda_base: str | None = None
    cuda: bool = False
    default_base: str | None = None
    python: str = "3.11"
    servemesh_deps: bool = True
    #: wheel directories (or URLs) pip resolves from *instead of* an index (``--find-links``)
    find_links: list[str] = dataclasses.field(default_factory=list)
    credentials: Credentials = dataclasses.field(default_factory=Credentials)
    plain_http: bool | None = None
    timeout: float = 300.0


@dataclasses.dataclass
class Image:
    """A built image, ready to push or write out."""

    reference: Reference
    manifest: bytes
    config: bytes
    layers: list[oci.BlobRef]
    metadata: dict[str, Any]
    base: str

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def blobs(self) -> dict[str, Any]:
        """Every blob by digest: the layers' and the config's, each as a zero-argument reader."""
        out: dict[str, Any] = {layer.digest: layer.fetch for layer in self.layers}
        out[sha256(self.config)] = lambda: self.config
        return out


def build(directory: str | Path, options: BuildOptions) -> Image:
    """Validate the function in ``directory`` and build its image (``BuildError``, ``FunctionInvalid``)."""
    root = Path(directory).resolve()
    problems = validate(root)
    if problems:
        raise FunctionInvalid(str(root), problems)
    from ..loader import load_with_problems

    func, _ = load_with_problems(root, without_requirements=True)  # main.py may import what only the image has
    assert func is not None
    metadata = func.metadata()
    dockerfile = root / "Dockerfile"
    steps = plan(dockerfile.read_text(), str(dockerfile)) if dockerfile.is_file() else _default_plan()
    base_text = (options.base or (options.cuda_base if options.cuda else None) or steps.base
                 or options.default_base)
    if options.cuda and not options.cuda_base and not options.base:
        raise BuildError("--cuda needs a CUDA base image: set SERVEMESH_FUNCTION_CUDA_BASE (or pass --base)")
    if not base_text:
        raise BuildError("no base image: pass --base REF, write a Dockerfile with FROM, or set "
                         "SERVEMESH_FUNCTION_BASE")
    base = resolve_base(base_text, root, options)
    python = base.python or options.python

    requirements = read_requirements(root) + (servemesh_requirements() if options.servemesh_deps else [])
    layers = list(base.layers)
    history = []
    deps = dependency_layer(requirements, python, options.cache, find_links=options.find_links)
    layers.append(oci.from_layer(deps))
    history.append(deps.comment)
    ignore = read_ignore_file(root)
    for ins, sources, dest in steps.copies:
        writer = LayerWriter()
        for source in sources:
            path = (root / source).resolve()
            if root != path and root not in path.parents:
                raise BuildError(f"{ins.where(str(dockerfile))}: {source} is outside the build context {root}")
            if not path.exists():
                raise BuildError(f"{ins.where(str(dockerfile))}: {source} does not exist in {root}")
            target = dest + path.name if path.is_file() and dest.endswith("/") else dest
            writer.add_tree(path, target.rstrip("/") or "/", ignore)
        layer = writer.layer(f"COPY {' '.join(sources)} {dest}")
        layers.append(oci.from_layer(layer))
        history.append(layer.comment)

    labels = {**steps.labels, oci.METADATA_LABEL: oci.canonical(metadata).decode(),
              "org.opencontainers.image.title": func.name, "org.opencontainers.image.version": func.version,
              "org.opencontainers.image.description": func.description}
    env = {"PYTHONPATH": SITE, **steps.env}
    config = oci.image_config(base, layers, env=env, workdir=steps.workdir, cmd=steps.cmd,
                              entrypoint=steps.entrypoint, exposed=steps.exposed, labels=labels, user=steps.user,
                              history=history)
    config_blob = oci.canonical(config)
    manifest = oci.manifest(config_blob, layers, {"org.opencontainers.image.title": func.name,
                                                   "org.opencontainers.image.version": func.version})
    reference = image_reference(options.registry, func.name, func.version)
    return Image(reference, oci.canonical(manifest), config_blob, layers, metadata, base.name)


def image_reference(registry: str, name: str, version: str) -> Reference:
    """``{registry}/{prefix}/{name}:{semver}``."""
    host, _, prefix = registry.strip().rstrip("/").partition("/")
    if not host:
        raise BuildError(f"--registry {registry!r} is not HOST[:PORT]/PREFIX")
    repository = f"{prefix}/{name}" if prefix else name
    return Reference(host, repository.lower(), tag_of(version))


def resolve_base(text: str, context: Path, options: BuildOptions) -> oci.BaseImage:
    """``scratch``, ``oci:DIR[:TAG]``, a layout directory, a rootfs tar, or a registry reference."""
    if text == "scratch":
        return oci.scratch()
    if text.startswith("oci:"):
        where, _, tag = text[4:].partition(":")
        return oci.read_layout(_local(where, context), tag or None)
    if text.startswith("tar:"):
        return oci.read_rootfs_tar(_local(text[4:], context))
    local = _local(text, context)
    if local.is_dir() and (local / "oci-layout").is_file():
        return oci.read_layout(local)
    if local.is_file():
        return oci.read_rootfs_tar(local)
    return _pull_base(Reference.parse(text), options)


def _local(text: str, context: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else (context / path if (context / path).exists() else path.resolve())


def _pull_base(ref: Reference, options: BuildOptions) -> oci.BaseImage:
    target_host = options.registry.partition("/")[0]
    creds = options.credentials if ref.host == target_host else Credentials()

    def client() -> RegistryClient:
        return RegistryClient(ref.host, creds, plain_http=options.plain_http, timeout=options.timeout)

    with client() as registry:
        found = registry.get_manifest(ref.repository, ref.ref)
        if found is None:
            raise BuildError(f"the base image {ref} does not exist")
        doc = json.loads(found[0])
        if "manifests" in doc:  # an index: the linux/amd64 image
            chosen = next((m for m in doc["manifests"] if (m.get("platform") or {}).get("architecture") == "amd64"
                           and (m.get("platform") or {}).get("os") == "linux"), doc["manifests"][0])
            again = registry.get_manifest(ref.repository, chosen["digest"])
            if again is None:
                raise BuildError(f"the base image {ref} lists a manifest that does not exist")
            doc = json.loads(again[0])
        config = json.loads(registry.get_blob(ref.repository, doc["config"]["digest"]))

    def fetch(digest: str) -> Any:
        def read() -> bytes:
            with client() as registry:
                return registry.get_blob(ref.repository, digest)
        return read

    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    layers = [oci.BlobRef(d["digest"], int(d["size"]), d.get("mediaType", oci.DOCKER_LAYER), diff_id,
                          fetch(d["digest"]))
              for d, diff_id in zip(doc.get("layers") or [], diff_ids, strict=True)]
    return oci.BaseImage(str(ref), config, layers)


def _default_plan() -> Plan:
    result = Plan(workdir="/app", cmd=list(DEFAULT_CMD), exposed=[f"{PORT}/tcp"])
    from .dockerfile import Instruction

    result.copies.append((Instruction(0, "COPY", ". /app"), ["."], "/app"))
    return result
