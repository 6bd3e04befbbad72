"""An OCI image layout on disk as a Target: the local cache, or any layout directory.

::

    <root>/
      oci-layout                 {"imageLayoutVersion": "1.0.0"}
      index.json                 one entry per reference, named by org.opencontainers.image.ref.name;
                                 a referrer (a signature) is an entry without a name whose manifest
                                 has a ``subject``: kept while its subject is (see ormb.cache)
      blobs/sha256/<hex>         content, written once, never modified
      .ingest/                   blobs being written (temporary files, never read by others)
      .stamps/sha256/<hex>       (the cache only) each blob's verified stamp: its inode, size and times when its bytes
                                 last matched the digest (see ormb.content.stamps; no stamp = hash it)
      .index.json.*.tmp          index.json being rewritten (renamed over it when complete)
      .lock                      exclusive while index.json is rewritten
      .gc.lock                   shared by writers, exclusive while unreferenced blobs are pruned

Blobs are written to a temporary file in ``.ingest``, hashed while written, verified,
flushed, then renamed into ``blobs/``: a reader never sees a half-written blob.  Every
failure of the disk (full, read-only, permission denied) is a :class:`StorageError` that
names the path; the temporary files of a killed writer are removed by ``ormb prune``
(:meth:`OCILayout.clear_leftovers`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from ormb.content.atomic import install_file, staged_file
from ormb.content.background import BackgroundHasher, BackgroundWriter
from ormb.content.filecopy import WRITE_ERRORS, CopyEnded, KernelCopy
from ormb.content.locking import file_lock
from ormb.content.stamps import STAMP_DIR, StampStore
from ormb.content.target import Readable
from ormb.errors import IntegrityError, InvalidArtifactError, NotFoundError, OrmbError, StorageError
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, canonical_json
from ormb.oci.digest import split_digest
from ormb.oci.grammar import IO_CHUNK, MAX_MANIFEST, is_digest
from ormb.oci.graph import NODE_TYPES, Node, parse_node

CHUNK = IO_CHUNK


def storage_error(what: str, path: Path, exc: OSError) -> StorageError:
    """A failure of the disk (full, read-only, permission denied, ...) as a :class:`StorageError` that says
    what was being done and names the path."""
    where = exc.filename if isinstance(exc.filename, str) else str(path)
    return StorageError(f"cannot {what}: {where}: {exc.strerror or exc}")


@contextmanager
def disk_errors(what: str, path: Path) -> Iterator[None]:
    """:func:`storage_error` for a block (on hot paths, a plain ``try`` costs nothing per chunk)."""
    try:
        yield
    except OrmbError:
        raise
    except OSError as exc:
        raise storage_error(what, path, exc) from None


class _IngestWriter:
    """Writes a blob of not-yet-known digest into the layout (see :meth:`OCILayout.ingest`)."""

    def __init__(self, layout: OCILayout, file: BinaryIO, path: Path, writer: BackgroundWriter) -> None:
        self._layout = layout
        self._file = file
        self._path = path
        self._writer = writer
        self._hasher = BackgroundHasher(hashlib.sha256())  # hashing overlaps reading (and the caller's work)
        self.size = 0
        self.committed: Descriptor | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        chunk = bytes(data)  # one copy (none for bytes): the caller may reuse its buffer; both threads read this
        self._hasher.update(chunk)
        try:
            self._writer.write(chunk)
        except OSError as exc:
            raise storage_error("write into the cache", self._path, exc) from None
        self.size += len(data)
        return len(data)

    def close(self) -> None:
        """Stop the hashing thread (committed or not)."""
        self._hasher.close()

    def commit(self, media_type: str, annotations: dict[str, str] | None = None) -> Descriptor:
        with disk_errors("write into the cache", self._path):
            self._writer.close()
        desc = Descriptor(media_type, f"sha256:{self._hasher.hexdigest()}", self.size, annotations or {})
        self._layout._install(self._file, self._path, desc)
        self.committed = desc
        return desc


class OCILayout:
    """Target over an OCI image layout directory; creates the layout on first write.  With ``stamps`` (the
    local cache) each blob installed gets a verified stamp in ``.stamps/`` (:mod:`ormb.content.stamps`);
    other layouts (``ormb copy`` into a directory) hold only what the OCI layout spec names."""

    def __init__(self, root: Path, *, stamps: bool = False) -> None:
        self.root = Path(root)
        self.stamps = StampStore(self.root / STAMP_DIR) if stamps else None

    # -- paths -------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        algorithm, hexpart = split_digest(digest)
        return self.root / "blobs" / algorithm / hexpart

    @property
    def _ingest_dir(self) -> Path:
        return self.root / ".ingest"

    def _ensure(self) -> None:
        with disk_errors("create the OCI layout", self.root):
            (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            self._ingest_dir.mkdir(exist_ok=True)
            layout_file = self.root / "oci-layout"
            if not layout_file.exists():
                self._atomic_write(layout_file, canonical_json({"imageLayoutVersion": mediatypes.OCI_LAYOUT_VERSION}))
            if not (self.root / "index.json").exists():
                with file_lock(self.root / ".lock"):
                    if not (self.root / "index.json").exists():
                        self._write_index([])

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
        except OSError as exc:
            raise StorageError(f"cannot read {self.blob_path(desc.digest)}: {exc.strerror or exc}") from None
        with stream:
            yield stream

    def read_head(self, digest: str, limit: int = MAX_MANIFEST + 1) -> bytes | None:
        """The first ``limit`` bytes of a blob as they are on disk (unverified), or None when it is missing."""
        try:
            with open(self.blob_path(digest), "rb") as stream:
                return stream.read(limit)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {self.blob_path(digest)}: {exc.strerror or exc}") from None

    def push(self, desc: Descriptor, content: Readable) -> None:
        if self.exists(desc):
            return
        algorithm, _ = split_digest(desc.digest)
        hasher = BackgroundHasher(hashlib.new(algorithm))  # reading, hashing and writing overlap
        with self.ingest_file() as (file, path):
            size = 0
            try:
                with BackgroundWriter(file, writeback=True) as writer:
                    while chunk := content.read(CHUNK):
                        hasher.update(chunk)
                        try:
                            writer.write(chunk)
                        except OSError as exc:
                            raise storage_error(f"store {desc.digest} in the cache", path, exc) from None
                        size += len(chunk)
                        if size > desc.size:
                            break
                    with disk_errors(f"store {desc.digest} in the cache", path):
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

    def ingest_copy(self, source: BinaryIO, size: int, media_type: str, annotations: dict[str, str] | None = None,
                    *, name: str, advance: Callable[[int], None] | None = None) -> Descriptor:
        """Store the ``size`` bytes of the regular file ``source`` as a blob, copied by the kernel (a reflink
        where the file system can, else ``copy_file_range``: see :mod:`ormb.content.filecopy`) while this
        thread hashes the copy as it grows.  The digest is of the bytes stored, whatever happens to
        ``source`` meanwhile; a source that is not ``size`` bytes (it changed while being saved) is a
        :class:`StorageError` naming ``name``, and nothing is stored.  ``advance`` is told of each piece."""
        if isinstance(size, bool) or size < 0:
            raise ValueError(f"bad size {size!r}")
        changed = StorageError(f"{name} changed size while it was being saved", "save again once the file is complete")
        with self.ingest_file() as (file, path):
            src, dst = source.fileno(), file.fileno()
            copy = KernelCopy(src, dst, size)
            hasher = hashlib.sha256()
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            offset = 0
            try:
                while offset < size:
                    try:
                        ready = copy.ready(offset)
                    except CopyEnded:
                        raise changed from None
                    except OSError as exc:
                        raise self._copy_error(exc, name, path) from None
                    while offset < ready:
                        with disk_errors("read back a blob written into the cache", path):
                            n = os.preadv(dst, [view[: min(CHUNK, ready - offset)]], offset)
                        if n <= 0:  # the kernel said it copied these bytes: the source was shorter (a clone)
                            raise changed
                        hasher.update(view[:n])
                        offset += n
                        if advance is not None:
                            advance(n)
            except BaseException:
                copy.cancel()
                raise
            try:
                copy.join()
            except OSError as exc:
                raise self._copy_error(exc, name, path) from None
            try:
                longer = os.fstat(src).st_size != size or bool(os.pread(src, 1, size))
            except OSError as exc:
                raise StorageError(f"cannot read {name}: {exc.strerror}") from None
            # a reflink clones the whole file: one that was longer then and is back to ``size`` now left its
            # extra bytes in the copy, which must hold exactly the bytes hashed
            if longer or os.fstat(dst).st_size != size:
                raise changed
            desc = Descriptor(media_type, f"sha256:{hasher.hexdigest()}", size, annotations or {})
            self._install(file, path, desc)
            return desc

    @staticmethod
    def _copy_error(exc: OSError, name: str, path: Path) -> StorageError:
        """A failed kernel copy: the cache's fault (full, read-only) or the source's."""
        if exc.errno in WRITE_ERRORS:
            return storage_error("write into the cache", path, exc)
        return StorageError(f"cannot read {name}: {exc.strerror or exc}")

    @contextmanager
    def ingest_file(self) -> Iterator[tuple[BinaryIO, Path]]:
        """A temporary file inside the layout; removed on exit unless installed."""
        self._ensure()
        with staged_file(self._ingest_dir, "blob-", errors=lambda: disk_errors("write into the cache", self._ingest_dir)) \
                as (file, path):
            yield file, path

    @contextmanager
    def ingest(self) -> Iterator[_IngestWriter]:
        with self.ingest_file() as (file, path), BackgroundWriter(file, writeback=True) as writer:
            ingest = _IngestWriter(self, file, path, writer)
            try:
                yield ingest
            finally:
                ingest.close()

    def _install(self, file: BinaryIO, path: Path, desc: Descriptor) -> None:
        target = self.blob_path(desc.digest)
        if target.is_file():  # content-addressed: the blob there already holds these bytes
            return
        with disk_errors(f"store {desc.digest} in the cache", path):
            install_file(file, path, target)
            installed = os.fstat(file.fileno())  # the inode now at ``target``: its bytes were just verified
        if self.stamps is not None:
            self.stamps.record(desc.digest, installed)

    def delete_blob(self, digest: str) -> None:
        if self.stamps is not None:
            self.stamps.remove(digest)  # first: a crash in between leaves a blob without a stamp (hashed when read)
        with disk_errors("delete a blob", self.blob_path(digest)):
            self.blob_path(digest).unlink(missing_ok=True)

    def rehash_blob(self, digest: str) -> tuple[int, bool] | None:
        """(size, whether its bytes match ``digest``) of the blob on disk, read and hashed whole: never a stamp
        (the full check, :func:`ormb.api.check`); None when it is missing.  A blob that does not match loses
        its stamp, so that no export trusts it any more."""
        algorithm, _ = split_digest(digest)
        hasher = hashlib.new(algorithm)
        size = 0
        path = self.blob_path(digest)
        try:
            with open(path, "rb", buffering=0) as stream:
                buffer = bytearray(CHUNK)
                view = memoryview(buffer)
                while n := stream.readinto(buffer):
                    hasher.update(view[:n])
                    size += n
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise storage_error("read a blob", path, exc) from None
        ok = f"{algorithm}:{hasher.hexdigest()}" == digest
        if not ok and self.stamps is not None:
            self.stamps.remove(digest)
        return size, ok

    def blob_digests(self) -> Iterator[str]:
        """The digests of the blobs on disk; files whose names are not digests are not blobs and are left alone."""
        blobs = self.root / "blobs"
        if not blobs.is_dir():
            return
        with disk_errors("list the blobs", blobs):
            for algorithm_dir in sorted(blobs.iterdir()):
                if algorithm_dir.is_dir():
                    for blob in sorted(algorithm_dir.iterdir()):
                        digest = f"{algorithm_dir.name}:{blob.name}"
                        if is_digest(digest) and blob.is_file():
                            yield digest

    # -- references --------------------------------------------------------------------------
    def _read_index(self) -> list[dict[str, Any]]:
        path = self.root / "index.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return []
        except RecursionError:
            raise StorageError(f"cannot read {path}: nested too deeply", "restore or delete the file") from None
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
        with disk_errors(f"write {path.name}", path), staged_file(path.parent, f".{path.name}.") as (file, staged):
            file.write(data)
            install_file(file, staged, path)

    def entries(self) -> list[dict[str, Any]]:
        """index.json's entries as written, including those without a name and those that do not
        parse (written by another tool, or by hand): garbage collection must see every root."""
        return [entry if isinstance(entry, dict) else {"unparsed": entry} for entry in self._read_index()]

    def references(self) -> Iterator[tuple[str, Descriptor]]:
        """(name, descriptor) of every named entry that parses; :meth:`entries` has the others."""
        for i, entry in enumerate(self.entries()):
            name = _ref_name(entry)
            if not name:
                continue
            try:
                desc = Descriptor.from_dict(entry, f"index.json entry {i}")
            except InvalidArtifactError:
                continue
            yield name, desc

    def resolve(self, reference: str) -> Descriptor:
        if "@" in reference:
            return self._resolve_digest(reference.rpartition("@")[2])
        if is_digest(reference):
            return self._resolve_digest(reference)
        for entry in self.entries():
            if _ref_name(entry) == reference:
                return Descriptor.from_dict(entry, f"the index.json entry of {reference}")
        raise NotFoundError(f"{reference} is not in the local cache")

    def _resolve_digest(self, digest: str) -> Descriptor:
        split_digest(digest)
        data = self.read_head(digest)
        if data is None:
            raise NotFoundError(f"manifest {digest} is not in the local cache")
        node = parse_node(data)  # the document says what it is: a manifest or an index
        return Descriptor(node.media_type, digest, len(data))

    def tag(self, desc: Descriptor, reference: str) -> None:
        """Name ``desc`` in index.json.  ``reference`` equal to the manifest's own digest records it
        without a name (how a referrer such as a signature is kept, listed by :meth:`referrers`)."""
        if is_digest(reference):
            if reference != desc.digest:
                raise InvalidArtifactError(f"cannot name {desc.digest} by another digest, {reference}")
            self.add_root(desc)
            return
        self._ensure()
        annotations = {k: v for k, v in desc.annotations.items() if k != mediatypes.ANNOTATION_REF_NAME}
        annotations.setdefault(
            mediatypes.ANNOTATION_CREATED, datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        annotations[mediatypes.ANNOTATION_REF_NAME] = reference
        entry = Descriptor(desc.media_type, desc.digest, desc.size, annotations, desc.artifact_type).to_dict()
        with self._lock(".lock"):
            manifests = [m for m in self._read_index() if _ref_name(m) != reference]
            manifests.append(entry)
            manifests.sort(key=lambda m: _ref_name(m) or "")
            self._write_index(manifests)

    def add_root(self, desc: Descriptor) -> None:
        """Record the manifest ``desc`` in index.json without a name (once); its annotations are kept."""
        self._ensure()
        annotations = {k: v for k, v in desc.annotations.items() if k != mediatypes.ANNOTATION_REF_NAME}
        entry = Descriptor(desc.media_type, desc.digest, desc.size, annotations, desc.artifact_type).to_dict()
        with self._lock(".lock"):
            manifests = self._read_index()
            if any(_ref_name(m) is None and isinstance(m, dict) and m.get("digest") == desc.digest for m in manifests):
                return
            manifests.append(entry)
            manifests.sort(key=lambda m: _ref_name(m) or "")
            self._write_index(manifests)

    def drop_roots(self, digests: set[str]) -> int:
        """Remove the entries without a name whose digest is in ``digests``; returns how many went."""
        if not digests or not (self.root / "index.json").is_file():
            return 0
        with self._lock(".lock"):
            manifests = self._read_index()
            kept = [m for m in manifests
                    if not (_ref_name(m) is None and isinstance(m, dict) and m.get("digest") in digests)]
            if len(kept) != len(manifests):
                self._write_index(kept)
        return len(manifests) - len(kept)

    def unnamed_nodes(self) -> Iterator[tuple[Descriptor, Node]]:
        """The entries without a name that are manifests or indexes on disk, parsed (others are skipped)."""
        for entry in self.entries():
            if _ref_name(entry) is not None:
                continue
            try:
                desc = Descriptor.from_dict(entry)
            except InvalidArtifactError:
                continue
            data = self.read_head(desc.digest)
            if data is None or len(data) > MAX_MANIFEST:
                continue
            try:
                node = parse_node(data, desc.media_type if desc.media_type in NODE_TYPES else "")
            except InvalidArtifactError:
                continue
            yield desc, node

    def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        """The manifests recorded without a name whose ``subject`` is ``digest`` (see :meth:`tag`)."""
        found = []
        for desc, node in self.unnamed_nodes():
            if node.subject is None or node.subject.digest != digest:
                continue
            kind = desc.artifact_type or node.artifact_type or (node.config.media_type if node.config else None)
            if artifact_type is None or kind == artifact_type:
                found.append(Descriptor(node.media_type, desc.digest, desc.size, desc.annotations, kind))
        return found

    def untag(self, reference: str) -> Descriptor:
        if not (self.root / "index.json").is_file():
            raise NotFoundError(f"{reference} is not in the local cache")
        with self._lock(".lock"):
            manifests = self._read_index()
            kept = [m for m in manifests if _ref_name(m) != reference]
            if len(kept) == len(manifests):
                raise NotFoundError(f"{reference} is not in the local cache")
            removed = next(m for m in manifests if _ref_name(m) == reference)
            self._write_index(kept)
        try:
            return Descriptor.from_dict(removed)
        except InvalidArtifactError:  # a broken entry can be removed too: that is how it is cleaned up
            return Descriptor(str(removed.get("mediaType", "")), str(removed.get("digest", "")), 0)

    # -- garbage collection ------------------------------------------------------------------
    @contextmanager
    def _lock(self, name: str, *, shared: bool = False) -> Iterator[None]:
        """Hold the lock file ``name``; failing to take it is a :class:`StorageError`, what the block
        raises passes through unchanged."""
        with ExitStack() as stack:
            with disk_errors("lock the cache", self.root / name):
                stack.enter_context(file_lock(self.root / name, shared=shared))
            yield

    @contextmanager
    def _gc_lock(self, shared: bool) -> Iterator[None]:
        self._ensure()
        with self._lock(".gc.lock", shared=shared):
            yield

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold while writing blobs that no reference reaches yet, so prune leaves them alone."""
        with self._gc_lock(shared=True):
            yield

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Exclusive: no writer is between writing a blob and tagging it."""
        with self._gc_lock(shared=False):
            yield

    def clear_leftovers(self) -> int:
        """Remove what killed writers left (``.ingest/*``, ``.index.json.*.tmp``) and every stamp whose blob is
        gone; call only inside :meth:`collecting`.  Returns how many entries went."""
        removed = 0
        with disk_errors("clear the cache's temporary files", self._ingest_dir):
            for leftover in self._ingest_dir.iterdir():
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink(missing_ok=True)
                removed += 1
            with self._lock(".lock"):  # index.json is not being rewritten right now
                for leftover in self.root.glob(".index.json.*.tmp"):
                    leftover.unlink(missing_ok=True)
                    removed += 1
        if self.stamps is not None:
            removed += self.stamps.clear_orphans(set(self.blob_digests()))
        return removed

    clear_ingest = clear_leftovers


def _ref_name(entry: Any) -> str | None:
    annotations = entry.get("annotations") if isinstance(entry, dict) else None
    name = annotations.get(mediatypes.ANNOTATION_REF_NAME) if isinstance(annotations, dict) else None
    return name if isinstance(name, str) else None
