"""A reproducible tar stream: sorted entries, owner 0:0, mtime 0, modes 0644/0755."""

from __future__ import annotations

import hashlib
import tarfile
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


class _HashingSink:
    """Passes writes on to ``sink`` and hashes them (SHA-256): one file's content on its way into the tar."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.hasher: Any = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hasher.update(data)
        return self._sink.write(data)


def write_tar(
    files: Sequence[ModelFile], sink: Sink, prefix: str = "model/", progress: ProgressListener | None = None,
    task: str = "pack", hashes: FileHashes | None = None,
) -> int:
    """Write ``files`` as ``<prefix><relative path>`` entries; return the tar's length.  With ``hashes``,
    every file's SHA-256 is recorded as it streams by (by its relative path: what a signature names)."""
    progress = progress or NoProgress()
    written = 0
    for entry in files:
        header = tar_header(f"{prefix}{entry.relative}", entry.size, entry.mode)
        sink.write(header)
        written += len(header)
        if hashes is None:
            stream_file(entry, sink, progress, task)
        else:
            hashing = _HashingSink(sink)
            stream_file(entry, hashing, progress, task)
            hashes.file(str(entry.relative), hashing.hasher.hexdigest(), entry.size)
        padding = -entry.size % BLOCK
        sink.write(bytes(padding))
        written += entry.size + padding
    end = 2 * BLOCK
    end += -(written + end) % RECORD
    sink.write(bytes(end))
    return written + end
