"""What the catalog reads from a model's layers: the files they hold, and the model card and licence.

Everything is read through :class:`RepositoryContent`, a Fetcher limited to the repository shown
(a blob linked only to another repository is never read), and with caps, because a layer is
whatever its pusher made it:

- a tar layer (ormb's ``application/tar+gzip``; another tool's ``tar``, ``tar+gzip``, ``tar+zstd``
  per-file layers) is listed once, up to :data:`LISTING_CAP` files, :data:`MEMBERS_CAP` members and
  as many decompressed bytes as ``ormb export`` would unpack from it (:class:`ormb.model.budget.ExpansionBudget`:
  measured against the compressed bytes actually read, never the declared size), and the listing is
  remembered by the store;
  while listing, the documents at the model's top level (``README.md``, ``LICENSE`` ...) are read,
  up to :data:`~ormb.server.modelcard.CARD_CAP` bytes each, and remembered with it, so later views
  read nothing from the layer;
- a raw layer that is a document is read up to the same cap (decompressed, for KitOps'
  ``raw+gzip``/``raw+zstd``) each time it is shown.

The documents are the top-level model card (``README.md``, ``README``, ``readme.md``, ...: the
first of :data:`CARD_NAMES`) and licence (:data:`LICENCE_NAMES`); for an ormb-format model the
top level is the layer's ``model/`` directory.  The catalog serves no other file's content.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

from ormb.errors import NotFoundError, OrmbError, UnsafeArchiveError
from ormb.model import modelpack
from ormb.model.budget import ExpansionBudget
from ormb.model.loaded import LoadedModel
from ormb.model.unpack import decompressed
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor
from ormb.oci.grammar import is_digest
from ormb.server.context import Context
from ormb.server.modelcard import CARD_CAP

LISTING_CAP = 10_000  # files read from one layer's tar listing (and remembered); the page says where it stops
MEMBERS_CAP = 2 * LISTING_CAP  # tar members read at most (directories and links count too)
CAPPED = ("", -1)  # the row that marks a remembered listing as cut short (no file has size -1)
DOCUMENTS_PER_LAYER = 8  # documents remembered from one tar layer at most (README.md, Readme.MD, ... each one)
ORMB_LAYERS = (mediatypes.ORMB_LAYER, "application/vnd.oci.image.layer.v1.tar+gzip")

# Names (lower-case) in order of preference: README.md first, as Hugging Face and Harbor read it.
CARD_NAMES = ("readme.md", "readme", "readme.markdown")
LICENCE_NAMES = ("license", "license.md", "license.txt", "licence", "licence.md", "licence.txt", "copying",
                 "copying.md", "copying.txt")
_DOCUMENT_NAMES = frozenset(CARD_NAMES + LICENCE_NAMES)


class RepositoryContent:
    """The blobs and manifests of one repository as a Target (:class:`~ormb.content.target.Fetcher`),
    for :func:`ormb.model.loaded.load_model` and for reading layers: nothing linked to another
    repository is ever read."""

    def __init__(self, ctx: Context, repository: str) -> None:
        self._storage, self._repository = ctx.storage, repository

    @contextmanager
    def fetch(self, desc: Descriptor) -> Iterator[BinaryIO]:
        record = self._storage.manifest(self._repository, desc.digest) if is_digest(desc.digest) else None
        if record is not None:
            yield io.BytesIO(self._storage.manifest_bytes(record))
            return
        blob = self._storage.open_blob(self._repository, desc.digest)
        if blob is None:
            raise NotFoundError(f"blob {desc.digest} is not in {self._repository}")
        with blob:
            yield blob


@dataclass(frozen=True)
class Source:
    """Where a file's bytes are: a raw layer (``member`` None) or a member of a tar layer."""

    layer: Descriptor
    compression: str | None  # gzip, zstd or None
    member: str | None = None


@dataclass(frozen=True)
class Document:
    path: str  # as the file list shows it
    text: str
    cut: bool  # longer than CARD_CAP: only the start is here


def document_rank(path: str, names: tuple[str, ...], top: str) -> int | None:
    """The place of ``path``'s name in ``names`` when it sits directly in ``top``; else None."""
    if path.rpartition("/")[2].lower() not in _DOCUMENT_NAMES:
        return None  # most files: decided without normalising the path
    directory, _, name = _normal(path).rpartition("/")
    if directory != top or name.lower() not in names:
        return None
    return names.index(name.lower())


def _normal(path: str) -> str:
    """A member name as a path: no leading ``./`` or ``/``."""
    return posixpath.normpath("/" + path).lstrip("/") if path else path


