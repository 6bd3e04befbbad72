"""An OCI image layout on disk as a Target: the local cache, or any layout directory.

::

    <root>/
      oci-layout                 {"imageLayoutVersion": "1.0.0"}
      index.json                 one entry per reference, named by org.opencontainers.image.ref.name
      blobs/sha256/<hex>         content, written once, never modified
      .ingest/                   blobs being written (temporary files, never read by others)
      .lock                      exclusive while index.json is rewritten
      .gc.lock                   shared by writers, exclusive while unreferenced blobs are pruned

Blobs are written to a temporary file in ``.ingest``, hashed while written, verified,
flushed, then renamed into ``blobs/``: a reader never sees a half-written blob.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from ormb.content.atomic import install_file, staged_file
from ormb.content.background import BackgroundHasher, BackgroundWriter
from ormb.content.locking import file_lock
from ormb.errors import IntegrityError, InvalidArtifactError, NotFoundError, StorageError
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, canonical_json
from ormb.oci.digest import split_digest

CHUNK = 1 << 20


class _IngestWriter:
    """Writes a blob of not-yet-known digest into the layout (see :meth:`OCILayout.ingest`)."""

    def __init__(self, layout: OCILayout, file: BinaryIO, path: Path, writer: BackgroundWriter) -> None:
        self._layout = layout
        self._file = file
        self._path = path
        self._writer = writer
        self._hasher = hashlib.sha256()
        self.size = 0
        self.committed: Descriptor | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hasher.update(data)
        self._writer.write(data)  # copies: the caller may reuse its buffer
        self.size += len(data)
        return len(data)

    def commit(self, media_type: str, annotations: dict[str, str] | None = None) -> Descriptor:
        self._writer.close()
        desc = Descriptor(media_type, f"sha256:{self._hasher.hexdigest()}", self.size, annotations or {})
        self._layout._install(self._file, self._path, desc)
        self.committed = desc
        return desc


class OCILayout:
    """Target over an OCI image layout directory; creates the layout on first write."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- paths -------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        algorithm, hexpart = split_digest(digest)
        return self.root / "blobs" / algorithm / hexpart

    @property
    def _ingest_dir(self) -> Path:
        return self.root / ".ingest"

    def _ensure(self) -> None:
        try:
            (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            self._ingest_dir.mkdir(exist_ok=True)
            layout_file = self.root / "oci-layout"
            if not layout_file.exists():
                self._atomic_write(layout_file, canonical_json({"imageLayoutVersion": mediatypes.OCI_LAYOUT_VERSION}))
            if not (self.root / "index.json").exists():
                with file_lock(self.root / ".lock"):
                    if not (self.root / "index.json").exists():
                        self._write_index([])
        except OSError as exc:
            raise StorageError(f"cannot create the OCI layout at {self.root}: {exc.strerror or exc}") from None

    # -- blobs -------------------------------------------------------------------------------
    def exists(self, desc: Descriptor) -> bool:
        return self.blob_path(desc.digest).is_file()

    @contextmanager
    def fetch(self, desc: Descriptor) -> Iterator[BinaryIO]:
        try:
            stream = open(self.blob_path(desc.digest), "rb")
        except FileNotFoundError:
            raise NotFoundError(
                f"blob {desc.digest} is missing from {self.root}", "pull or save the model again"
            ) from None
        with stream:
            yield stream

    def push(self, desc: Descriptor, content: BinaryIO) -> None:
        if self.exists(desc):
            return
        algorithm, _ = split_digest(desc.digest)
        hasher = BackgroundHasher(hashlib.new(algorithm))  # reading, hashing and writing overlap
        with self.ingest_file() as (file, path):
            size = 0
            try:
                with BackgroundWriter(file) as writer:
                    while chunk := content.read(CHUNK):
                        hasher.update(chunk)
                        writer.write(chunk)
                        size += len(chunk)
                        if size > desc.size:
                            break
                    writer.close()
            finally:
                hasher.close()  # waits for every chunk handed over: the digest below is complete
            actual = f"{algorithm}:{hasher.hexdigest()}"
            if size != desc.size or actual != desc.digest:
                raise IntegrityError(
                    f"content for {desc.digest} does not match: got {size} bytes with digest {actual}, "
                    f"expected {desc.size} bytes"
                )
            self._install(file, path, desc)

    @contextmanager
    def ingest_file(self) -> Iterator[tuple[BinaryIO, Path]]:
        """A temporary file inside the layout; removed on exit unless installed."""
        self._ensure()
        with staged_file(self._ingest_dir, "blob-") as (file, path):
            yield file, path

    @contextmanager
    def ingest(self) -> Iterator[_IngestWriter]:
        with self.ingest_file() as (file, path), BackgroundWriter(file) as writer:
            yield _IngestWriter(self, file, path, writer)

    def _install(self, file: BinaryIO, path: Path, desc: Descriptor) -> None:
        target = self.blob_path(desc.digest)
        if target.is_file():  # content-addressed: the blob there already holds these bytes
            return
        install_file(file, path, target)

    def delete_blob(self, digest: str) -> None:
        self.blob_path(digest).unlink(missing_ok=True)

    def blob_digests(self) -> Iterator[str]:
        blobs = self.root / "blobs"
        if not blobs.is_dir():
            return
        for algorithm_dir in blobs.iterdir():
            if algorithm_dir.is_dir():
                for blob in algorithm_dir.iterdir():
                    yield f"{algorithm_dir.name}:{blob.name}"

    # -- references --------------------------------------------------------------------------
    def _read_index(self) -> list[dict[str, Any]]:
        path = self.root / "index.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read {path}: {exc}", "restore or delete the file") from None
        manifests = data.get("manifests") if isinstance(data, dict) else None
        if not isinstance(manifests, list):
            raise StorageError(f"{path} has no 'manifests' list", "restore or delete the file")
        return manifests

    def _write_index(self, manifests: list[dict[str, Any]]) -> None:
        index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": manifests}
        self._atomic_write(self.root / "index.json", json.dumps(index, indent=2).encode())

    def _atomic_write(self, path: Path, data: bytes) -> None:
        with staged_file(path.parent, f".{path.name}.") as (file, staged):
            file.write(data)
            install_file(file, staged, path)

    def references(self) -> Iterator[tuple[str, Descriptor]]:
        for i, entry in enumerate(self._read_index()):
            desc = Descriptor.from_dict(entry, f"index.json entry {i}")
            name = desc.annotations.get(mediatypes.ANNOTATION_REF_NAME)
            if name:
                yield name, desc

    def resolve(self, reference: str) -> Descriptor:
        if "@" in reference:
            return self._resolve_digest(reference.rpartition("@")[2])
        for name, desc in self.references():
            if name == reference:
                return desc
        raise NotFoundError(f"{reference} is not in the local cache")

    def _resolve_digest(self, digest: str) -> Descriptor:
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as stream:
                data = stream.read(1 << 24)
        except FileNotFoundError:
            raise NotFoundError(f"manifest {digest} is not in the local cache") from None
        try:
            media_type = json.loads(data).get("mediaType") or mediatypes.OCI_MANIFEST
        except (ValueError, AttributeError):
            raise InvalidArtifactError(f"blob {digest} is not a manifest") from None
        return Descriptor(media_type, digest, len(data))

    def tag(self, desc: Descriptor, reference: str) -> None:
        self._ensure()
        annotations = {k: v for k, v in desc.annotations.items() if k != mediatypes.ANNOTATION_REF_NAME}
        annotations.setdefault(
            mediatypes.ANNOTATION_CREATED, datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        annotations[mediatypes.ANNOTATION_REF_NAME] = reference
        entry = Descriptor(desc.media_type, desc.digest, desc.size, annotations, desc.artifact_type).to_dict()
        with file_lock(self.root / ".lock"):
            manifests = [m for m in self._read_index() if _ref_name(m) != reference]
            manifests.append(entry)
            manifests.sort(key=lambda m: _ref_name(m) or "")
            self._write_index(manifests)

    def untag(self, reference: str) -> Descriptor:
        if not (self.root / "index.json").is_file():
            raise NotFoundError(f"{reference} is not in the local cache")
        with file_lock(self.root / ".lock"):
            manifests = self._read_index()
            kept = [m for m in manifests if _ref_name(m) != reference]
            if len(kept) == len(manifests):
                raise NotFoundError(f"{reference} is not in the local cache")
            removed = next(m for m in manifests if _ref_name(m) == reference)
            self._write_index(kept)
        return Descriptor.from_dict(removed)

    # -- garbage collection ------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold while writing blobs that no reference reaches yet, so prune leaves them alone."""
        self._ensure()
        with file_lock(self.root / ".gc.lock", shared=True):
            yield

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Exclusive: no writer is between writing a blob and tagging it."""
        self._ensure()
        with file_lock(self.root / ".gc.lock"):
            yield

    def clear_ingest(self) -> int:
        """Remove temporary files left by killed processes; call only inside :meth:`collecting`."""
        removed = 0
        for leftover in self._ingest_dir.glob("*"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed


def _ref_name(entry: dict[str, Any]) -> str | None:
    annotations = entry.get("annotations")
    return annotations.get(mediatypes.ANNOTATION_REF_NAME) if isinstance(annotations, dict) else None
