"""Target protocols: small one-job interfaces composed into a Target, as in oras-go.

A *ReadOnlyTarget* fetches and checks blobs by descriptor and resolves a reference to a
descriptor (oras-go's ``ReadOnlyTarget``: Fetcher + ExistenceChecker + Resolver); a
*Target* also pushes blobs and sets references (+ Pusher + Tagger).  A copy reads from the
first and writes to the second.  Optional abilities are separate protocols checked where
they are used (``isinstance(target, Ingester)``).

Content travels as a :class:`Readable`: anything with ``read(n) -> bytes`` (a file, a
response being streamed, a reader that counts progress).  A pusher that needs to rewind
(to retry an upload) asks for :class:`Seekable` where it needs it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol, runtime_checkable

from ormb.errors import IntegrityError
from ormb.oci.descriptor import Descriptor
from ormb.oci.digest import digest_bytes
from ormb.oci.grammar import MAX_METADATA_BLOB


class Readable(Protocol):
    """A stream of bytes: ``read(n)`` returns at most ``n`` bytes, ``b""`` at the end."""

    def read(self, n: int = -1, /) -> bytes: ...


@runtime_checkable
class Seekable(Protocol):
    """A :class:`Readable` that can be rewound (a file): lets an upload be retried from the start."""

    def seekable(self) -> bool: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...


def rewindable(content: Readable) -> Seekable | None:
    """``content`` as a :class:`Seekable` when it really can seek, else None."""
    return content if isinstance(content, Seekable) and content.seekable() else None


@runtime_checkable
class Fetcher(Protocol):
    def fetch(self, desc: Descriptor) -> AbstractContextManager[Readable]:
        """Open the blob for reading; raise NotFoundError when it is missing."""


@runtime_checkable
class Pusher(Protocol):
    def push(self, desc: Descriptor, content: Readable) -> None:
        """Store ``content``, verifying it against ``desc``; nothing is visible unless it matches."""


@runtime_checkable
class ExistenceChecker(Protocol):
    def exists(self, desc: Descriptor) -> bool: ...


@runtime_checkable
class Resolver(Protocol):
    def resolve(self, reference: str) -> Descriptor:
        """The manifest descriptor a reference names; raise NotFoundError when unknown."""


@runtime_checkable
class Tagger(Protocol):
    def tag(self, desc: Descriptor, reference: str) -> None: ...


@runtime_checkable
class ReadOnlyTarget(Fetcher, ExistenceChecker, Resolver, Protocol):
    """What a copy reads from (oras-go's ``ReadOnlyTarget``)."""


@runtime_checkable
class Target(ReadOnlyTarget, Pusher, Tagger, Protocol):
    """What a copy writes to: a read-only target that also takes blobs and references."""


@runtime_checkable
class ReferenceFetcher(Protocol):
    def fetch_reference(self, reference: str) -> tuple[Descriptor, bytes]:
        """Resolve a reference and return the manifest's bytes with it, in one request (a registry's
        ``GET /manifests/<tag>``); the bytes are verified against the descriptor."""


@runtime_checkable
class ReferencePusher(Protocol):
    def push_reference(self, desc: Descriptor, content: Readable, reference: str) -> None:
        """Push a manifest and name it in one step (a registry's ``PUT /manifests/<tag>``)."""


@runtime_checkable
class Mounter(Protocol):
    def mount(self, desc: Descriptor, source_repository: str) -> bool:
        """Make a blob of another repository on the same registry visible here without sending it."""


@runtime_checkable
class Untagger(Protocol):
    def untag(self, reference: str) -> Descriptor:
        """Remove a reference and return what it pointed at."""


@runtime_checkable
class ReferrerLister(Protocol):
    def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        """The manifests whose ``subject`` is ``digest``, as an index lists them (with ``artifactType``
        and annotations), optionally only those of ``artifact_type``."""


@runtime_checkable
class TagLister(Protocol):
    def references(self) -> Iterator[tuple[str, Descriptor]]:
        """Every (reference, manifest descriptor) pair the target holds."""


class BlobWriter(Protocol):
    """A blob being written whose digest is known only at the end."""

    def write(self, data: bytes | bytearray | memoryview) -> int: ...

    def commit(self, media_type: str, annotations: dict[str, str] | None = None) -> Descriptor:
        """Make the written bytes a blob and return its descriptor."""


@runtime_checkable
class Ingester(Protocol):
    def ingest(self) -> AbstractContextManager[BlobWriter]:
        """A writer for a blob of unknown digest; discarded unless committed."""


@runtime_checkable
class FileIngester(Protocol):
    def ingest_copy(self, source: BinaryIO, size: int, media_type: str, annotations: dict[str, str] | None = None,
                    *, name: str, advance: Callable[[int], None] | None = None) -> Descriptor:
        """Store the ``size`` bytes of the regular file ``source`` as a blob, copied by the kernel (no pass
        through Python) and hashed from the copy; see :meth:`ormb.content.layout.OCILayout.ingest_copy`."""


def read_up_to(stream: Readable, limit: int) -> bytes:
    """Read until ``limit`` bytes or the end: a :class:`Readable` may return less than asked for."""
    parts: list[bytes] = []
    left = limit
    while left > 0:
        part = stream.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def fetch_bytes(target: Fetcher, desc: Descriptor, limit: int = MAX_METADATA_BLOB) -> bytes:
    """Read a small blob fully and verify it against its descriptor."""
    if desc.size > limit:
        raise IntegrityError(f"blob {desc.digest} is {desc.size} bytes; at most {limit} are allowed for metadata")
    with target.fetch(desc) as stream:
        data = read_up_to(stream, desc.size + 1)
    if len(data) != desc.size or digest_bytes(data, desc.digest.partition(":")[0]) != desc.digest:
        raise IntegrityError(f"blob {desc.digest} does not match its digest or size")
    return data


def push_bytes(target: Pusher | ExistenceChecker, desc: Descriptor, data: bytes) -> None:
    if isinstance(target, ExistenceChecker) and target.exists(desc):
        return
    assert isinstance(target, Pusher)
    target.push(desc, io.BytesIO(data))
