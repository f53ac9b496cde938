"""OCI image documents (config, manifest, index) and the OCI image layout on disk.

Documents are written as canonical JSON (sorted keys, no spaces) so the same image is the
same bytes. Pure functions, except ``read_layout`` / ``write_layout`` (files).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import BuildError
from .layers import GZIP_LAYER, Layer, layer_from_tar, sha256

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
#: the label that carries the function's metadata JSON
METADATA_LABEL = "org.servemesh.function"
#: every image's creation time (content, not the clock, decides the digest)
CREATED = "1970-01-01T00:00:00Z"


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclasses.dataclass(frozen=True)
class BlobRef:
    """A layer of a base image: its descriptor, and how to get its bytes if a push needs them."""

    digest: str
    size: int
    media_type: str
    diff_id: str
    fetch: Callable[[], bytes]


@dataclasses.dataclass
class BaseImage:
    """The image a build starts from: its config (``{}`` for ``scratch``) and layers."""

    name: str
    config: dict[str, Any]
    layers: list[BlobRef]

    @property
    def python(self) -> str | None:
        """``3.11`` from the config's ``PYTHON_VERSION=3.11.7`` (official Python images)."""
        for item in (self.config.get("config") or {}).get("Env") or []:
            key, _, value = str(item).partition("=")
            if key == "PYTHON_VERSION" and value:
                return ".".join(value.split(".")[:2])
        return None


def scratch() -> BaseImage:
    return BaseImage("scratch", {"architecture": "amd64", "os": "linux", "config": {}}, [])


def from_layer(layer: Layer) -> BlobRef:
    return BlobRef(layer.digest, layer.size, layer.media_type, layer.diff_id, lambda: layer.data)


def image_config(base: BaseImage, layers: Sequence[BlobRef], *, env: Mapping[str, str], workdir: str,
                 cmd: list[str] | None, entrypoint: list[str] | None, exposed: Sequence[str],
                 labels: Mapping[str, str], user: str | None, history: Sequence[str]) -> dict[str, Any]:
    inherited = dict(base.config.get("config") or {})
    env_list = [e for e in inherited.get("Env") or [] if str(e).partition("=")[0] not in env]
    env_list += [f"{k}={v}" for k, v in env.items()]
    config: dict[str, Any] = {k: v for k, v in inherited.items() if k in ("User", "StopSignal", "Volumes")}
    config["Env"] = env_list
    config["WorkingDir"] = workdir
    if entrypoint is not None:
        config["Entrypoint"] = entrypoint
        config["Cmd"] = cmd or []
    else:
        config["Entrypoint"] = inherited.get("Entrypoint") if cmd is None else None
        config["Cmd"] = cmd if cmd is not None else inherited.get("Cmd")
    config = {k: v for k, v in config.items() if v is not None}
    ports = dict(inherited.get("ExposedPorts") or {})
    ports.update({p: {} for p in exposed})
    if ports:
        config["ExposedPorts"] = dict(sorted(ports.items()))
    config["Labels"] = {**(inherited.get("Labels") or {}), **labels}
    if user:
        config["User"] = user
    base_history = list(base.config.get("history") or [])
    return {
        "architecture": base.config.get("architecture", "amd64"),
        "os": base.config.get("os", "linux"),
        "created": CREATED,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": base_history + [{"created": CREATED, "created_by": h, "comment": "servemesh build"}
                                   for h in history],
    }


def manifest(config_blob: bytes, layers: Sequence[BlobRef], annotations: Mapping[str, str]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": sha256(config_blob), "size": len(config_blob)},
        "layers": [{"mediaType": _oci_layer(layer.media_type), "digest": layer.digest, "size": layer.size}
                   for layer in layers],
        "annotations": dict(annotations),
    }


def _oci_layer(media_type: str) -> str:
    return GZIP_LAYER if media_type == DOCKER_LAYER else media_type


# -- bases on disk ----------------------------------------------------------------------------------
def read_layout(path: Path, tag: str | None = None) -> BaseImage:
    """An image of an OCI image layout directory (``skopeo copy ... oci:DIR:TAG``, ``umoci``)."""
    try:
        index = json.loads((path / "index.json").read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path} is not an OCI image layout (index.json: {exc})") from None
    entries = index.get("manifests") or []
    if tag is not None:
        entries = [m for m in entries if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag]
    if not entries:
        raise BuildError(f"{path}: no image{f' tagged {tag!r}' if tag else ''} in the layout")
    descriptor = entries[0]
    doc = json.loads(_blob(path, descriptor["digest"]))
    if doc.get("mediaType") in (INDEX, DOCKER_LIST) or "manifests" in doc:
        doc = json.loads(_blob(path, doc["manifests"][0]["digest"]))
    config = json.loads(_blob(path, doc["config"]["digest"]))
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    layers = [BlobRef(d["digest"], int(d["size"]), d.get("mediaType", GZIP_LAYER), diff_id,
                      _reader(path, d["digest"]))
              for d, diff_id in zip(doc.get("layers") or [], diff_ids, strict=True)]
    return BaseImage(f"oci:{path}{f':{tag}' if tag else ''}", config, layers)


def read_rootfs_tar(path: Path) -> BaseImage:
    """A base made of one layer: a root file system as a tar (``.tar`` or ``.tar.gz``)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BuildError(f"cannot read the base rootfs tar {path}: {exc}") from None
    if raw[:2] == b"\x1f\x8b":
        import gzip

        raw = gzip.decompress(raw)
    layer = layer_from_tar(raw, comment=f"rootfs {path.name}")
    base = scratch()
    base.name = f"tar:{path}"
    base.layers = [from_layer(layer)]
    return base


def write_layout(path: Path, tag: str, manifest_blob: bytes, blobs: Mapping[str, Callable[[], bytes]]) -> None:
    """Write an image as an OCI image layout (``servemesh build --output DIR``)."""
    store = path / "blobs" / "sha256"
    store.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    for digest, data in {**blobs, sha256(manifest_blob): lambda: manifest_blob}.items():
        target = store / digest.split(":", 1)[1]
        if not target.exists():
            target.write_bytes(data())
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        {"mediaType": MANIFEST, "digest": sha256(manifest_blob), "size": len(manifest_blob),
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (path / "index.json").write_bytes(canonical(index))


def _blob(path: Path, digest: str) -> bytes:
    try:
        return (path / "blobs" / digest.replace(":", "/")).read_bytes()
    except OSError as exc:
        raise BuildError(f"{path}: blob {digest} is missing: {exc}") from None


def _reader(path: Path, digest: str) -> Callable[[], bytes]:
    return lambda: _blob(path, digest)
