"""A reproducible tar stream: sorted entries, owner 0:0, mtime 0, modes 0644/0755."""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from typing import Protocol

from ormb.model.files import ModelFile
from ormb.model.packing import stream_file
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


def write_tar(
    files: Sequence[ModelFile], sink: Sink, prefix: str = "model/", progress: ProgressListener | None = None,
    task: str = "pack",
) -> int:
    """Write ``files`` as ``<prefix><relative path>`` entries; return the tar's length.

    Each file's own SHA-256 (what a signature names) is not computed here: hashing every file a second time
    made ``save`` 35-40% slower for every model, and ``ormb sign`` computes them from the layer once when it
    first signs an ormb-format model (kept as a file record; bench/README.md)."""
    progress = progress or NoProgress()
    written = 0
    for entry in files:
        header = tar_header(f"{prefix}{entry.relative}", entry.size, entry.mode)
        sink.write(header)
        written += len(header)
        stream_file(entry, sink, progress, task)
        padding = -entry.size % BLOCK
        sink.write(bytes(padding))
        written += entry.size + padding
    end = 2 * BLOCK
    end += -(written + end) % RECORD
    sink.write(bytes(end))
    return written + end
