"""What the packers (ormb format, ModelPack) share: streaming a model file, and their result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ormb.errors import StorageError
from ormb.model.files import ModelFile
from ormb.model.ormbfile import Metadata
from ormb.model.unpack import FileHashes
from ormb.oci.descriptor import Descriptor
from ormb.progress import ProgressListener

READ_CHUNK = 1 << 20


class Sink(Protocol):
    def write(self, data: bytes | bytearray | memoryview) -> int: ...


@dataclass(frozen=True)
class PackedModel:
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    metadata: Metadata
    # the ormb format: each file's SHA-256, computed while packing, by path below model/ (for signing)
    files: FileHashes | None = None


def stream_file(entry: ModelFile, sink: Sink, progress: ProgressListener, task: str) -> None:
    """Copy ``entry`` into ``sink`` through one reused buffer; fail if the file changed size meanwhile."""
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
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
                raise StorageError(f"{entry.path} changed size while it was being saved",
                                   "save again once the file is complete")
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        raise StorageError(f"cannot read {entry.path}: {exc.strerror}") from None
