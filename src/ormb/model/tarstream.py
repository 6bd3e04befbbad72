"""A reproducible tar stream: sorted entries, owner 0:0, mtime 0, modes 0644/0755."""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from typing import Protocol

from ormb.errors import StorageError
from ormb.model.files import ModelFile
from ormb.progress import NoProgress, ProgressListener

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
READ_CHUNK = 1 << 20


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
    """Write ``files`` as ``<prefix><relative path>`` entries; return the tar's length."""
    progress = progress or NoProgress()
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    written = 0
    for entry in files:
        header = tar_header(f"{prefix}{entry.relative}", entry.size, entry.mode)
        sink.write(header)
        written += len(header)
        try:
            with open(entry.path, "rb", buffering=0) as f:
                remaining = entry.size
                while remaining:
                    n = f.readinto(view[: min(READ_CHUNK, remaining)])
                    if not n:
                        break
                    sink.write(view[:n])
                    remaining -= n
                    progress.advance(task, n)
                if remaining or f.read(1):
                    raise StorageError(
                        f"{entry.path} changed size while it was being saved", "save again once the file is complete"
                    )
        except OSError as exc:
            raise StorageError(f"cannot read {entry.path}: {exc.strerror}") from None
        padding = -entry.size % BLOCK
        sink.write(bytes(padding))
        written += entry.size + padding
    end = 2 * BLOCK
    end += -(written + end) % RECORD
    sink.write(bytes(end))
    return written + end
