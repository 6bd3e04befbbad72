"""A raw layer enters the cache by a kernel copy (copy_file_range here on ext4; a reflink on XFS: see
tests/integration/test_reflink.py), hashed from the copy: the blob's name is always its stored bytes' digest,
whatever the source does meanwhile; a source that changes size stores nothing; every fallback gives the same
bytes."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from conftest import make_model
from ormb import api
from ormb.config import Settings
from ormb.content import filecopy
from ormb.content.layout import OCILayout
from ormb.errors import StorageError

SIZE = (3 * filecopy.STEP) + 4321  # several pieces in the copier thread, and a tail


def _source(tmp_path: Path, size: int = SIZE) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    return path, data


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.copy_file_range

    def spy(src: int, dst: int, count: int, offset_src: int | None = None, offset_dst: int | None = None) -> int:
        n = real(src, dst, count, offset_src, offset_dst)
        calls.append(n)
        return n

    monkeypatch.setattr(filecopy.os, "copy_file_range", spy)
    return calls


def _leftovers(layout: OCILayout) -> list[str]:
    return sorted(p.name for p in (layout.root / ".ingest").iterdir())


@pytest.mark.parametrize("size", [0, 1, 5000, SIZE])
def test_a_file_is_copied_by_the_kernel_and_named_by_its_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 size: int) -> None:
    path, data = _source(tmp_path, size)
    layout = OCILayout(tmp_path / "cache")
    calls, advanced = _spy(monkeypatch), []
    with open(path, "rb") as f:
        desc = layout.ingest_copy(f, size, "application/octet-stream", {"a": "b"}, name="w", advance=advanced.append)
    assert desc.digest == "sha256:" + hashlib.sha256(data).hexdigest() and desc.size == size
    assert desc.annotations == {"a": "b"}
    assert layout.blob_path(desc.digest).read_bytes() == data
    assert sum(calls) == size and sum(advanced) == size
    assert _leftovers(layout) == []


@pytest.mark.parametrize("failure", [errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL])
def test_where_copy_file_range_cannot_the_bytes_are_copied_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   failure: int) -> None:
    path, data = _source(tmp_path)

    def refuse(*args: object) -> int:
        raise OSError(failure, os.strerror(failure))

    monkeypatch.setattr(filecopy.os, "copy_file_range", refuse)
    layout = OCILayout(tmp_path / "cache")
    with open(path, "rb") as f:
        desc = layout.ingest_copy(f, SIZE, "x", name="w")
    assert layout.blob_path(desc.digest).read_bytes() == data


@pytest.mark.parametrize("change", [-1, +1, -filecopy.STEP])
def test_a_source_that_changes_size_stores_nothing(tmp_path: Path, change: int) -> None:
    path, _ = _source(tmp_path, SIZE + change)
    layout = OCILayout(tmp_path / "cache")
    with open(path, "rb") as f, pytest.raises(StorageError, match="weights.bin changed size while it was being saved"):
        layout.ingest_copy(f, SIZE, "x", name=str(path))
    assert list(layout.blob_digests()) == [] and _leftovers(layout) == []


def test_a_source_rewritten_during_the_copy_still_gives_a_blob_named_by_what_it_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest is taken of the copy, not of the source: bytes the source gets after a piece was copied
    cannot make the cache hold a blob under another content's name."""
    path, data = _source(tmp_path)
    real = filecopy.copy_range
    pieces: list[int] = []

    def rewriting(source: int, dest: int, offset: int, count: int) -> int:
        n = real(source, dest, offset, count)
        pieces.append(offset)
        os.pwrite(source, b"\xff" * 4096, 0)  # the first page changes after it was copied
        return n

    monkeypatch.setattr(filecopy, "copy_range", rewriting)
    layout = OCILayout(tmp_path / "cache")
    with open(path, "r+b") as f:
        desc = layout.ingest_copy(f, SIZE, "x", name="w")
    stored = layout.blob_path(desc.digest).read_bytes()
    assert desc.digest == "sha256:" + hashlib.sha256(stored).hexdigest()
    assert stored == data and len(pieces) > 1


def test_a_full_disk_during_the_copy_is_a_storage_error_naming_the_cache(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _source(tmp_path)

    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(filecopy.os, "copy_file_range", full)
    layout = OCILayout(tmp_path / "cache")
    with open(path, "rb") as f, pytest.raises(StorageError, match="cannot write into the cache.*No space left"):
        layout.ingest_copy(f, SIZE, "x", name="w")
    assert list(layout.blob_digests()) == [] and _leftovers(layout) == []


def test_modelpack_save_copies_each_raw_layer_by_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = os.urandom(SIZE)
    model = make_model(tmp_path / "m", {"w.bin": weights, "config.json": b"{}"})
    calls = _spy(monkeypatch)
    settings = Settings(home=tmp_path / "home", default_registry="localhost:5000")
    api.save(model, "team/m:v1", settings=settings, artifact_format="modelpack")
    assert sum(calls) == SIZE + 2
    api.export("team/m:v1", tmp_path / "out", settings=settings)
    assert (tmp_path / "out" / "w.bin").read_bytes() == weights
