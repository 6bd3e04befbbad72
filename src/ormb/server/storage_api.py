"""What the handlers need from storage: a blob store and a metadata store, as small protocols.

The handlers (and the catalog) see only these; :class:`ormb.server.store.Store` implements them
with files and SQLite.  Every method is safe to call from many threads and processes at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class ManifestRecord:
    repository: str
    digest: str
    media_type: str
    artifact_type: str | None
    size: int
    subject: str | None
    annotations: dict[str, str]
    created: float
    layers_size: int | None = None  # what the catalog shows (oci.descriptor.layers_size); None for an index


@dataclass(frozen=True)
class TagRecord:
    tag: str
    digest: str
    updated: float
    size: int | None  # the manifest's layers_size: one number on every page; None for an index


class UploadConflict(Exception):
    """Another request holds the upload session, or the session moved on: the spec's 416."""


class UploadWriter(Protocol):
    """An upload session held exclusively (see :meth:`BlobStore.open_session`)."""

    size: int  # bytes acknowledged so far

    def append(self, chunks: Iterator[bytes]) -> int:
        """Write ``chunks`` at :attr:`size`; on any error cut the file back and re-raise. New size."""

    def digest(self, algorithm: str) -> str:
        """The digest of the bytes on disk, ``algorithm:hex``."""

    def commit(self, repository: str, digest: str) -> None:
        """Verify nothing (the caller compared :meth:`digest`), install the blob, link it, end the session."""

    def cancel(self) -> None:
        """End the session and remove its data."""


class BlobStore(Protocol):
    def linked(self, repository: str, digest: str) -> int | None:
        """The blob's size when ``repository`` may serve it (refreshing the link's age), else None."""

    def open_blob(self, repository: str, digest: str) -> BinaryIO | None:
        """The blob's bytes when linked to ``repository``; None otherwise."""

    def link(self, repository: str, digest: str) -> bool:
        """Link a blob the store holds to ``repository`` (a mount); False when it holds none."""

    def linked_from(self, digest: str, limit: int) -> list[str]:
        """Up to ``limit`` repositories the blob is linked to (for a mount that names no source)."""

    def unlink(self, repository: str, digest: str) -> bool: ...

    def new_session(self, repository: str) -> str: ...

    def session_size(self, repository: str, session: str) -> int | None: ...

    def open_session(self, repository: str, session: str) -> AbstractContextManager[UploadWriter]:
        """Hold the session for one request; raises :class:`UploadConflict` when another does, and
        :class:`LookupError` when it does not exist."""


class MetadataStore(Protocol):
    def put_manifest(self, record: ManifestRecord, data: bytes, children: list[str], blobs: list[str],
                     tags: list[str], *, sparse: bool = False) -> list[str]:
        """Store the manifest's bytes and rows, tagged ``tags``; ``blobs`` must be linked to the repository
        and ``children`` (index entries) be manifests of it.  Returns what is missing (nothing stored then);
        ``sparse``: store it all the same (what is missing is referenced, so gc keeps it once pushed)."""

    def manifest(self, repository: str, digest: str) -> ManifestRecord | None: ...

    def manifest_bytes(self, record: ManifestRecord) -> bytes: ...

    def resolve_tag(self, repository: str, tag: str) -> str | None: ...

    def delete_manifest(self, repository: str, digest: str) -> bool: ...

    def delete_tag(self, repository: str, tag: str) -> bool: ...

    def repository_exists(self, repository: str) -> bool: ...

    def tags(self, repository: str, last: str | None, limit: int | None) -> list[str]: ...

    def tag_records(self, repository: str) -> list[TagRecord]: ...

    def catalog(self, last: str | None = None, limit: int | None = None) -> list[str]: ...

    def referrers(self, repository: str, subject: str) -> list[ManifestRecord]: ...

    def layer_files(self, digest: str) -> list[tuple[str, int]] | None: ...

    def remember_layer_files(self, digest: str, files: list[tuple[str, int]],
                             documents: dict[str, bytes] | None = None) -> None:
        """Remember a tar layer's listing, and the start of the documents read with it (the catalog's)."""

    def layer_document(self, digest: str, path: str) -> bytes | None:
        """What :meth:`remember_layer_files` kept of the member ``path`` of the layer ``digest``."""

    def token_generations(self) -> dict[str, int]:
        """user -> generation of the tokens still valid (``ormb registry revoke`` bumps it)."""


class Storage(BlobStore, MetadataStore, Protocol):
    """Both halves: what :func:`ormb.server.app.create_app` takes."""
