"""Exporting a ModelPack model clones raw layers from the cache on a file system that can (XFS here)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_model
from ormb import api
from ormb.config import Settings

pytestmark = pytest.mark.integration


def _used_kib(path: Path) -> int:
    out = subprocess.run(["df", "--output=used", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    """A 300 MiB XFS file system with reflink, loop-mounted (the test command installs xfsprogs; needs root)."""
    if shutil.which("mkfs.xfs") is None:
        pytest.fail("mkfs.xfs is not installed; run scripts/test, which installs xfsprogs")
    image, mount = tmp_path / "xfs.img", tmp_path / "xfs"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(300 << 20)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_export_clones_instead_of_copying(xfs: Path) -> None:
    settings = Settings(home=xfs / "home", default_registry="localhost:5000")
    weights = os.urandom(64 << 20)
    src = make_model(xfs / "src", {"w.bin": weights})
    api.save(src, "team/m:v1", settings=settings, artifact_format="modelpack")
    os.sync()
    before = _used_kib(xfs)
    api.export("team/m:v1", xfs / "out", settings=settings)
    os.sync()
    grown = _used_kib(xfs) - before
    assert (xfs / "out" / "w.bin").read_bytes() == weights
    assert grown < 4 << 10, f"the export used {grown} KiB more; a clone of 64 MiB should use almost none"
    # the clone is independent: changing it does not touch the cache
    with open(xfs / "out" / "w.bin", "r+b") as f:
        f.write(b"changed")
    api.export("team/m:v1", xfs / "again", settings=settings)
    assert (xfs / "again" / "w.bin").read_bytes() == weights


def test_a_modelpack_save_clones_the_files_into_the_cache(xfs: Path) -> None:
    """Saving reflinks each raw layer into the cache (no second copy on disk) and hashes the clone; the clone is
    the cache's own: writing the model file afterwards changes nothing in the cache."""
    settings = Settings(home=xfs / "home", default_registry="localhost:5000")
    weights = os.urandom(64 << 20)
    src = make_model(xfs / "src", {"w.bin": weights})
    os.sync()
    before = _used_kib(xfs)
    api.save(src, "team/m:v1", settings=settings, artifact_format="modelpack")
    os.sync()
    grown = _used_kib(xfs) - before
    assert grown < 4 << 10, f"the save used {grown} KiB more; a clone of 64 MiB should use almost none"
    with open(src / "model" / "w.bin", "r+b") as f:
        f.write(b"changed after the save")
    api.export("team/m:v1", xfs / "out", settings=settings)
    assert (xfs / "out" / "w.bin").read_bytes() == weights


@pytest.mark.parametrize("extra", [1, 65536])
def test_a_source_longer_when_cloned_and_back_to_size_after_stores_nothing(xfs: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          extra: int) -> None:
    """A model file that is longer at the moment of the reflink and back to its listed size when the save checks
    it: the clone holds the extra bytes, so it must not become the blob named by the first ``size`` bytes (the
    review's race, made deterministic by truncating the source right after the real clone)."""
    from ormb.content import filecopy
    from ormb.content.layout import OCILayout
    from ormb.errors import StorageError

    size = 3 * filecopy.STEP + 4321
    path = xfs / "weights.bin"
    path.write_bytes(os.urandom(size + extra))
    real_clone = filecopy.clone

    def clone_then_shrink(source: int, dest: int) -> bool:
        cloned = real_clone(source, dest)
        os.truncate(path, size)
        return cloned

    monkeypatch.setattr(filecopy, "clone", clone_then_shrink)
    layout = OCILayout(xfs / "cache")
    with open(path, "rb") as f, pytest.raises(StorageError, match="weights.bin changed size while it was being saved"):
        layout.ingest_copy(f, size, "x", name=str(path))
    assert list(layout.blob_digests()) == []
    assert sorted(p.name for p in (layout.root / ".ingest").iterdir()) == []


def test_a_damaged_cache_blob_is_refused_when_cloned_too(xfs: Path) -> None:
    """On a reflink file system export clones raw layers from the cache; a cache blob whose bytes no longer match
    its name (same size) is refused as on ext4, where the copy is checked: nothing is written."""
    from ormb.errors import IntegrityError

    settings = Settings(home=xfs / "home", default_registry="localhost:5000")
    weights = os.urandom(8 << 20)
    src = make_model(xfs / "src", {"w.bin": weights})
    api.save(src, "team/m:v1", settings=settings, artifact_format="modelpack")
    digest = hashlib.sha256(weights).hexdigest()
    blob = next((xfs / "home").rglob(digest))
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * 16)
    with pytest.raises(IntegrityError, match="does not match its digest"):
        api.export("team/m:v1", xfs / "out", settings=settings)
    assert not (xfs / "out").exists() or list((xfs / "out").iterdir()) == []
