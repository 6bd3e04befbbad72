"""What the packers (ormb format, ModelPack) share: streaming a model file, and their result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ormb.content.target import FileIngester
from ormb.errors import StorageError
from ormb.model.files import ModelFile
from ormb.model.ormbfile import Metadata
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


def copy_file(entry: ModelFile, target: FileIngester, media_type: str, annotations: dict[str, str],
              progress: ProgressListener, task: str) -> Descriptor:
    """``entry`` as one blob of ``target``, copied by the kernel and hashed from the copy (a raw layer);
    fail if the file changed size meanwhile, as :func:`stream_file` does."""
    try:
        with open(entry.path, "rb", buffering=0) as f:
            return target.ingest_copy(f, entry.size, media_type, annotations, name=str(entry.path),
                                      advance=lambda n: progress.advance(task, n))
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        raise StorageError(f"cannot read {entry.path}: {exc.strerror}") from None


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
