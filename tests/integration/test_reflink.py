"""Exporting a ModelPack model clones raw layers from the cache on a file system that can (XFS here)."""

from __future__ import annotations

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
