"""An in-memory Target, for tests and for content that never touches the disk."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

from ormb.content.target import Readable, read_up_to
from ormb.errors import IntegrityError, NotFoundError
from ormb.oci.descriptor import Descriptor
from ormb.oci.digest import digest_bytes


class _MemoryWriter:
    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._buffer = io.BytesIO()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self._buffer.write(data)

    def commit(self, media_type: str, annotations: dict[str, str] | None = None) -> Descriptor:
        data = self._buffer.getvalue()
        desc = Descriptor.of_bytes(media_type, data, annotations)
        self._store.blobs[desc.digest] = data
        return desc


class MemoryStore:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.tags: dict[str, Descriptor] = {}

    def exists(self, desc: Descriptor) -> bool:
        return desc.digest in self.blobs

    @contextmanager
    def fetch(self, desc: Descriptor) -> Iterator[Readable]:
        try:
            yield io.BytesIO(self.blobs[desc.digest])
        except KeyError:
            raise NotFoundError(f"blob {desc.digest} is not in memory") from None

    def push(self, desc: Descriptor, content: Readable) -> None:
        data = read_up_to(content, desc.size + 1)
        if len(data) != desc.size or digest_bytes(data, desc.digest.partition(":")[0]) != desc.digest:
            raise IntegrityError(f"content for {desc.digest} does not match its digest or size")
        self.blobs[desc.digest] = data

    @contextmanager
    def ingest(self) -> Iterator[_MemoryWriter]:
        yield _MemoryWriter(self)

    def resolve(self, reference: str) -> Descriptor:
        try:
            return self.tags[reference]
        except KeyError:
            raise NotFoundError(f"{reference} is not in memory") from None

    def tag(self, desc: Descriptor, reference: str) -> None:
        if desc.digest not in self.blobs:
            raise NotFoundError(f"cannot tag {reference}: manifest {desc.digest} is not in memory")
        self.tags[reference] = desc

    def untag(self, reference: str) -> Descriptor:
        try:
            return self.tags.pop(reference)
        except KeyError:
            raise NotFoundError(f"{reference} is not in memory") from None

    def references(self) -> Iterator[tuple[str, Descriptor]]:
        yield from sorted(self.tags.items())
