"""The move into place when the destination is shared with other local users or has a file system
mounted inside it (F8 of the second security review): either everything moves, or the destination is
left exactly as it was.  Needs root (mounts, another uid); without it the tests fail, never skip."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from trees import snapshot

from conftest import place_modelpack
from ormb import api
from ormb.config import Settings
from ormb.errors import StorageError
from ormb.model import modelpack

pytestmark = pytest.mark.integration
FILEPATH = modelpack.ANNOTATION_FILEPATH
VICTIM, OTHER = 12345, 65534


@contextlib.contextmanager
def _as_user(uid: int) -> Iterator[None]:
    """This process's effective ids set to ``uid`` (the venv's interpreter under /root is not reachable by
    another user, so not a subprocess).  Needs root: without it the test fails."""
    if os.geteuid() != 0:
        pytest.fail("these tests run as root (they act as two other local users)")
    os.setegid(uid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@contextlib.contextmanager
def _mounted(args: list[str], where: Path) -> Iterator[None]:
    result = subprocess.run(["mount", *args, str(where)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"cannot mount (run the tests as root): {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(where)], check=False)


@pytest.fixture
def public(tmp_path: Path) -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path is root's alone)."""
    root = Path(tempfile.mkdtemp(prefix="ormb-shared-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _raw(files: dict[str, bytes]) -> list[tuple[str, bytes, dict[str, str]]]:
    return [("raw", data, {FILEPATH: path}) for path, data in files.items()]


def test_another_users_file_in_a_sticky_destination_stops_the_export_before_anything_moves(public: Path) -> None:
    # /models is shared (mode 1777, like /tmp); the victim exported v1 there; another user then put n.txt
    # there, which v2 adds.  Sticky: the victim may not replace it, so the old code moved part of v2 and
    # stopped at n.txt with EPERM.
    settings = Settings(home=public / "home", default_registry="localhost:5000")
    v1 = {f"{c}.bin": f"v1 {c}".encode() for c in "abcdefgh"}
    v2 = {**{path: b"v2" + data[2:] for path, data in v1.items()}, "n.txt": b"v2 n"}
    place_modelpack(settings.cache_dir, "localhost:5000/m/m:v1", _raw(v1))
    place_modelpack(settings.cache_dir, "localhost:5000/m/m:v2", _raw(v2))
    subprocess.run(["chmod", "-R", "a+rX", str(settings.home)], check=True)
    shared = public / "models"
    shared.mkdir()
    shared.chmod(0o1777)
    with _as_user(VICTIM):
        api.export("localhost:5000/m/m:v1", shared, metadata=False, settings=settings)
    with _as_user(OTHER):
        (shared / "n.txt").write_text("the other user's")
    before = snapshot(shared)
    with _as_user(VICTIM), pytest.raises(StorageError, match="n.txt") as info:
        api.export("localhost:5000/m/m:v2", shared, metadata=False, settings=settings)
    assert "another user" in str(info.value)
    assert snapshot(shared) == before
    assert not [p for p in shared.iterdir() if p.name.startswith(".ormb-export-")]


def _nested_mount_case(tmp_path: Path, settings: Settings) -> tuple[Path, Path]:
    files = {f"{c}.bin": f"new {c}".encode() for c in "abcdefgh"}
    files.update({"weights/w.bin": b"new weights", "weights/x.bin": b"new x"})
    place_modelpack(settings.cache_dir, "localhost:5000/m/m:v1", _raw(files))
    dest = tmp_path / "dest"
    (dest / "weights").mkdir(parents=True)
    for c in "abcdefgh":
        (dest / f"{c}.bin").write_bytes(f"old {c}".encode())
    return dest, dest / "weights"


def test_a_file_system_mounted_inside_the_destination_stops_the_export_before_anything_moves(
    tmp_path: Path, settings: Settings,
) -> None:
    dest, weights = _nested_mount_case(tmp_path, settings)
    with _mounted(["-t", "tmpfs", "-o", "size=1m", "tmpfs"], weights):
        (weights / "w.bin").write_bytes(b"old weights")
        before = snapshot(dest)
        with pytest.raises(StorageError, match="weights") as info:
            api.export("localhost:5000/m/m:v1", dest, metadata=False, settings=settings)
        assert "mount" in str(info.value) or "file system" in str(info.value)
        assert snapshot(dest) == before


def test_a_bind_mount_inside_the_destination_is_undone_not_half_moved(tmp_path: Path, settings: Settings) -> None:
    # a bind mount of the same file system has the same st_dev, so the check cannot see it; rename(2) still
    # refuses to cross it (EXDEV) in the middle of the move, and what moved before goes back
    dest, weights = _nested_mount_case(tmp_path, settings)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "w.bin").write_bytes(b"old weights")
    with _mounted(["--bind", str(elsewhere)], weights):
        before = snapshot(dest)
        with pytest.raises(StorageError, match="weights"):
            api.export("localhost:5000/m/m:v1", dest, metadata=False, settings=settings)
        assert snapshot(dest) == before
