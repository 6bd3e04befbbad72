"""Export on a small real file system (tmpfs, mounted by the test; needs root): a full disk and a tar
bomb are clear errors that leave the destination as it was."""

from __future__ import annotations

import contextlib
import gzip
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from conftest import make_model, place_model, place_modelpack
from ormb import api
from ormb.config import Settings
from ormb.errors import StorageError, UnsafeArchiveError

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def _tmpfs(mount: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that fills up.  Mounting needs root; without it the test fails, never skips."""
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (run the tests as root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    with _tmpfs(mount):
        yield mount


@pytest.fixture
def public_small_fs() -> Iterator[Path]:
    """The same, where any user can reach it (pytest's tmp_path is root's alone)."""
    mount = Path(tempfile.mkdtemp(prefix="ormb-small-"))
    mount.chmod(0o755)
    try:
        with _tmpfs(mount):
            yield mount
    finally:
        mount.rmdir()


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORMB_HOME": str(settings.home), "ORMB_NO_PROGRESS": "1"}
    env.pop("ORMB_MAX_EXPAND", None)
    return subprocess.run([sys.executable, "-m", "ormb", *args], capture_output=True, text=True, env=env)


def _one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _untouched(dest: Path) -> None:
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]
    assert (dest / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("artifact_format", ["ormb", "modelpack"])
def test_a_full_disk_is_a_storage_error_naming_the_file(tmp_path: Path, settings: Settings, small_fs: Path,
                                                        artifact_format: str) -> None:
    api.save(make_model(tmp_path / "src", {"w.bin": os.urandom(8 << 20)}), "m:v1", settings=settings,
             artifact_format=artifact_format)
    dest = small_fs / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    where = dest / "model" / "w.bin" if artifact_format == "ormb" else dest / "w.bin"
    _one_line_error(_cli(settings, "export", "m:v1", "-d", str(dest)), 1, f"cannot write {where}",
                    "No space left on device")
    _untouched(dest)


def test_a_disk_that_fills_up_at_the_metadata_is_a_storage_error(tmp_path: Path, settings: Settings,
                                                                 small_fs: Path) -> None:
    api.save(make_model(tmp_path / "src", {"empty.bin": b""}, ormbfile="format: Others\nauthor: me\n"), "m:v1",
             settings=settings)
    dest = small_fs / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with open(small_fs / "filler", "wb", buffering=0) as filler:  # the rest of the disk: empty files fit, bytes do not
        try:
            while filler.write(b"\0" * 4096):
                pass
        except OSError:
            pass
    _one_line_error(_cli(settings, "export", "m:v1", "-d", str(dest)), 1, f"cannot write {dest / 'ormbfile.yaml'}",
                    "No space left on device")
    _untouched(dest)


def _bomb_tar(size: int) -> list[bytes]:
    """A tar of one file of ``size`` zero bytes, as pieces (header, 1 MiB of zeros each, end)."""
    info = tarfile.TarInfo("model/bomb.bin")
    info.size = size
    assert size % (1 << 20) == 0
    return [info.tobuf(tarfile.PAX_FORMAT), *[b"\0" * (1 << 20)] * (size >> 20), b"\0" * 1024]


def _gzip_bomb(size: int) -> bytes:
    """Concatenated gzip members (valid gzip): 2 GiB of zeros in about 2 MiB."""
    pieces = _bomb_tar(size)
    zeros = gzip.compress(pieces[1], mtime=0)
    return gzip.compress(pieces[0], mtime=0) + zeros * (len(pieces) - 2) + gzip.compress(pieces[-1], mtime=0)


def test_a_tar_bomb_is_refused_before_it_fills_the_disk(tmp_path: Path, settings: Settings, small_fs: Path) -> None:
    place_model(settings.cache_dir, "localhost:5000/evil/bomb:v1", _gzip_bomb(2 << 30))
    dest = small_fs / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    line = _one_line_error(_cli(settings, "export", "evil/bomb:v1", "-d", str(dest)), 4, "model/bomb.bin",
                           "--max-expand", "ORMB_MAX_EXPAND")
    assert "1.0 GiB" in line  # the default limit for a small layer
    _untouched(dest)
    # raising the limit lets it through to the disk, which is then too small: a different, honest error
    _one_line_error(_cli(settings, "export", "evil/bomb:v1", "-d", str(dest), "--max-expand", "3G"), 1,
                    "No space left on device")
    _untouched(dest)


def test_a_zstd_tar_layer_is_bounded_and_the_limit_can_be_lowered(tmp_path: Path, settings: Settings,
                                                                  small_fs: Path) -> None:
    pieces = _bomb_tar(8 << 20)
    compressor = zstandard.ZstdCompressor()
    layer = compressor.compress(b"".join(pieces))
    place_modelpack(settings.cache_dir, "localhost:5000/evil/zbomb:v1", [("tar+zstd", layer, {})])
    dest = small_fs / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(UnsafeArchiveError, match="expands to more than 1.0 MiB"):
        api.export("evil/zbomb:v1", dest, max_expand=1 << 20, settings=settings)
    _untouched(dest)
    with pytest.raises(StorageError, match="No space left on device"):  # 8 MiB do not fit in 4 MiB
        api.export("evil/zbomb:v1", dest, max_expand=16 << 20, settings=settings)
    _untouched(dest)


def test_a_read_only_destination_is_a_storage_error(tmp_path: Path, settings: Settings, small_fs: Path) -> None:
    api.save(make_model(tmp_path / "src", {"w.bin": b"w"}), "m:v1", settings=settings)
    dest = small_fs / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        _one_line_error(_cli(settings, "export", "m:v1", "-d", str(dest)), 1, str(dest), "Read-only file system")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    _untouched(dest)


def test_permission_denied_is_a_storage_error(public_small_fs: Path) -> None:
    # as root permissions do not apply: the export runs as nobody (effective ids, in this process; the venv
    # may not be readable by nobody), into a destination whose model/ nobody may not write
    small_fs = public_small_fs
    home = small_fs / "home"
    settings = Settings(home=home, default_registry="localhost:5000")
    api.save(make_model(small_fs / "src", {"w.bin": b"w"}), "m:v1", settings=settings)
    subprocess.run(["chmod", "-R", "a+rX", str(small_fs)], check=True)
    dest = small_fs / "dest"
    (dest / "model").mkdir(parents=True)
    (dest / "keep.txt").write_text("mine")
    os.chmod(dest, 0o777)  # the top is writable (staging works), model/ is not: the move into place is refused
    nobody = 65534
    os.setegid(nobody)
    os.seteuid(nobody)
    try:
        with pytest.raises(StorageError, match="Permission denied") as info:
            api.export("m:v1", dest, settings=settings)
    finally:
        os.seteuid(0)
        os.setegid(0)
    assert f"cannot write in {dest / 'model'}" in str(info.value)
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt", "model"]
    assert not list((dest / "model").iterdir())
