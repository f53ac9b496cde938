"""``push()``: an image to its registry over the OCI distribution API.

1. The tag exists with the same manifest digest: nothing to push. With another digest: refused
   (``PushRefused``) unless ``force`` — a pushed version is immutable.
2. The last pushed version below this one (by semver, from the repository's tags) is compared
   with this one through their metadata labels: a removed or retyped port without a new major
   version is refused with the diff.
3. Each blob (layers, config) is checked (``HEAD``) and uploaded only when missing; then the
   manifest is put.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from ...errors import PushRefused
from ..diff import needs_major
from ..semver import is_semver, parse
from .builder import Image
from .oci import MANIFEST, METADATA_LABEL
from .registry import RegistryClient

log = logging.getLogger("servemesh.functions.build")


@dataclasses.dataclass
class PushReport:
    reference: str
    digest: str
    #: blobs uploaded: ``[(digest, size)]``; empty when the registry had them all
    uploaded: list[tuple[str, int]]
    #: blobs the registry already had
    present: int
    #: whether the manifest was put (False: the tag already named this very image)
    manifest_put: bool
    #: the version compared with, and the non-breaking changes found
    compared_with: str | None = None
    changes: list[str] = dataclasses.field(default_factory=list)


def push(image: Image, registry: RegistryClient, *, force: bool = False) -> PushReport:
    ref = image.reference
    repo, tag = ref.repository, ref.ref
    existing = registry.get_manifest(repo, tag)
    if existing is not None and existing[2] == image.digest:
        return PushReport(str(ref), image.digest, [], len(image.layers) + 1, False)
    if existing is not None and not force:
        raise PushRefused(f"{ref} was already pushed as {existing[2]}, and this build is {image.digest}: a pushed "
                          "version is immutable; bump the version (or pass --force to overwrite it)")
    compared, changes = _check_compatible(image, registry)
    uploaded_before = len(registry.uploaded)
    present = 0
    for digest, read in image.blobs().items():
        if registry.blob_exists(repo, digest):
            present += 1
            continue
        registry.upload_blob(repo, digest, read())
    registry.put_manifest(repo, tag, image.manifest, MANIFEST)
    uploaded = registry.uploaded[uploaded_before:]
    log.info("pushed %s (%s): %d blob(s) uploaded, %d present", ref, image.digest, len(uploaded), present)
    return PushReport(str(ref), image.digest, uploaded, present, True, compared, changes)


def _check_compatible(image: Image, registry: RegistryClient) -> tuple[str | None, list[str]]:
    new = image.metadata
    version = str(new.get("version"))
    tags = [t for t in registry.tags(image.reference.repository) if is_semver(t) and t != image.reference.ref]
    older = sorted((t for t in tags if parse(t) < parse(version)), key=parse)
    if not older:
        return None, []
    last = older[-1]
    config = registry.image_config(image.reference.repository, last)
    label = ((config or {}).get("config") or {}).get("Labels", {}).get(METADATA_LABEL)
    if not label:
        return last, [f"{last} has no {METADATA_LABEL} label: not compared"]
    old: dict[str, Any] = json.loads(label)
    breaking = needs_major(old, new)
    if breaking:
        raise PushRefused(f"{image.reference} breaks {last} without a major version bump ({last} -> {version}); "
                          f"make it {parse(last)[0] + 1}.0.0, or keep the ports:", breaking)
    from ..diff import changes

    return last, changes(old, new)[1]
