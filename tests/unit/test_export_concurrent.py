"""ModelPack weight layers are written several at a time (:func:`ormb.model.modelpack.write_files`): the files
are made in the manifest's order, their bytes arrive in threads.  What must hold whatever the concurrency: the
same tree as one layer at a time; a layer that fails (a corrupt blob, a blob that cannot be read) exports
nothing, leaves the destination as it was, and leaves no file descriptor open; two layers of one path are
refused."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import BinaryIO

import pytest

from conftest import make_model
from ormb import api
from ormb.cache import open_cache
from ormb.config import Settings
from ormb.content import filecopy
from ormb.content.background import FileDigest, Stopped
from ormb.content.layout import OCILayout
from ormb.errors import IntegrityError, StorageError, UnsafeArchiveError
from ormb.model import modelpack
from ormb.model.export import export_model
from ormb.model.loaded import load_model
from ormb.model.staging import staged_directory
from ormb.model.unpack import prepare_raw
from ormb.oci.descriptor import Descriptor, Manifest

FILES = {f"w-{i}.bin": os.urandom((1 << 20) + 977 * i) for i in range(5)} | {"config.json": b'{"a": 1}\n'}


def _saved(tmp_path: Path, settings: Settings) -> tuple[OCILayout, Manifest]:
    result = api.save(make_model(tmp_path / "m", FILES), "team/m:v1", settings=settings, artifact_format="modelpack")
    cache = open_cache(settings)
    return cache, load_model(cache, cache.resolve(f"x@{result.digest}")).manifest


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _open_fds() -> frozenset[tuple[int, str]]:
    """The open descriptors of files (not sockets or pipes), after collecting garbage: a leak is one that is
    open afterwards and was not before.  Comparing counts was flaky: files of earlier tests closed by the
    collector or by their threads while an export ran made the count go down (26 against 29)."""
    gc.collect()
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed meanwhile (the listing's own descriptor among them)
            continue
        if target.startswith("/") and not target.startswith(("/dev/", "/proc/")):
            found.add((int(name), target))
    return frozenset(found)


def _leaked(before: frozenset[tuple[int, str]]) -> frozenset[tuple[int, str]]:
    return _open_fds() - before


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
    assert not _leaked(before)


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
    assert not _leaked(before)


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
    assert not _leaked(before)


def test_two_raw_layers_of_one_path_are_refused_whatever_the_concurrency(tmp_path: Path, settings: Settings) -> None:
    cache, manifest = _saved(tmp_path, settings)
    files = modelpack.layer_files(manifest)
    first = next(item for item in files if item.path and item.path.name == "w-0.bin")
    with pytest.raises(UnsafeArchiveError, match="two (entries or )?layers write"):
        export_model(cache, manifest, tmp_path / "out", metadata=None, files=[*files, first], concurrency=2)
    assert not (tmp_path / "out").exists()


# -- one failure (or Ctrl-C) stops the other layers ------------------------------------------------------------------

PIECE = 16 << 10  # what a trickling layer sends per read
STALL = 20.0  # how long a stalled layer waits to be released before it sends anyway (the old code waited for it)


class _Registry:
    """The cache's blobs, served as a test of cancellation needs: ``failing`` fails once every ``trickling`` layer
    sent its first piece; ``stalled`` sends nothing until ``release`` is set (a registry that stalls mid-blob);
    the others trickle: ``PIECE`` bytes per read, slowly.  Counts the bytes sent by reads that began after
    ``failed`` (the moment the failure or the interrupt happened)."""

    def __init__(self, cache: OCILayout, failing: str | None, stalled: str, trickling: list[str]) -> None:
        self._cache, self._failing, self._stalled = cache, failing, stalled
        self.started = {digest: threading.Event() for digest in trickling}
        self.failed, self.release = threading.Event(), threading.Event()
        self.stalled_waiting, self.stalled_returned = threading.Event(), threading.Event()
        self.fetched: list[str] = []
        self.late_bytes = 0
        self._lock = threading.Lock()

    def all_started(self) -> bool:
        return all(event.wait(10) for event in self.started.values()) and self.stalled_waiting.wait(10)

    @contextmanager
    def fetch(self, desc: Descriptor) -> Iterator[BinaryIO]:
        self.fetched.append(desc.digest)
        with self._cache.fetch(desc) as blob:
            data = blob.read()
        yield _Piecewise(self, desc.digest, data)  # type: ignore[misc]

    def read(self, digest: str, data: bytes, offset: int, n: int) -> bytes:
        if digest == self._failing:
            self.all_started()
            self.failed.set()
            raise StorageError("the connection was cut")
        if digest == self._stalled:
            if not self.stalled_returned.is_set():  # the first read stalls
                self.stalled_waiting.set()
                self.release.wait(STALL)
                self.stalled_returned.set()
            return data[offset:offset + n]
        late = self.failed.is_set()
        time.sleep(0.005)
        piece = data[offset:offset + min(n, PIECE)]
        if late:
            with self._lock:
                self.late_bytes += len(piece)
        if digest in self.started:
            self.started[digest].set()
        return piece


class _Piecewise:
    def __init__(self, registry: _Registry, digest: str, data: bytes) -> None:
        self._registry, self._digest, self._data, self._offset = registry, digest, data, 0

    def read(self, n: int = -1) -> bytes:
        n = len(self._data) - self._offset if n < 0 else n
        piece = self._registry.read(self._digest, self._data, self._offset, n)
        self._offset += len(piece)
        return piece


def _layer_threads_end() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith("ormb-layer"):
            thread.join(STALL + 10)
            assert not thread.is_alive()


def _interrupt_main_when(ready: Callable[[], bool], then: threading.Event) -> threading.Thread:
    """Ctrl-C as the terminal sends it: SIGINT to the main thread, once ``ready()``."""
    main = threading.main_thread().ident
    assert main is not None

    def send() -> None:
        if ready():
            then.set()
            signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=send, name="test-ctrl-c", daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("how", ["a layer fails", "ctrl-c"])
def test_a_failure_or_ctrl_c_stops_the_other_layers_at_once(tmp_path: Path, settings: Settings, how: str) -> None:
    """Four layers at once: one fails (or the user presses Ctrl-C), one is stalled in a read, two trickle.  The
    error comes without waiting for the stalled one; the trickling ones stop within a piece; the layers not
    started are never fetched; once the stalled read returns, its thread ends too and every descriptor is closed."""
    cache, manifest = _saved(tmp_path, settings)
    weights = _weights(manifest)
    failing = weights[0].digest if how == "a layer fails" else None
    trickling = [weights[2].digest, weights[3].digest] + ([] if failing else [weights[0].digest])
    registry = _Registry(cache, failing, weights[1].digest, trickling)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "kept.txt").write_bytes(b"the user's")
    before = _open_fds()
    expected: type[BaseException] = StorageError
    if how == "ctrl-c":
        expected = KeyboardInterrupt
        _interrupt_main_when(registry.all_started, registry.failed)
    try:
        with pytest.raises(expected):
            export_model(registry, manifest, dest, metadata=None, concurrency=4)
        assert not registry.stalled_returned.is_set(), "the stalled layer was waited for"
        assert registry.late_bytes <= 4 * PIECE, f"{registry.late_bytes} bytes were read after the {how}"
        assert not {weights[4].digest} & set(registry.fetched), "a layer not started was fetched after the failure"
        assert os.listdir(dest) == ["kept.txt"]  # no staging directory left behind
    finally:
        registry.release.set()
        _layer_threads_end()
    assert _tree(dest) == {"kept.txt": b"the user's"}
    assert not _leaked(before)


@pytest.mark.parametrize("local", [True, False], ids=["from-cache-copy", "streamed"])
def test_a_job_told_to_stop_writes_nothing_and_closes_its_file(tmp_path: Path, settings: Settings, local: bool) -> None:
    cache, manifest = _saved(tmp_path, settings)
    desc = _weights(manifest)[0]
    stop = threading.Event()
    stop.set()
    before = _open_fds()
    with pytest.raises(RuntimeError, match="abandoned"), staged_directory(tmp_path / "out") as tree:
        staging = _open_fds()
        job = prepare_raw(partial(cache.fetch, desc), desc, tree, ("w.bin",),
                          clone_from=cache.blob_path(desc.digest) if local else None)
        with pytest.raises(Stopped):
            job.run(stop)
        assert [p.stat().st_size for p in (tmp_path / "out").glob("*/w.bin")] == [0]
        assert not _leaked(staging)  # the file prepare_raw made is closed
        raise RuntimeError("abandoned")
    assert not (tmp_path / "out").exists()
    assert not _leaked(before)


def test_a_kernel_copy_stops_between_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy from the cache's copy (copy_file_range in ``STEP`` pieces) and the check of its digest both end
    at their next step once the flag is set, however large the file."""
    monkeypatch.setattr(filecopy, "STEP", 1 << 20)
    source, dest = tmp_path / "blob", tmp_path / "copy"
    source.write_bytes(os.urandom(4 << 20))
    stop = threading.Event()
    real = os.copy_file_range

    def one_step_then_stop(*args: int) -> int:
        n = real(*args)
        stop.set()
        return n

    monkeypatch.setattr(os, "copy_file_range", one_step_then_stop)
    with open(source, "rb") as src, open(dest, "wb") as out:
        with pytest.raises(Stopped):
            filecopy.copy_out(src.fileno(), 0, out.fileno(), 4 << 20, stop)
        assert dest.stat().st_size == 1 << 20
        digest = FileDigest(src.fileno(), 4 << 20, "sha256", chunk=1 << 16, stop=stop)
        with pytest.raises(Stopped):
            digest.result()
        assert FileDigest(src.fileno(), 4 << 20, "sha256").result()[0] == 4 << 20  # without the flag: all of it
