"""A reproducible tar stream: sorted entries, owner 0:0, mtime 0, modes 0644/0755."""

from __future__ import annotations

import hashlib
import queue
import tarfile
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from ormb.model.files import ModelFile
from ormb.model.packing import stream_file
from ormb.model.unpack import FileHashes
from ormb.progress import NoProgress, ProgressListener

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


class Sink(Protocol):
    def write(self, data: bytes | bytearray | memoryview) -> int: ...


def tar_header(name: str, size: int, mode: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class _FileDigests:
    """Hashes each file's content (SHA-256) in one background thread while the tar is written: hashlib
    releases the GIL, so on two cores this overlaps the tar's own CRC, hashing and writing."""

    def __init__(self, hashes: FileHashes, depth: int = 8) -> None:
        self._hashes = hashes
        self._queue: queue.Queue[tuple[str, int] | bytes | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="ormb-file-digests", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        hasher: Any = None
        current: tuple[str, int] | None = None
        while (item := self._queue.get()) is not None:
            if isinstance(item, bytes):
                hasher.update(item)
                continue
            if current is not None:
                self._hashes.file(current[0], hasher.hexdigest(), current[1])
            current, hasher = item, hashlib.sha256()
        if current is not None:
            self._hashes.file(current[0], hasher.hexdigest(), current[1])

    def start(self, path: str, size: int) -> None:
        self._queue.put((path, size))

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._queue.put(bytes(data))  # a copy: the caller reuses its buffer
        return len(data)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


class _Tee:
    """Writes go to ``sink`` and to the file digests."""

    def __init__(self, sink: Sink, digests: _FileDigests) -> None:
        self._sink, self._digests = sink, digests

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._digests.write(data)
        return self._sink.write(data)


def write_tar(
    files: Sequence[ModelFile], sink: Sink, prefix: str = "model/", progress: ProgressListener | None = None,
    task: str = "pack", hashes: FileHashes | None = None,
) -> int:
    """Write ``files`` as ``<prefix><relative path>`` entries; return the tar's length.  With ``hashes``,
    every file's SHA-256 is recorded as it streams by (by its relative path: what a signature names)."""
    progress = progress or NoProgress()
    written = 0
    digests = _FileDigests(hashes) if hashes is not None else None
    try:
        for entry in files:
            header = tar_header(f"{prefix}{entry.relative}", entry.size, entry.mode)
            sink.write(header)
            written += len(header)
            if digests is None:
                stream_file(entry, sink, progress, task)
            else:
                digests.start(str(entry.relative), entry.size)
                stream_file(entry, _Tee(sink, digests), progress, task)
            padding = -entry.size % BLOCK
            sink.write(bytes(padding))
            written += entry.size + padding
    finally:
        if digests is not None:
            digests.close()
    end = 2 * BLOCK
    end += -(written + end) % RECORD
    sink.write(bytes(end))
    return written + end
