"""Deterministic layers: the same files give the same bytes, so the same digest.

Entries are sorted, owned by root (0:0, no names), dated ``EPOCH``, with permissions
normalised (0o755 for directories and executables, 0o644 otherwise); the gzip stream has
no name and no time. ``diff_id`` is the digest of the uncompressed tar, ``digest`` that of
the compressed blob (what a registry stores).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ...errors import BuildError

GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
#: every entry's modification time (1970-01-01): content decides the digest, not the clock
EPOCH = 0
#: never copied into an image: build debris that differs between otherwise equal trees
ALWAYS_IGNORED = ("__pycache__", "*.pyc", "*.pyo", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache")


@dataclasses.dataclass(frozen=True)
class Layer:
    """A layer blob: ``data`` (gzip), its ``digest``, ``diff_id`` and ``size``."""

    data: bytes
    digest: str
    diff_id: str
    media_type: str = GZIP_LAYER
    comment: str = ""

    @property
    def size(self) -> int:
        return len(self.data)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def gzip_deterministic(raw: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(raw)
    return out.getvalue()


def layer_from_tar(raw: bytes, comment: str = "") -> Layer:
    """A layer from an uncompressed tar's bytes."""
    data = gzip_deterministic(raw)
    return Layer(data, sha256(data), sha256(raw), comment=comment)


class LayerWriter:
    """Collect ``(path in the image, file on disk or bytes)`` entries; ``layer()`` writes them
    sorted, with their parent directories."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[Path | bytes, bool]] = {}
        self._dirs: set[str] = set()

    def add_file(self, dest: str, source: Path | bytes, executable: bool = False) -> None:
        name = _clean(dest)
        self._files[name] = (source, executable)
        self._parents(name)

    def add_dir(self, dest: str) -> None:
        name = _clean(dest)
        if name:
            self._dirs.add(name)
            self._parents(name)

    def add_tree(self, source: Path, dest: str, ignore: Iterable[str] = ()) -> int:
        """Copy ``source`` (a directory's contents, or a file) to ``dest``; the files added."""
        patterns = (*ALWAYS_IGNORED, *ignore)
        if source.is_file():
            self.add_file(dest, source, os.access(source, os.X_OK))
            return 1
        count = 0
        self.add_dir(dest)
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source)
            if _ignored(rel, patterns):
                continue
            target = f"{dest.rstrip('/')}/{rel.as_posix()}"
            if path.is_symlink():
                raise BuildError(f"{path}: symbolic links are not copied into images; copy the file itself")
            if path.is_dir():
                self.add_dir(target)
            elif path.is_file():
                self.add_file(target, path, os.access(path, os.X_OK))
                count += 1
        return count

    def _parents(self, name: str) -> None:
        for parent in PurePosixPath(name).parents:
            text = str(parent)
            if text not in (".", "/", ""):
                self._dirs.add(text)

    def tar(self) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(self._dirs | set(self._files)):
                if name in self._files:
                    source, executable = self._files[name]
                    data = source if isinstance(source, bytes) else source.read_bytes()
                    info = _info(name, tarfile.REGTYPE, 0o755 if executable else 0o644)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                else:
                    tar.addfile(_info(name, tarfile.DIRTYPE, 0o755))
        return out.getvalue()

    def layer(self, comment: str = "") -> Layer:
        return layer_from_tar(self.tar(), comment)


def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _clean(dest: str) -> str:
    parts = [p for p in PurePosixPath("/" + dest).parts[1:] if p not in ("", ".")]
    if ".." in parts:
        raise BuildError(f"{dest}: a path in an image may not contain '..'")
    return "/".join(parts)


def _ignored(rel: Path, patterns: Iterable[str]) -> bool:
    text = rel.as_posix()
    for pattern in patterns:
        pattern = pattern.strip().rstrip("/")
        if not pattern or pattern.startswith("#"):
            continue
        if fnmatch.fnmatch(text, pattern) or any(fnmatch.fnmatch(part, pattern) for part in rel.parts) \
                or text.startswith(pattern + "/"):
            return True
    return False


def read_ignore_file(directory: Path) -> list[str]:
    """``.dockerignore`` patterns (negations are not supported and refused)."""
    path = directory / ".dockerignore"
    if not path.is_file():
        return []
    patterns = [line.strip() for line in path.read_text().splitlines() if line.strip()
                and not line.strip().startswith("#")]
    for pattern in patterns:
        if pattern.startswith("!"):
            raise BuildError(f"{path}: negated patterns ({pattern}) are not supported")
    return patterns
