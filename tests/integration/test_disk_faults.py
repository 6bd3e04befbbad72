"""A full disk, a read-only disk, a directory the user may not write: exit 1 with one line naming
the path, and a cache that is as it was (nothing half-written visible, no temporary file left).

The small disks are real: a tmpfs of a few hundred KiB mounted by the test as ORMB_HOME (the
suite runs as root; a missing mount capability is a failure, not a skip).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import make_model
from ormb import api
from ormb.cli.main import main
from ormb.config import Settings
from ormb.content.layout import OCILayout

pytestmark = pytest.mark.integration
DISK = 512 << 10


def _mount(directory: Path, options: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the suite needs root): {result.stderr.strip()}")


@pytest.fixture
def small_home(tmp_path: Path, ormb_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """ORMB_HOME on a tmpfs of 512 KiB."""
    home = tmp_path / "small-home"
    _mount(home, f"size={DISK}")
    monkeypatch.setenv("ORMB_HOME", str(home))
    try:
        yield Settings(home=home, default_registry="localhost:5000")
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def _state(settings: Settings) -> tuple[list[str], list[str], list[str]]:
    """(blobs, references, leftovers) of the cache: what a failed command must leave as it was."""
    cache = settings.cache_dir
    layout = OCILayout(cache)
    leftovers = sorted(p.name for p in (cache / ".ingest").iterdir()) if (cache / ".ingest").is_dir() else []
    leftovers += sorted(p.name for p in cache.glob(".index.json.*")) if cache.is_dir() else []
    return sorted(layout.blob_digests()), [n for n, _ in layout.references()], leftovers


def _one_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "internal error" not in lines[0], lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_save_onto_a_full_disk(tmp_path: Path, small_home: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    small = make_model(tmp_path / "small", {"w.bin": b"small weights"})
    assert main(["save", str(small), "team/small:v1"]) == 0
    before = _state(small_home)
    big = make_model(tmp_path / "big", {"w.bin": os.urandom(2 * DISK)})
    capsys.readouterr()
    assert main(["save", str(big), "team/big:v1"]) == 1
    _one_line(capsys, "No space left on device", str(small_home.cache_dir))
    assert _state(small_home) == before
    assert [str(m.reference) for m in api.models(settings=small_home)] == ["localhost:5000/team/small:v1"]


def test_pull_onto_a_full_disk(tmp_path: Path, small_home: Settings, registry: Any,
                               capsys: pytest.CaptureFixture[str]) -> None:
    ref = f"{registry.host}/disk/full:v1"
    pusher = Settings(home=tmp_path / "pusher", default_registry="localhost:5000")
    api.save(make_model(tmp_path / "big", {"w.bin": os.urandom(2 * DISK)}), ref, settings=pusher)
    api.push(ref, settings=pusher)
    capsys.readouterr()
    assert main(["pull", ref]) == 1, capsys.readouterr().err
    _one_line(capsys, "No space left on device", str(small_home.cache_dir))
    assert _state(small_home)[1:] == ([], [])  # no reference, no temporary file
    assert main(["prune"]) == 0  # and the cache is usable: what the pull left is collected
    assert _state(small_home) == ([], [], [])


def test_save_onto_a_read_only_disk(tmp_path: Path, ormb_home: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "read-only-home"
    _mount(home, "size=1m,ro")
    monkeypatch.setenv("ORMB_HOME", str(home))
    try:
        src = make_model(tmp_path / "m", {"w.bin": b"weights"})
        assert main(["save", str(src), "team/m:v1"]) == 1
        _one_line(capsys, "Read-only file system", str(home))
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def _save_as_nobody(home: str, src: str, out: Any) -> None:
    os.setgid(65534)
    os.setuid(65534)
    os.environ["ORMB_HOME"] = home
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["save", src, "team/m:v1"])
    out.put((code, err.getvalue()))


def test_save_into_a_cache_the_user_may_not_write(tmp_path: Path) -> None:
    """Another user's cache (root's, 0755): permission denied, exit 1, the path named."""
    readable = Path(tempfile.mkdtemp(prefix="ormb-test-nobody-"))  # pytest's tmp_path is 0700: nobody needs a way in
    try:
        os.chmod(readable, 0o755)
        ormb_home = readable / "root-home"
        settings = Settings(home=ormb_home, default_registry="localhost:5000")
        api.save(make_model(readable / "first", {"w.bin": b"root's"}), "team/first:v1", settings=settings)
        src = make_model(readable / "m", {"w.bin": b"weights"})
        before = _state(settings)
        context = multiprocessing.get_context("fork")
        out = context.Queue()
        child = context.Process(target=_save_as_nobody, args=(str(ormb_home), str(src), out))
        child.start()
        code, err = out.get(timeout=60)
        child.join(10)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), err
        assert "Permission denied" in lines[0] and str(settings.cache_dir) in lines[0], lines[0]
        assert _state(settings) == before
    finally:
        shutil.rmtree(readable)