class ModelFiles:
    """The files of one model of one repository, as the catalog lists them, and its documents."""

    def __init__(self, ctx: Context, repository: str, model: LoadedModel) -> None:
        self._ctx, self._repository, self._model = ctx, repository, model
        self._content = RepositoryContent(ctx, repository)
        self.top = "" if model.is_modelpack else "model"
        self.capped = False  # a tar listing stopped at a cap
        self.files: list[tuple[str, int | None]] = []
        self._sources: dict[str, Source] = {}  # the documents' (normalised paths): no other file is ever read
        self._list()

    def _list(self) -> None:
        manifest = self._model.manifest
        if not self._model.is_modelpack:
            for layer in manifest.layers:
                if layer.media_type in ORMB_LAYERS:
                    self._add_tar(layer, "gzip")
            if not self.files:
                self.files = self._model.files()  # the metadata's directoryStructure
            return
        try:
            items = modelpack.layer_files(manifest)
        except OrmbError:
            return
        for item in items:
            compression = item.packing.partition("+")[2] or None
            if item.path is not None:
                self.files.append((str(item.path), item.descriptor.size))
                if self._is_document(str(item.path)):
                    self._sources[str(item.path)] = Source(item.descriptor, compression)
            elif not self._add_tar(item.descriptor, compression):
                name = item.title or f"<{item.packing} layer {item.descriptor.digest[7:19]}>"
                self.files.append((name, item.descriptor.size))

    def _add_tar(self, layer: Descriptor, compression: str | None) -> bool:
        listed = self._tar_listing(layer, compression)
        self.files += listed
        for path, _ in listed:
            if self._is_document(path):
                self._sources.setdefault(_normal(path), Source(layer, compression, path))
        return bool(listed)

    # -- documents ------------------------------------------------------------------------------
    def card(self) -> Document | None:
        path = self.document_path(CARD_NAMES)
        return self.document(path) if path else None

    def document_path(self, names: tuple[str, ...]) -> str | None:
        """The top-level file the model has of ``names``, the first in their order."""
        ranked = [(rank, path) for path in self._sources if (rank := document_rank(path, names, self.top)) is not None]
        return min(ranked)[1] if ranked else None

    def document(self, path: str) -> Document | None:
        """A top-level model card or licence, up to CARD_CAP bytes; None for any other path."""
        path = _normal(path)
        source = self._sources.get(path)
        if source is None or (document_rank(path, CARD_NAMES, self.top) is None and
                              document_rank(path, LICENCE_NAMES, self.top) is None):
            return None
        if source.member is None:
            data = self._read_raw(source)
        else:
            data = self._remembered_document(source)
        if data is None:
            return None
        return Document(path, data[:CARD_CAP].decode("utf-8", "replace"), len(data) > CARD_CAP)

    def _read_raw(self, source: Source) -> bytes | None:
        try:
            with self._content.fetch(source.layer) as blob:
                return bytes(_read_at_most(decompressed(blob, source.compression), CARD_CAP + 1))
        except (OrmbError, OSError, EOFError, ValueError):
            return None

    def _remembered_document(self, source: Source) -> bytes | None:
        storage, digest, member = self._ctx.storage, source.layer.digest, source.member
        assert member is not None
        data = storage.layer_document(digest, member)
        if data is None:  # listed by an ormb that did not keep documents: read the layer again, once
            self._tar_listing(source.layer, source.compression, fresh=True)
            data = storage.layer_document(digest, member)
        return data

    # -- tar listings ---------------------------------------------------------------------------
    def _tar_listing(self, layer: Descriptor, compression: str | None, *, fresh: bool = False) -> list[tuple[str, int]]:
        """The regular files a tar layer lists (sorted by path); remembered, with its documents."""
        digest, storage = layer.digest, self._ctx.storage
        cached = None if fresh else storage.layer_files(digest)
        if cached is not None and storage.linked(self._repository, digest) is not None:
            self.capped |= CAPPED in cached
            return [f for f in cached if f[1] != CAPPED[1]]
        files: list[tuple[str, int]] = []
        documents: dict[str, bytes] = {}
        capped = False
        try:
            with self._content.fetch(layer) as blob:
                budget = ExpansionBudget()
                budget.start_layer(digest)
                stream = _Budget(decompressed(_Counted(blob, budget), compression), budget)
                with tarfile.open(fileobj=stream, mode="r|", bufsize=1 << 20) as tar:
                    for count, member in enumerate(tar, 1):
                        if member.isreg():  # names as text a page can show (tar names may be any bytes)
                            name = member.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                            files.append((name, member.size))
                            if self._is_document(name) and len(documents) < DOCUMENTS_PER_LAYER:
                                documents[name] = _read_member(tar, member)
                        if len(files) >= LISTING_CAP or count >= MEMBERS_CAP:
                            capped = tar.next() is not None  # anything after this one?
                            break
        except _OverBudget:
            capped = True
        except (OrmbError, OSError, tarfile.TarError, EOFError, ValueError):
            return sorted(files)
        files.sort()
        self.capped |= capped
        storage.remember_layer_files(digest, [*files, CAPPED] if capped else files, documents)
        return files

    def _is_document(self, name: str) -> bool:
        return (document_rank(name, CARD_NAMES, self.top) is not None
                or document_rank(name, LICENCE_NAMES, self.top) is not None)


class _OverBudget(Exception):
    """A layer decompressed to more than export would unpack from it."""


class _Counted(io.RawIOBase):
    """The compressed bytes of a layer, charged to the budget as they are read (its credit)."""

    def __init__(self, raw: Any, budget: ExpansionBudget) -> None:
        self._raw, self._budget = raw, budget

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = bytes(self._raw.read(size if size >= 0 else 1 << 20))
        self._budget.read(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Budget(io.RawIOBase):
    """Reads of a decompressed stream, charged to the budget: past its limit, :class:`_OverBudget`."""

    def __init__(self, stream: Any, budget: ExpansionBudget) -> None:
        self._stream, self._budget, self._total = stream, budget, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = bytes(self._stream.read(size if size >= 0 else 1 << 20))
        self._total += len(data)
        try:
            self._budget.stream(self._total)
        except UnsafeArchiveError:
            raise _OverBudget from None
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _read_at_most(stream: Any, limit: int) -> bytearray:
    out = bytearray()
    while len(out) < limit:
        chunk = stream.read(min(1 << 16, limit - len(out)))
        if not chunk:
            break
        out += chunk
    return out


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """Up to CARD_CAP + 1 bytes of the member the stream is at (the rest is skipped by the next ``next()``)."""
    handle = tar.extractfile(member)
    return bytes(_read_at_most(handle, CARD_CAP + 1)) if handle is not None else b""
