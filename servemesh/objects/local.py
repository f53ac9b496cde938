"""``LocalStore``: objects as files in one directory, shared by the replicas of one machine.

Each object is one file named by its ref, ``<root>/obj-<64 hex>``, holding a
32-byte header (magic, created, expires, size) and the payload. What keeps it safe:

- names come only from validated refs (``refs.check_ref``): one path component,
  no ``/`` or ``..``, so nothing outside the root is ever named;
- every file is opened relative to a descriptor of the root (``dir_fd``) with
  ``O_NOFOLLOW``: a symlink planted under a ref's name is refused, not followed;
  a FIFO, a device, a file with other hard links or another owner is refused too;
- files are written under a temporary name (``O_CREAT | O_EXCL``, mode 0600) and
  renamed into place, so a reader sees a whole object or none;
- the root is created 0700, must belong to this user and must not be a symlink;
- the content is checked against the ref on every read.

Writers and the collector take an exclusive ``flock`` on the directory, so replicas
in several processes extend and remove objects without losing each other's
updates; readers take no lock (a rename is atomic). POSIX only. File operations
run in the store's own worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import logging
import math
import os
import secrets
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError
from . import refs
from .base import DEFAULT_MAX_BYTES, DEFAULT_TTL, ObjectMeta, check_limits, check_size, check_ttl, expiry, later
from .errors import ObjectCorrupted, ObjectNotFound, ObjectStoreError, ObjectStoreUnavailable

log = logging.getLogger("servemesh.objects")

T = TypeVar("T")

#: magic, created, expires (inf: never), payload size
HEADER = struct.Struct(">8sddQ")
FILE_MAGIC = b"SMOBJ01\n"
TEMP_PREFIX = ".tmp-"
#: seconds after which a temporary file is a crashed writer's leftover
STALE_TEMP = 3600.0
#: worker threads of one store
_THREADS = 4
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class LocalStore:
    """A directory of objects. Build it with :meth:`open`. Same promises as the other
    backends (``base``)."""

    def __init__(self, root_fd: int, path: str, *, max_bytes: int, default_ttl: float,
                 clock: Callable[[], float]) -> None:
        check_limits(max_bytes, default_ttl)
        self.path = path
        self.max_bytes = max_bytes
        self.default_ttl = default_ttl
        self._clock = clock
        self._fd: int | None = root_fd
        # the root descriptor is closed only once no worker thread uses it: a number
        # reused by another open() must never be mistaken for the root
        self._guard = threading.Lock()
        self._users = 0
        self._closing = False
        # threads of its own: sync handlers waiting on the store may fill the loop's default
        # pool, and the store must still get a thread to answer them
        self._pool = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="servemesh-objects")

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
             default_ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.time) -> LocalStore:
        """The store in directory ``path`` (absolute; created 0700 if missing)."""
        check_limits(max_bytes, default_ttl)
        root = Path(path).expanduser()
        if not root.is_absolute():
            raise ConfigError(f"the object store directory must be an absolute path, not {str(path)!r}")
        try:
            os.makedirs(root, mode=0o700, exist_ok=True)
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if os.path.islink(root):  # O_DIRECTORY | O_NOFOLLOW on a symlink: ELOOP or ENOTDIR
                why = "it is a symbolic link: give the directory it points to"
            elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
                why = "it is not a directory"
            else:
                why = exc.strerror or str(exc)
            raise ConfigError(f"cannot use {root} as the object store directory: {why}") from exc
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                raise ConfigError(
                    f"the object store directory {root} belongs to uid {st.st_uid}, not to this user "
                    f"(uid {os.geteuid()}): whoever owns it can plant or read objects; choose a directory "
                    "of your own (SERVEMESH_OBJECT_STORE)")
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.fchmod(fd, 0o700)
                log.warning("object store directory %s was open to other users (mode %o); now 0700",
                            root, stat.S_IMODE(st.st_mode))
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, str(root), max_bytes=max_bytes, default_ttl=default_ttl, clock=clock)

    def __repr__(self) -> str:
        return f"LocalStore({self.path!r})"

    # -- the ObjectStore protocol ---------------------------------------------------------
    async def put(self, data: bytes, *, ttl: float | None = None) -> ObjectMeta:
        ttl = check_ttl(ttl, self.default_ttl)
        check_size(len(data), self.max_bytes)
        return await self._call(self._put, bytes(data), ttl)

    async def get(self, ref: str) -> tuple[bytes, ObjectMeta]:
        return await self._call(self._get, refs.check_ref(ref))

    async def stat(self, ref: str) -> ObjectMeta:
        return await self._call(self._stat, refs.check_ref(ref))

    async def exists(self, ref: str) -> bool:
        try:
            await self.stat(ref)
        except ObjectNotFound:
            return False
        return True

    async def delete(self, ref: str) -> bool:
        return await self._call(self._delete, refs.check_ref(ref))

    async def gc(self) -> int:
        return await self._call(self._gc)

    async def aclose(self) -> None:
        with self._guard:
            self._closing = True
            if self._users == 0 and self._fd is not None:
                os.close(self._fd)
                self._fd = None
        self._pool.shutdown(wait=False)  # a file operation under way finishes and releases the root

    # -- running in a worker thread, with the root descriptor held --------------------------
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closing:
            raise ObjectStoreError(f"the object store {self.path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(self._holding_root, fn, *args))

    def _holding_root(self, fn: Callable[..., T], *args: Any) -> T:
        with self._guard:
            if self._closing or self._fd is None:
                raise ObjectStoreError(f"the object store {self.path} is closed")
            self._users += 1
            fd = self._fd
        try:
            return fn(fd, *args)
        except OSError as exc:
            raise ObjectStoreUnavailable(self.path, exc.strerror or str(exc)) from exc
        finally:
            with self._guard:
                self._users -= 1
                if self._closing and self._users == 0 and self._fd is not None:
                    os.close(self._fd)
                    self._fd = None

    def _put(self, root: int, data: bytes, ttl: float) -> ObjectMeta:
        ref = refs.ref_for(data)
        with _locked(root):
            now = self._clock()
            expires = expiry(now, ttl)
            try:
                meta = self._meta(root, ref)
            except (ObjectNotFound, ObjectCorrupted):  # a broken entry is replaced below
                meta = None
            if meta is not None and not meta.expired(now):
                merged = later(meta.expires, expires)
                if merged == meta.expires:
                    return meta
                meta = ObjectMeta(ref, meta.size, meta.created, merged)
            else:
                meta = ObjectMeta(ref, len(data), now, expires)
            _write(root, meta, data)
            return meta

    def _get(self, root: int, ref: str) -> tuple[bytes, ObjectMeta]:
        fd, meta = _open_object(root, ref)
        try:
            if meta.expired(self._clock()):
                raise ObjectNotFound(ref, expired=True)
            check_size(meta.size, self.max_bytes, ref)
            with os.fdopen(fd, "rb", closefd=False) as file:
                file.seek(HEADER.size)
                data = file.read(meta.size)
        finally:
            os.close(fd)
        if len(data) != meta.size:
            raise ObjectCorrupted(ref, "the file is shorter than its header says")
        refs.verify(ref, data)
        return data, meta

    def _meta(self, root: int, ref: str) -> ObjectMeta:
        fd, meta = _open_object(root, ref)
        os.close(fd)
        return meta

    def _stat(self, root: int, ref: str) -> ObjectMeta:
        meta = self._meta(root, ref)
        if meta.expired(self._clock()):
            raise ObjectNotFound(ref, expired=True)
        return meta

    def _delete(self, root: int, ref: str) -> bool:
        with _locked(root):
            try:
                os.unlink(ref, dir_fd=root)
            except FileNotFoundError:
                return False
        return True

    def _gc(self, root: int) -> int:
        # scan without the lock; decide again under it, as a writer may have extended one since
        now = self._clock()
        dead: list[str] = []
        stale: list[str] = []
        with os.scandir(root) as entries:
            for entry in entries:
                if refs.is_ref(entry.name):
                    if self._dead(root, entry.name, now):
                        dead.append(entry.name)
                elif entry.name.startswith(TEMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        if time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP:
                            stale.append(entry.name)
        removed = 0
        if dead or stale:
            with _locked(root):
                now = self._clock()
                for name in dead:
                    if self._dead(root, name, now):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(name, dir_fd=root)
                            removed += 1
                for name in stale:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=root)
        return removed

    def _dead(self, root: int, ref: str, now: float) -> bool:
        """True for an expired object, and for an entry that can never be read."""
        try:
            return self._meta(root, ref).expired(now)
        except ObjectNotFound:
            return False
        except ObjectCorrupted as exc:
            log.warning("object store %s: removing %s", self.path, exc)
            return True
        except OSError as exc:  # one unreadable entry must not stop the collection of the others
            log.warning("object store %s: cannot read %s: %s", self.path, ref, exc.strerror or exc)
            return False


@contextlib.contextmanager
def _locked(root: int) -> Iterator[None]:
    """An exclusive lock on the store directory, across threads and processes (a fresh
    descriptor each time: flock excludes descriptions, not processes)."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open_object(root: int, ref: str) -> tuple[int, ObjectMeta]:
    """A descriptor of the object file ``ref`` and its header, after every check; the
    caller closes the descriptor."""
    try:
        fd = os.open(ref, _READ, dir_fd=root)
    except FileNotFoundError:
        raise ObjectNotFound(ref) from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise ObjectCorrupted(ref, "it is a symbolic link in the store directory, not an object file "
                                       "(not followed; something other than servemesh wrote there)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ObjectCorrupted(ref, "it is not a regular file (something other than servemesh wrote there)")
        if st.st_nlink > 1:  # 0 is fine: a writer renamed a newer copy over it since it was opened
            raise ObjectCorrupted(ref, f"the file has {st.st_nlink} hard links; servemesh makes files with one")
        if st.st_uid != os.geteuid():
            raise ObjectCorrupted(ref, f"the file belongs to uid {st.st_uid}, not to this user")
        return fd, _parse_header(ref, os.pread(fd, HEADER.size, 0), st.st_size)
    except BaseException:
        os.close(fd)
        raise


def _parse_header(ref: str, head: bytes, file_size: int) -> ObjectMeta:
    if len(head) < HEADER.size:
        raise ObjectCorrupted(ref, "the file is shorter than an object header")
    magic, created, expires, size = HEADER.unpack(head)
    if magic != FILE_MAGIC:
        raise ObjectCorrupted(ref, "the file has no servemesh object header")
    if HEADER.size + size != file_size:
        raise ObjectCorrupted(ref, f"its header says {size} bytes, the file holds {file_size - HEADER.size}")
    if not math.isfinite(created) or math.isnan(expires):
        raise ObjectCorrupted(ref, "its header holds invalid times")
    return ObjectMeta(ref, size, created, None if math.isinf(expires) else expires)


def _write(root: int, meta: ObjectMeta, data: bytes) -> None:
    """Write the object under a temporary name and rename it into place (atomically
    replacing an older file of the same ref, or a broken entry)."""
    temp = f"{TEMP_PREFIX}{meta.ref}-{secrets.token_hex(8)}"
    fd = os.open(temp, _CREATE, 0o600, dir_fd=root)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(HEADER.pack(FILE_MAGIC, meta.created, math.inf if meta.expires is None else meta.expires,
                                   meta.size))
            file.write(data)
        os.rename(temp, meta.ref, src_dir_fd=root, dst_dir_fd=root)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=root)
        raise
