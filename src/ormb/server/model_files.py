"""What the catalog reads from a model's layers: the files they hold, and the model card and licence.

Everything is read through :class:`RepositoryContent`, a Fetcher limited to the repository shown
(a blob linked only to another repository is never read), and with caps, because a layer is
whatever its pusher made it:

- a tar layer (ormb's ``application/tar+gzip``; another tool's ``tar``, ``tar+gzip``, ``tar+zstd``
  per-file layers) is read with export's checked header reader (:class:`ormb.model.tarheaders.CheckedTarInfo`:
  bounded extended and global headers, PAX records checked in linear time, sparse maps refused), once per
  model view however often the manifest names it, and its listing is remembered by the store, whether it
  was read to the end, stopped at a cap or failed (a failure is shown as such, never retried);
- the files of one model, all layers together, are listed up to :data:`LISTING_CAP` rows (and as many
  tar layers) and :data:`LISTING_BYTES` bytes of names (a name is shown up to :data:`MAX_NAME_SHOWN` characters); the
  layers after that are not read at all, and the page says the list was cut;
- the decompressed bytes read for one view are bounded as ``ormb export`` bounds one export
  (:class:`ormb.model.budget.ExpansionBudget`: measured against the compressed bytes actually read, never
  the declared size); a layer that alone goes past it is remembered as cut there; a layer that goes past
  it after others were read in the same view is not remembered, and the next view, which finds the
  earlier ones remembered, reads it first;
- of the documents, only the model's chosen card and licence are kept: while a layer is listed, a member
  is read (up to :data:`~ormb.server.modelcard.CARD_CAP` bytes) only when it would be chosen, and the
  store keeps the chosen ones; a raw layer that is a document is read up to the same cap (decompressed,
  for KitOps' ``raw+gzip``/``raw+zstd``) each time it is shown.

The card is the first top-level ``README.md``, ``README``, ... (:data:`CARD_NAMES`, in that order; among
equals the layer named first), the licence likewise of :data:`LICENCE_NAMES`; for an ormb-format model
the top level is the layer's ``model/`` directory, and only names ``ormb export`` accepts count (no
``..``, no absolute path).  The catalog serves no other file's content.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from ormb.errors import NotFoundError, OrmbError, UnsafeArchiveError
from ormb.model import modelpack
from ormb.model.budget import ExpansionBudget
from ormb.model.tarheaders import CheckedTarInfo
from ormb.model.unpack import _safe_relative, decompressed
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.oci.grammar import MAX_TAR_ENTRY_NAME, is_digest
from ormb.server.context import Context
from ormb.server.modelcard import CARD_CAP

LISTING_CAP = 10_000  # files listed of one model, all layers together (and remembered of one layer)
LISTING_BYTES = 2 << 20  # bytes of file names listed of one model, all layers together (and of one layer)
MAX_NAME_SHOWN = MAX_TAR_ENTRY_NAME  # characters of one file name listed; a longer one is cut, with "…"
MEMBERS_CAP = 2 * LISTING_CAP  # tar members read of one layer at most (directories and links count too)
# Rows that say how a remembered listing ended (no file is called "" or has a negative size):
CAPPED = ("", -1)  # cut at a cap
FAILED = ("", -2)  # the layer could not be read to the end (not a tar, corrupt, refused by the header checks)
EMPTY = ("", -3)  # read to the end: no regular file
_ENDINGS = {CAPPED[1]: "capped", FAILED[1]: "failed", EMPTY[1]: "complete"}
ORMB_LAYERS = (mediatypes.ORMB_LAYER, "application/vnd.oci.image.layer.v1.tar+gzip")

# Names (lower-case) in order of preference: README.md first, as Hugging Face and Harbor read it.
CARD_NAMES = ("readme.md", "readme", "readme.markdown")
LICENCE_NAMES = ("license", "license.md", "license.txt", "licence", "licence.md", "licence.txt", "copying",
                 "copying.md", "copying.txt")
_DOCUMENT_NAMES = frozenset(CARD_NAMES + LICENCE_NAMES)
_KINDS = (CARD_NAMES, LICENCE_NAMES)


class ModelShape(Protocol):
    """What the listing reads of a model (a :class:`~ormb.model.loaded.LoadedModel`, or what the catalog
    keeps of one)."""

    @property
    def manifest(self) -> Manifest: ...

    @property
    def is_modelpack(self) -> bool: ...

    def files(self) -> list[tuple[str, int | None]]: ...


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
    """The place of ``path``'s name in ``names`` when it sits directly in ``top`` under a name ``ormb
    export`` accepts; else None."""
    if path.rpartition("/")[2].lower() not in _DOCUMENT_NAMES:
        return None  # most files: decided without normalising the path
    if not _export_accepts(path):
        return None  # ../LICENSE, /LICENSE.txt: export refuses the layer, so the model has no such file
    directory, _, name = _normal(path).rpartition("/")
    if directory != top or name.lower() not in names:
        return None
    return names.index(name.lower())


def _export_accepts(path: str) -> bool:
    try:
        return _safe_relative(path, "") is not None
    except UnsafeArchiveError:
        return False


def _normal(path: str) -> str:
    """A member name as a path: no leading ``./`` or ``/``."""
    return posixpath.normpath("/" + path).lstrip("/") if path else path


@dataclass
class _Chosen:
    """The best document of one kind so far: (rank, order of its layer, path) decides."""

    key: tuple[int, int, str]
    path: str
    source: Source


@dataclass
class _Listing:
    files: list[tuple[str, int]]
    ending: str  # complete, capped, failed; "stopped": past the view's budget, not remembered
    documents: dict[str, bytes] = field(default_factory=dict)  # members read while listing


class ModelFiles:
    """The files of one model of one repository, as the catalog lists them, and its card and licence."""

    def __init__(self, ctx: Context, repository: str, model: ModelShape) -> None:
        self._ctx, self._repository, self._model = ctx, repository, model
        self._content = RepositoryContent(ctx, repository)
        self.top = "" if model.is_modelpack else "model"
        self.capped = False  # the list was cut: a cap of the model or of a layer
        self.unreadable: list[str] = []  # digests of the tar layers that could not be read
        self.files: list[tuple[str, int | None]] = []
        self._names = 0  # bytes of the names in files
        self._layers = 0  # tar layers listed
        self._budget = ExpansionBudget()  # decompressed bytes of this view, all layers
        self._stopped = False  # the budget ran out after other layers: the next view goes on
        self._chosen: dict[tuple[str, ...], _Chosen] = {}  # kind -> the model's document of that kind
        self._read: dict[tuple[str, str], bytes] = {}  # (layer digest, member) -> the start read in this view
        self._listed: list[tuple[str, list[tuple[str, int]], dict[str, bytes]]] = []  # to remember, at the end
        self._list()
        self._remember()

    # -- the list ---------------------------------------------------------------------------------
    def _list(self) -> None:
        manifest = self._model.manifest
        seen: set[str] = set()
        if not self._model.is_modelpack:
            for order, layer in enumerate(manifest.layers):
                if layer.media_type in ORMB_LAYERS and layer.digest not in seen:
                    seen.add(layer.digest)
                    self._add_tar(layer, "gzip", order)
            if not self.files and not self.unreadable:
                for path, size in self._model.files():  # the metadata's directoryStructure
                    if not self._add_row(path, size):
                        break
            return
        try:
            items = modelpack.layer_files(manifest)
        except OrmbError:
            return
        for order, item in enumerate(items):
            compression = item.packing.partition("+")[2] or None
            if item.path is not None:
                path = str(item.path)
                self._offer(path, order, Source(item.descriptor, compression))
                self._add_row(path, item.descriptor.size)
            elif item.descriptor.digest not in seen:
                seen.add(item.descriptor.digest)
                if not self._add_tar(item.descriptor, compression, order):
                    self._add_row(item.title or f"<{item.packing} layer {item.descriptor.digest[7:19]}>",
                                  item.descriptor.size)

    def _full(self) -> bool:
        return len(self.files) >= LISTING_CAP or self._names >= LISTING_BYTES

    def _add_row(self, path: str, size: int | None) -> bool:
        if self._full():
            self.capped = True
            return False
        self.files.append((path, size))
        self._names += len(path.encode("utf-8", "replace"))
        return True

    def _add_tar(self, layer: Descriptor, compression: str | None, order: int) -> bool:
        """List a tar layer's files (unless the model's list is full); True when it needs no row of its own."""
        if self._full() or self._stopped or self._layers >= LISTING_CAP:
            self.capped = True
            return True
        self._layers += 1  # a layer with no file costs a read too
        listing = self._tar_listing(layer, compression, order)
        if listing.ending == "stopped":
            self._stopped = self.capped = True
            return True
        if listing.ending == "failed":
            self.unreadable.append(layer.digest)
        self.capped |= listing.ending == "capped"
        for path, size in listing.files:
            if not self._add_row(path, size):
                break
        for names in _KINDS:
            member = _layer_choice(listing.files, names, self.top)
            if member is not None:
                self._offer(member, order, Source(layer, compression, member))
        for member, data in listing.documents.items():
            self._read[(layer.digest, member)] = data
        return bool(listing.files)

    # -- documents --------------------------------------------------------------------------------
    def _offer(self, path: str, order: int, source: Source) -> None:
        """A document of the model: chosen when it is the best of its kind so far."""
        for names in _KINDS:
            rank = document_rank(path, names, self.top)
            if rank is None:
                continue
            key = (rank, order, _normal(path))
            best = self._chosen.get(names)
            if best is None or key < best.key:
                self._chosen[names] = _Chosen(key, _normal(path), source)

    def _would_choose(self, rank: int, names: tuple[str, ...]) -> bool:
        """Whether a document of this rank in the layer being read could still be chosen (the layers
        before it, named earlier, win among equals)."""
        best = self._chosen.get(names)
        return best is None or rank < best.key[0]

    def _remember(self) -> None:
        """Remember the listings read in this view and, of the documents, only the chosen ones (one commit)."""
        for chosen in self._chosen.values():
            member = chosen.source.member
            if member is None:
                continue
            data = self._read.get((chosen.source.layer.digest, member))
            if data is not None:
                self._listed.append((chosen.source.layer.digest, [], {member: data}))
        self._read.clear()
        self._ctx.storage.remember_layer_listings(self._listed)
        self._listed = []

    def card(self) -> Document | None:
        chosen = self._chosen.get(CARD_NAMES)
        return self._document(chosen) if chosen else None

    def licence_path(self) -> str | None:
        chosen = self._chosen.get(LICENCE_NAMES)
        return chosen.path if chosen else None

    def document(self, path: str) -> Document | None:
        """The model's card or licence when ``path`` names it, up to CARD_CAP bytes; None for any other path."""
        path = _normal(path)
        chosen = next((c for c in self._chosen.values() if c.path == path), None)
        return self._document(chosen) if chosen else None

    def _document(self, chosen: _Chosen) -> Document | None:
        source = chosen.source
        data = self._read_raw(source) if source.member is None else self._remembered_document(source)
        if data is None:
            return None
        return Document(chosen.path, data[:CARD_CAP].decode("utf-8", "replace"), len(data) > CARD_CAP)

    def _read_raw(self, source: Source) -> bytes | None:
        try:
            with self._content.fetch(source.layer) as blob:
                return bytes(_read_at_most(decompressed(blob, source.compression), CARD_CAP + 1))
        except Exception:  # whatever a decompressor raises on the pusher's bytes: no document
            return None

    def _remembered_document(self, source: Source) -> bytes | None:
        storage, digest, member = self._ctx.storage, source.layer.digest, source.member
        assert member is not None
        data = storage.layer_document(digest, member)
        if data is None:  # listed for another model, which chose another document: read this one, once
            listing = self._read_tar(source.layer, source.compression, ExpansionBudget(), want=member)
            data = listing.documents.get(member)
            if data is not None:
                storage.remember_layer_files(digest, [], {member: data})
        return data

    # -- tar listings ---------------------------------------------------------------------------
    def _tar_listing(self, layer: Descriptor, compression: str | None, order: int) -> _Listing:
        """The regular files a tar layer lists (sorted by path), remembered or read now (and remembered)."""
        digest, storage = layer.digest, self._ctx.storage
        cached = storage.layer_files(digest)
        if cached is not None and storage.linked(self._repository, digest) is not None:
            endings = [size for path, size in cached if path == "" and size < 0]
            files = [(path, size) for path, size in cached if path != "" or size >= 0]
            return _Listing(files, _ENDINGS.get(endings[0], "complete") if endings else "complete")
        first = self._budget.spent + self._budget.streaming == 0
        listing = self._read_tar(layer, compression, self._budget, order=order)
        if listing.ending == "stopped" and first:
            listing.ending = "capped"  # the layer alone is past what export would unpack
        if listing.ending in ("stopped", "missing"):
            return _Listing(listing.files, listing.ending if listing.ending == "stopped" else "complete")
        ending = {"capped": [CAPPED], "failed": [FAILED]}.get(listing.ending, [] if listing.files else [EMPTY])
        self._listed.append((digest, [*listing.files, *ending], {}))
        return listing

    def _read_tar(self, layer: Descriptor, compression: str | None, budget: ExpansionBudget, *,
                  order: int = 0, want: str | None = None) -> _Listing:
        """Read a tar layer: its regular files, and the start of the members that would be chosen as the
        model's documents (``want``: of that member only).  Ending: complete, capped, failed, stopped (past
        ``budget``) or missing (the blob is not in the repository)."""
        files: list[tuple[str, int]] = []
        documents: dict[str, bytes] = {}
        best: dict[tuple[str, ...], tuple[int, str, str]] = {}  # kind -> key of the member read
        names = 0
        ending = "complete"
        budget.start_layer(layer.digest)
        try:
            with self._content.fetch(layer) as blob:
                stream = _Budget(decompressed(_Counted(blob, budget), compression), budget)
                with tarfile.open(fileobj=stream, mode="r|", bufsize=1 << 20, tarinfo=CheckedTarInfo) as tar:
                    for count, member in enumerate(tar, 1):
                        tar.members.clear()  # type: ignore[attr-defined] # r| mode keeps every entry
                        name = member.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                        if member.isreg() and name:  # names as text a page can show (tar names may be any bytes)
                            shown = name if len(name) <= MAX_NAME_SHOWN else name[:MAX_NAME_SHOWN] + "\u2026"
                            files.append((shown, member.size))
                            names += len(shown.encode("utf-8", "replace"))
                            if want is not None:
                                if name == want:
                                    documents[name] = _read_member(tar, member)
                            elif self._keep_while_listing(name, order, best):
                                documents[name] = _read_member(tar, member)
                        if len(files) >= LISTING_CAP or names >= LISTING_BYTES or count >= MEMBERS_CAP:
                            ending = "capped" if tar.next() is not None else "complete"  # anything after this one?
                            break
        except (NotFoundError, _BlobError):
            return _Listing([], "missing")
        except _OverBudget:
            ending = "stopped"
        except Exception:  # whatever tarfile, the header checks or a decompressor raise on the layer
            ending = "failed"
        files.sort()
        return _Listing(files, ending, _only_best(documents, best) if want is None else documents)

    def _keep_while_listing(self, name: str, order: int, best: dict[tuple[str, ...], tuple[int, str, str]]) -> bool:
        """Whether to read this member: the best of its kind in the layer so far (the last of equal names,
        as export keeps it) and better than the model's choice from earlier layers."""
        kept = False
        for kind in _KINDS:
            rank = document_rank(name, kind, self.top)
            if rank is None or not self._would_choose(rank, kind):
                continue
            key = (rank, _normal(name), name)
            if kind not in best or key <= best[kind]:
                best[kind] = key
                kept = True
        return kept


def _layer_choice(files: list[tuple[str, int]], names: tuple[str, ...], top: str) -> str | None:
    """The member a layer offers as its document of ``names``: the least (rank, path, member name)."""
    keys = [(rank, _normal(path), path) for path, _ in files if (rank := document_rank(path, names, top)) is not None]
    return min(keys)[2] if keys else None


def _only_best(documents: dict[str, bytes], best: dict[tuple[str, ...], tuple[int, str, str]]) -> dict[str, bytes]:
    chosen = {key[2] for key in best.values()}
    return {name: data for name, data in documents.items() if name in chosen}


class _BlobError(Exception):
    """The blob's file could not be read (the disk's fault, not the layer's: nothing is remembered)."""


class _OverBudget(Exception):
    """A layer decompressed to more than export would unpack from it."""


class _Counted(io.RawIOBase):
    """The compressed bytes of a layer, charged to the budget as they are read (its credit)."""

    def __init__(self, raw: Any, budget: ExpansionBudget) -> None:
        self._raw, self._budget = raw, budget

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            data = bytes(self._raw.read(size if size >= 0 else 1 << 20))
        except OSError as exc:
            raise _BlobError() from exc
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
