"""ModelPack weight layers are written several at a time (:func:`ormb.model.modelpack.write_files`): the files
are made in the manifest's order, their bytes arrive in threads.  What must hold whatever the concurrency: the
same tree as one layer at a time; a layer that fails (a corrupt blob, a blob that cannot be read) exports
nothing, leaves the destination as it was, and leaves no file descriptor open; two layers of one path are
refused."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pytest

from conftest import make_model
from ormb import api
from ormb.cache import open_cache
from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.errors import IntegrityError, StorageError, UnsafeArchiveError
from ormb.model import modelpack
from ormb.model.export import export_model
from ormb.model.loaded import load_model
from ormb.oci.descriptor import Descriptor, Manifest

FILES = {f"w-{i}.bin": os.urandom((1 << 20) + 977 * i) for i in range(5)} | {"config.json": b'{"a": 1}\n'}


def _saved(tmp_path: Path, settings: Settings) -> tuple[OCILayout, Manifest]:
    result = api.save(make_model(tmp_path / "m", FILES), "team/m:v1", settings=settings, artifact_format="modelpack")
    cache = open_cache(settings)
    return cache, load_model(cache, cache.resolve(f"x@{result.digest}")).manifest


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _weights(manifest: Manifest) -> list[Descriptor]:
    return [item.descriptor for item in modelpack.layer_files(manifest) if item.path and item.path.name.startswith("w-")]


@pytest.mark.parametrize("local", [True, False], ids=["from-cache-copy", "streamed"])
@pytest.mark.parametrize("concurrency", [1, 2, 4])
def test_layers_written_at_once_give_the_same_tree(tmp_path: Path, settings: Settings, local: bool,
                                                   concurrency: int) -> None:
    cache, manifest = _saved(tmp_path, settings)
    before = _open_fds()
    export_model(cache, manifest, tmp_path / "out", metadata=None, local_copy=(lambda d: cache.blob_path(d.digest)) if local else None,
                 concurrency=concurrency)
    assert _tree(tmp_path / "out") == FILES
    assert _open_fds() == before


@pytest.mark.parametrize("local", [True, False], ids=["from-cache-copy", "streamed"])
@pytest.mark.parametrize("which", [0, 2, 4])
def test_a_corrupt_layer_among_several_exports_nothing_and_leaks_no_descriptor(
        tmp_path: Path, settings: Settings, local: bool, which: int) -> None:
    cache, manifest = _saved(tmp_path, settings)
    blob = cache.blob_path(_weights(manifest)[which].digest)
    with open(blob, "r+b") as f:  # one byte flips, the size stays
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "kept.txt").write_bytes(b"the user's")
    before = _open_fds()
    with pytest.raises(IntegrityError, match="does not match"):
        export_model(cache, manifest, dest, metadata=None, local_copy=(lambda d: cache.blob_path(d.digest)) if local else None,
                     concurrency=2)
    assert _tree(dest) == {"kept.txt": b"the user's"}
    assert os.listdir(dest) == ["kept.txt"]  # no staging directory left behind
    assert _open_fds() == before


class _FailingSource:
    """The cache, except that one blob cannot be read (a registry that drops the connection)."""

    def __init__(self, cache: OCILayout, failing: str) -> None:
        self._cache, self._failing = cache, failing

    @contextmanager
    def fetch(self, desc: Descriptor) -> Iterator[BinaryIO]:
        if desc.digest == self._failing:
            raise StorageError("the connection was cut")
        with self._cache.fetch(desc) as blob:
            yield blob


@pytest.mark.parametrize("which", [0, 3])
def test_a_layer_that_cannot_be_fetched_exports_nothing(tmp_path: Path, settings: Settings, which: int) -> None:
    cache, manifest = _saved(tmp_path, settings)
    source = _FailingSource(cache, _weights(manifest)[which].digest)
    before = _open_fds()
    with pytest.raises(StorageError, match="connection was cut"):
        export_model(source, manifest, tmp_path / "out", metadata=None, concurrency=2)
    assert not (tmp_path / "out").exists()
    assert _open_fds() == before


def test_two_raw_layers_of_one_path_are_refused_whatever_the_concurrency(tmp_path: Path, settings: Settings) -> None:
    cache, manifest = _saved(tmp_path, settings)
    files = modelpack.layer_files(manifest)
    first = next(item for item in files if item.path and item.path.name == "w-0.bin")
    with pytest.raises(UnsafeArchiveError, match="two (entries or )?layers write"):
        export_model(cache, manifest, tmp_path / "out", metadata=None, files=[*files, first], concurrency=2)
    assert not (tmp_path / "out").exists()
