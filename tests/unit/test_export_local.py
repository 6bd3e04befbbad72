"""Export from the cache copies file contents with the kernel (copy_file_range) from the cache's blob, ormb
format (stored gzip) and ModelPack raw layers alike, while a thread checks the blob's digest: the bytes come
out right, and a damaged cache blob of the right size exports nothing."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from conftest import make_model
from ormb import api
from ormb.cache import open_cache
from ormb.config import Settings
from ormb.content import filecopy
from ormb.errors import IntegrityError
from ormb.model import payload, unpack

SIZE = (3 << 20) + 777


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    copied: list[int] = []
    real = filecopy.copy_out

    def spy(source: int, offset: int, dest: int, count: int, stop: threading.Event | None = None) -> int:
        n = real(source, offset, dest, count, stop)
        copied.append(n)
        return n

    monkeypatch.setattr(payload, "copy_out", spy)
    monkeypatch.setattr(unpack, "copy_out", spy)
    return copied


def _layer_digests(settings: Settings, ref: str) -> list[str]:
    return [str(layer["digest"]) for layer in api.inspect(ref, settings=settings).layers if int(str(layer["size"])) > SIZE - 1]


@pytest.mark.parametrize("artifact_format", ["ormb", "modelpack"])
def test_export_copies_file_contents_from_the_cache_by_the_kernel(tmp_path: Path, settings: Settings,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 artifact_format: str) -> None:
    weights, small = os.urandom(SIZE), os.urandom(1000)
    api.save(make_model(tmp_path / "m", {"w.bin": weights, "sub/small.bin": small}), "team/m:v1",
             settings=settings, artifact_format=artifact_format)
    copied = _spy(monkeypatch)
    api.export("team/m:v1", tmp_path / "out", settings=settings)
    root = tmp_path / "out" / ("model" if artifact_format == "ormb" else "")
    assert (root / "w.bin").read_bytes() == weights and (root / "sub" / "small.bin").read_bytes() == small
    assert sum(copied) == SIZE + len(small)  # every byte of every file, none through Python


@pytest.mark.parametrize("artifact_format", ["ormb", "modelpack"])
@pytest.mark.parametrize("where", [0.1, 0.5, 0.99])
def test_a_damaged_cache_blob_of_the_right_size_exports_nothing(tmp_path: Path, settings: Settings,
                                                               artifact_format: str, where: float) -> None:
    weights = os.urandom(SIZE)
    api.save(make_model(tmp_path / "m", {"w.bin": weights}), "team/m:v1", settings=settings,
             artifact_format=artifact_format)
    (layer,) = _layer_digests(settings, "team/m:v1")
    blob = open_cache(settings).blob_path(layer)
    with open(blob, "r+b") as f:  # one byte of file content flips (not the gzip framing)
        f.seek(int(SIZE * where))
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(IntegrityError, match="does not match its digest"):
        api.export("team/m:v1", tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists()
