"""The local directory backend against what can be planted in its directory: symlinks,
hard links, FIFOs, garbage, stale temporary files; and its directory's permissions."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from servemesh.errors import ConfigError
from servemesh.objects import LocalStore, ObjectCorrupted, ObjectNotFound
from servemesh.objects.local import HEADER, TEMP_PREFIX
from servemesh.objects.refs import ref_for

FAKE_REF = "obj-" + "0" * 64


@pytest.fixture
async def store(tmp_path):
    s = LocalStore.open(tmp_path / "objects")
    yield s
    await s.aclose()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


async def test_a_symlink_with_a_valid_ref_name_is_refused_not_followed(store, tmp_path):
    os.symlink("/etc/passwd", tmp_path / "objects" / FAKE_REF)
    for call in (store.get, store.stat, store.exists):
        with pytest.raises(ObjectCorrupted, match="symbolic link"):
            await call(FAKE_REF)


async def test_a_symlink_to_a_genuine_object_file_is_refused_too(store, tmp_path):
    other = LocalStore.open(tmp_path / "elsewhere")
    ref = (await other.put(b"genuine")).ref
    await other.aclose()
    os.symlink(tmp_path / "elsewhere" / ref, tmp_path / "objects" / ref)
    with pytest.raises(ObjectCorrupted, match="symbolic link"):
        await store.get(ref)


async def test_a_hard_link_planted_in_the_store_is_refused(store, tmp_path):
    other = LocalStore.open(tmp_path / "elsewhere")
    ref = (await other.put(b"genuine")).ref
    await other.aclose()
    os.link(tmp_path / "elsewhere" / ref, tmp_path / "objects" / ref)
    with pytest.raises(ObjectCorrupted, match="hard links"):
        await store.get(ref)


async def test_a_fifo_is_refused_without_blocking(store, tmp_path):
    os.mkfifo(tmp_path / "objects" / FAKE_REF)
    with pytest.raises(ObjectCorrupted, match="not a regular file"):
        await store.get(FAKE_REF)


@pytest.mark.parametrize("content, why", [
    (b"root:x:0:0:root:/root:/bin/bash\n" * 4, "no servemesh object header"),
    (b"short", "shorter than an object header"),
    (HEADER.pack(b"SMOBJ01\n", 1.0, 2.0, 999) + b"x", "header says 999 bytes"),
])
async def test_garbage_under_a_ref_name_is_refused(store, tmp_path, content, why):
    (tmp_path / "objects" / FAKE_REF).write_bytes(content)
    with pytest.raises(ObjectCorrupted, match=why):
        await store.get(FAKE_REF)


async def test_a_well_formed_file_whose_payload_does_not_match_its_name_is_refused(store, tmp_path):
    payload = b"not what the ref names"
    (tmp_path / "objects" / FAKE_REF).write_bytes(HEADER.pack(b"SMOBJ01\n", 1.0, float("inf"), len(payload))
                                                  + payload)
    with pytest.raises(ObjectCorrupted, match="hashes to"):
        await store.get(FAKE_REF)


async def test_put_replaces_a_planted_symlink_without_touching_its_target(store, tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"do not overwrite")
    ref = ref_for(b"payload")
    os.symlink(target, tmp_path / "objects" / ref)
    await store.put(b"payload")
    assert target.read_bytes() == b"do not overwrite"
    assert stat.S_ISREG(os.lstat(tmp_path / "objects" / ref).st_mode)
    assert (await store.get(ref))[0] == b"payload"


async def test_gc_removes_planted_entries_and_stale_temp_files_and_leaves_the_rest(store, tmp_path):
    root = tmp_path / "objects"
    os.symlink("/etc/passwd", root / FAKE_REF)
    (root / ("obj-" + "1" * 64)).write_bytes(b"garbage")
    stale = root / f"{TEMP_PREFIX}obj-x-1"
    stale.write_bytes(b"crashed writer")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    fresh = root / f"{TEMP_PREFIX}obj-x-2"
    fresh.write_bytes(b"writing now")
    (root / "README").write_bytes(b"not ours")
    live = (await store.put(b"live")).ref
    assert await store.gc() == 2
    assert sorted(os.listdir(root)) == sorted([fresh.name, "README", live])


async def test_files_are_0600_and_the_directory_0700(store, tmp_path):
    ref = (await store.put(b"private")).ref
    assert mode(tmp_path / "objects") == 0o700
    assert mode(tmp_path / "objects" / ref) == 0o600


async def test_an_existing_directory_open_to_others_is_tightened(tmp_path):
    root = tmp_path / "loose"
    root.mkdir(mode=0o777)
    os.chmod(root, 0o777)
    store = LocalStore.open(root)
    await store.aclose()
    assert mode(root) == 0o700


def test_the_root_must_not_be_a_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(ConfigError, match="symbolic link"):
        LocalStore.open(tmp_path / "link")


def test_the_root_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigError, match="not a directory"):
        LocalStore.open(tmp_path / "file")


def test_the_root_must_be_absolute():
    with pytest.raises(ConfigError, match="absolute"):
        LocalStore.open("relative/objects")


async def test_objects_survive_reopening_the_store(tmp_path):
    first = LocalStore.open(tmp_path / "objects")
    ref = (await first.put(b"durable")).ref
    await first.aclose()
    second = LocalStore.open(tmp_path / "objects")
    assert (await second.get(ref))[0] == b"durable"
    assert await second.delete(ref)
    with pytest.raises(ObjectNotFound):
        await second.get(ref)
    await second.aclose()


async def test_closing_releases_the_directory_descriptor(tmp_path):
    store = LocalStore.open(tmp_path / "objects")
    await store.put(b"x")
    await store.aclose()
    assert store._fd is None  # the root descriptor is released
