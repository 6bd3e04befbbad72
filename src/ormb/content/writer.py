"""A blob writer for any Target: the target's own ingester, or a temporary file then a push."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ormb.content.target import BlobWriter, ExistenceChecker, Ingester, Pusher
from ormb.oci.descriptor import Descriptor


class _SpoolWriter:
    """Hashes into a temporary file; ``commit`` pushes it to the target."""

    def __init__(self, target: Pusher, file: BinaryIO) -> None:
        self._target = target
        self._file = file
        self._hasher = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hasher.update(data)
        self._size += len(data)
        return self._file.write(data)

    def commit(self, media_type: str, annotations: dict[str, str] | None = None) -> Descriptor:
        desc = Descriptor(media_type, f"sha256:{self._hasher.hexdigest()}", self._size, annotations or {})
        if not (isinstance(self._target, ExistenceChecker) and self._target.exists(desc)):
            self._file.flush()
            self._file.seek(0)
            self._target.push(desc, self._file)
        return desc


@contextmanager
def open_blob_writer(target: Pusher, spool_dir: Path | None = None) -> Iterator[BlobWriter]:
    """A :class:`BlobWriter` into ``target``; nothing reaches the target unless committed."""
    if isinstance(target, Ingester):
        with target.ingest() as writer:
            yield writer
        return
    fd, name = tempfile.mkstemp(dir=spool_dir, prefix="ormb-blob-")
    try:
        with os.fdopen(fd, "w+b") as file:
            yield _SpoolWriter(target, file)
    finally:
        Path(name).unlink(missing_ok=True)
