"""Unpack layers into a staging tree (:mod:`ormb.model.staging`), checking every entry and byte.

Tar layers are read as a stream while their bytes are hashed; raw layers (one file each) are
cloned from the cache where the file system can, else copied while hashed.  Every file, directory
and link is made through the staging tree, relative to directory descriptors and never through a
link; what a layer may not do (escape, write through a link, hard-link a file it did not write,
special files, names that are no path) is refused with :class:`UnsafeArchiveError`.

Bounds, whatever a layer holds:

- Disk: the export's :class:`~ormb.model.budget.ExpansionBudget` (one for all layers), charged with
  every decompressed byte as it is read and every entry and directory, and checked before a file is
  written from the size in its header.  No layer is read past its declared size.
- Memory: the tar is read entry by entry and tarfile's list of entries is emptied as it goes (in
  ``r|`` mode it keeps every entry with its headers); its headers are read by
  :class:`ormb.model.tarheaders.CheckedTarInfo` (bounded extended and global headers, PAX records checked
  in linear time, sparse entries refused before tarfile reads their map).
- Errors: whatever tarfile or a decompressor raises on a layer is an :class:`UnsafeArchiveError` (or,
  if the layer does not match its digest, an :class:`IntegrityError`), never a crash.

Signatures need the SHA-256 of every file a layer holds: :class:`FileHashes` collects them while an
export writes (``hashes=``), and :func:`hash_tar` / :func:`hash_raw` read a layer the same checked way
(one tar reader, :func:`_walk_tar`, over the same :class:`~ormb.model.payload.PayloadView`, with the same
bounds) without writing anything.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, NoReturn

import zstandard
from isal import igzip

from ormb.content.background import (
    BackgroundHasher,
    BackgroundWriter,
    Stopped,
    check_stop,
    write_sliced,
)
from ormb.content.filecopy import WRITE_ERRORS, clone, copy_out
from ormb.content.stamps import CheckedCopy, StampStore
from ormb.content.target import Readable
from ormb.errors import IntegrityError, OrmbError, StorageError, UnsafeArchiveError
from ormb.model.budget import ExpansionBudget
from ormb.model.payload import LayerError, PayloadView, local, payload_pieces, streamed
from ormb.model.staging import Parts, StagingTree
from ormb.model.tarheaders import CheckedTarInfo
from ormb.oci.descriptor import Descriptor
from ormb.progress import NoProgress, ProgressListener

CHUNK = 1 << 20
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass
class FileHashes:
    """The SHA-256 (hex) and size of every regular file a layer holds, by its path below the layer's
    prefix (``model/`` of the ormb format is not part of it), as the last entry of each path left it;
    and the paths that are symbolic links (a signature covers regular files only).

    Raw layers written at once (:func:`prepare_raw`) record from their threads: each its own path (two
    layers of one path are refused before any runs), one dictionary store each."""

    files: dict[str, tuple[str, int]] = field(default_factory=dict)
    links: set[str] = field(default_factory=set)

    def file(self, path: str, sha256: str, size: int) -> None:
        self.links.discard(path)
        self.files[path] = (sha256, size)

    def link(self, path: str) -> None:
        self.files.pop(path, None)
        self.links.add(path)

    def digests(self) -> dict[str, str]:
        """path -> SHA-256 hex."""
        return {path: digest for path, (digest, _) in self.files.items()}


class _LayerError(Exception):
    """Whatever the tar reader or a decompressor raised on the layer's bytes (``__cause__``)."""


class _FileHasher:
    """Reads from ``raw``, hashing (SHA-256) and counting what passes: one file's content."""

    def __init__(self, raw: Readable) -> None:
        self._raw = raw
        self._hasher = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._hasher.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


class _HashingReader:
    """Reads at most the declared size of ``raw``, hashing and counting every byte, reporting progress,
    and crediting the budget (for layers whose unpacked bytes are charged).  A set ``stop`` flag raises
    :class:`~ormb.content.background.Stopped` before and after each read of ``raw`` (a read itself is not
    interrupted: a stalled connection ends with the transport's read timeout)."""

    def __init__(self, raw: Readable, desc: Descriptor, progress: ProgressListener, task: str,
                 budget: ExpansionBudget | None = None, stop: threading.Event | None = None) -> None:
        self._raw = raw
        self._stop = stop
        self._desc = desc
        self._hasher = BackgroundHasher(hashlib.new(desc.digest.partition(":")[0]))
        self.size = 0
        self._progress = progress
        self._task = task
        self._budget = budget

    def read(self, n: int = -1) -> bytes:
        left = self._desc.size - self.size
        if left <= 0:
            return b""
        check_stop(self._stop)
        data = self._raw.read(left if n < 0 else min(n, left))
        check_stop(self._stop)
        self._hasher.update(data)
        self.size += len(data)
        self._progress.advance(self._task, len(data))
        if self._budget is not None:
            self._budget.read(len(data))
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def digest(self) -> str:
        return f"{self._hasher.name}:{self._hasher.hexdigest()}"

    def close(self) -> None:
        self._hasher.close()

    def verify(self, raw: Readable, what: str) -> None:
        """After the last byte: the blob is exactly its declared size and digest."""
        if raw.read(1):
            raise IntegrityError(f"{what} has more bytes than the {self._desc.size} its manifest declares")
        if self.size != self._desc.size or self.digest() != self._desc.digest:
            raise IntegrityError(f"{what} does not match: read {self.size} bytes with digest {self.digest()}")




def _safe_relative(name: str, prefix: str, strip: bool = False) -> PurePosixPath | None:
    """The entry's path below the destination, ``None`` for the root entry; refuses escapes.

    With ``strip`` the ``prefix`` itself is removed (``model/a.onnx`` -> ``a.onnx``).  Backslashes
    count as separators (a Windows-made tar); ``.`` and empty names are dropped.
    """
    if "\0" in name:
        raise UnsafeArchiveError(f"layer entry {name!r} has a NUL character in its name; refusing to export")
    try:
        os.fsencode(name)
    except UnicodeEncodeError:
        raise UnsafeArchiveError(f"layer entry {name!r} has a name this system cannot encode; refusing") from None
    if name.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(name):
        raise UnsafeArchiveError(f"layer entry {name!r} has an absolute path; refusing to export")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"layer entry {name!r} climbs out of the export directory with '..'; refusing to export")
    if not parts:
        return None
    relative = PurePosixPath(*parts)
    if prefix and not (str(relative) + "/").startswith(prefix):
        raise UnsafeArchiveError(f"layer entry {name!r} is outside {prefix}; refusing to export")
    if strip and prefix:
        rest = str(relative)[len(prefix):]
        return PurePosixPath(rest) if rest else None
    return relative


def decompressed(reader: Any, compression: str | None) -> Any:
    """A reader of ``reader``'s bytes decompressed (``gzip``, ``zstd``, or None: as they are); unbounded:
    the caller counts what it reads (the catalog's listings)."""
    if compression == "gzip":
        return igzip.IGzipFile(fileobj=reader, mode="rb")  # type: ignore[no-untyped-call]
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(reader, read_across_frames=True)
    return reader


def _hash_key(relative: PurePosixPath, prefix: str, stripped: bool) -> str:
    """The path a signature names for an entry: below the prefix (``model/``), whether or not export strips it."""
    path = str(relative)
    return path[len(prefix):] if prefix and not stripped else path


def _layer_name(desc: Descriptor, path: str | None = None) -> str:
    return f"layer {desc.digest[:19]}" + (f" ({path})" if path else "")


def extract_tar(
    blob: Readable,
    desc: Descriptor,
    tree: StagingTree,
    *,
    base: Parts = (),
    prefix: str = "",
    strip_prefix: bool = False,
    compression: str | None = "gzip",
    progress: ProgressListener | None = None,
    local: Path | None = None,
    hashes: FileHashes | None = None,
    stamps: StampStore | None = None,
) -> list[str]:
    """Extract a tar layer into ``tree`` below ``base``, checking every entry and the layer's digest;
    the bytes it unpacks to are charged to ``tree.budget``.

    ``local`` is the cache's copy of the blob: the file contents of a stored-gzip (ormb's) or plain layer are
    copied from it by the kernel (:class:`ormb.model.payload.Region`) instead of passing through Python, while a
    thread checks its digest (unless a stamp in ``stamps`` vouches for the copy: :mod:`ormb.content.stamps`);
    nothing moves out of the staging tree unless it matches.  Without it (or when it
    is missing or not the declared size) ``blob`` streams and is hashed as it is read.

    Returns the entries' paths below ``base`` (after ``strip_prefix``), each once.  With ``hashes``,
    every regular file is hashed while it is written (paths below ``prefix``); a file that a local copy
    would have the kernel copy is then read through Python, to be hashed.
    """
    progress = progress or NoProgress()
    progress.start(desc.digest, desc.digest.partition(":")[2][:12], desc.size)
    budget = tree.budget
    budget.start_layer(_layer_name(desc))
    tree.begin_layer(replaceable=True)
    visit = _Extractor(tree, base, prefix, strip_prefix, hashes)
    fd = _open_local(local, desc.size) if local is not None else None
    if fd is not None:
        try:
            _walk_local(fd, desc, budget, prefix, strip_prefix, compression, progress, visit, stamps)
        finally:
            os.close(fd)
    else:
        _walk_streamed(blob, desc, budget, prefix, strip_prefix, compression, progress, visit)
    progress.finish(desc.digest)
    return list(visit.paths)


def hash_tar(blob: Readable, desc: Descriptor, *, prefix: str = "", compression: str | None = "gzip",
             max_expand: int | None = None, progress: ProgressListener | None = None) -> FileHashes:
    """The files of a tar layer with their SHA-256, read once as export reads it (the same checks of the
    layer's digest, of entry names, of header sizes and of expansion); nothing is written.

    A hard link counts as its target's content; an entry that export would refuse (a special file, a
    hard link to a file not before it, a path that is a file and a directory) is refused here too.
    """
    progress = progress or NoProgress()
    budget = ExpansionBudget(max_expand)
    budget.start_layer(_layer_name(desc))
    visit = _Hasher(prefix)
    _walk_streamed(blob, desc, budget, prefix, True, compression, progress, visit)
    clash = next((p for p in sorted(visit.directories) if p in visit.hashes.files or p in visit.hashes.links), None)
    if clash is not None:
        raise UnsafeArchiveError(f"layer {desc.digest[:19]} makes {clash!r} both a file and a directory; refusing")
    return visit.hashes


def _walk_streamed(blob: Readable, desc: Descriptor, budget: ExpansionBudget, prefix: str, strip: bool,
                   compression: str | None, progress: ProgressListener, visit: _Visitor) -> None:
    """:func:`_walk_tar` over ``blob`` as it streams, hashed as it is read; its digest and size checked."""
    reader = _HashingReader(blob, desc, progress, desc.digest, budget)
    try:
        try:
            view = PayloadView(payload_pieces(streamed(reader.read), compression), budget)
            _walk_tar(view, desc, budget, prefix, strip, lambda: reader.size, visit)
            view.drain()  # past the tar's end marker to the gzip trailer: its CRC-32 and length are checked
            reader.drain()
        except (_LayerError, LayerError) as wrapped:
            cause = wrapped.__cause__ or wrapped
            reader.drain()  # hash the rest: a corrupt layer is the registry's fault, not the format's
            if reader.digest() != desc.digest:
                raise IntegrityError(f"layer {desc.digest} does not match its digest") from None
            if isinstance(cause, RecursionError):
                raise UnsafeArchiveError(f"layer {desc.digest} nests tar headers too deeply; refusing") from None
            raise UnsafeArchiveError(f"layer {desc.digest} is not a valid tar archive: "
                                     f"{type(cause).__name__}: {cause}") from None
        reader.verify(blob, f"layer {desc.digest}")
    finally:
        reader.close()


def _open_local(path: Path, size: int) -> int | None:
    """The cache's copy of a blob opened for reading, if it is there and ``size`` bytes; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size == size:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _walk_local(fd: int, desc: Descriptor, budget: ExpansionBudget, prefix: str, strip: bool,
                compression: str | None, progress: ProgressListener, visit: _Visitor,
                stamps: StampStore | None = None) -> None:
    """:func:`_walk_tar` over the cache's copy ``fd``: file contents copied by the kernel, the blob's digest
    computed meanwhile in a thread and checked at the end, unless its stamp vouches for it
    (:class:`~ormb.content.stamps.CheckedCopy`)."""
    def consumed(n: int) -> None:
        budget.read(n)
        progress.advance(desc.digest, n)

    source = local(fd, desc.size, consumed)
    digest = CheckedCopy(fd, desc.size, desc.digest, stamps)
    try:
        try:
            view = PayloadView(payload_pieces(source, compression), budget)
            _walk_tar(view, desc, budget, prefix, strip, lambda: source.offset, visit)
            view.drain()  # to the end: the gzip structure (block lengths, trailers) is checked whole
            if not source.at_end():
                raise LayerError("the layer holds bytes after its stream's end")
        except (_LayerError, LayerError) as wrapped:
            cause = wrapped.__cause__ or wrapped
            _check_local(digest, desc, "")  # a damaged copy shows as a malformed layer: say which it is
            if isinstance(cause, RecursionError):
                raise UnsafeArchiveError(f"layer {desc.digest} nests tar headers too deeply; refusing") from None
            raise UnsafeArchiveError(f"layer {desc.digest} is not a valid tar archive: "
                                     f"{type(cause).__name__}: {cause}") from None
        _check_local(digest, desc, "")
    finally:
        digest.stop()


def _check_local(digest: CheckedCopy, desc: Descriptor, shown: str) -> None:
    """The cache's copy read by ``digest`` is the blob ``desc`` names; else an :class:`IntegrityError`."""
    try:
        size, actual = digest.result()
    except OSError as exc:
        raise StorageError(f"cannot read the cache's copy of {desc.digest}: {exc.strerror}") from None
    if size != desc.size or actual != desc.digest:
        where = f" ({shown})" if shown else ""
        raise IntegrityError(f"layer {desc.digest}{where} does not match its digest: the cache's copy reads as "
                             f"{actual}", "the cache is damaged: remove the model ('ormb rm'), run 'ormb prune', "
                             "then pull or save it again")


def _next(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    """The next entry; tarfile's list of the entries read so far is emptied (it would keep them all)."""
    try:
        member = tar.next()
    except (OrmbError, _LayerError, LayerError):
        raise
    except Exception as exc:
        raise _LayerError() from exc
    tar.members.clear()  # type: ignore[attr-defined]
    return member


def _open_tar(source: PayloadView) -> tarfile.TarFile:
    """tarfile over the layer's unpacked bytes, reading headers only (file contents go by :meth:`PayloadView.copy_to`):
    it only moves forward, as in stream mode, without stream mode's buffer that is copied on every header."""
    try:
        return tarfile.TarFile(fileobj=source, mode="r", tarinfo=CheckedTarInfo)  # type: ignore[arg-type]
    except (OrmbError, _LayerError, LayerError):
        raise
    except Exception as exc:
        raise _LayerError() from exc


class _Visitor:
    """What :func:`_walk_tar` does with each entry below the root (``relative``: its checked path)."""

    def __call__(self, source: PayloadView, member: tarfile.TarInfo, relative: PurePosixPath) -> None:
        raise NotImplementedError


def _walk_tar(source: PayloadView, desc: Descriptor, budget: ExpansionBudget, prefix: str, strip: bool,
              raw_read: Callable[[], int], visit: _Visitor) -> None:
    """Every entry of the tar in ``source``, its name checked and charged, to ``visit``; ``raw_read()`` says
    how many bytes of the layer were read so far (what the budget may still grow by is bounded by the rest).
    The one tar reader of export and of signing (:func:`hash_tar`)."""
    with _open_tar(source) as tar:
        while (member := _next(tar)) is not None:
            budget.entry(member.name)
            budget.ahead(tar.offset, desc.size - raw_read(), member.name)
            relative = _safe_relative(member.name, prefix, strip)
            if relative is None:
                continue
            if prefix and not strip and str(relative) + "/" == prefix and not member.isdir():
                # ``model/.`` as a file or link: it would replace the model's directory, and a
                # signature (whose root that directory is) could not name it
                raise UnsafeArchiveError(f"layer entry {member.name!r} makes {prefix} a file or link; refusing")
            if member.isreg() and member.issparse():
                raise UnsafeArchiveError(f"layer entry {member.name!r} is a sparse file; refusing to export")
            visit(source, member, relative)


class _Extractor(_Visitor):
    """Each entry into the staging tree below ``base``; with ``hashes``, every file hashed as it is written."""

    def __init__(self, tree: StagingTree, base: Parts, prefix: str, strip: bool, hashes: FileHashes | None) -> None:
        self._tree, self._base, self._prefix, self._strip, self._hashes = tree, base, prefix, strip, hashes
        self.inodes: set[tuple[int, int]] = set()  # the regular files this layer wrote: what a hard link may name
        self.paths: dict[str, None] = {}

    def __call__(self, source: PayloadView, member: tarfile.TarInfo, relative: PurePosixPath) -> None:
        tree, hashes = self._tree, self._hashes
        parts = self._base + relative.parts
        key = _hash_key(relative, self._prefix, self._strip)
        if member.isdir():
            tree.directory(parts)
            return
        if member.isreg():
            fd = tree.create_file(parts)
            hasher = hashlib.sha256() if hashes is not None else None
            made = _write_entry(fd, tree.show(parts), source, member.size, (member.mode & 0o755) | 0o600, hasher)
            self.inodes.add((made.st_dev, made.st_ino))
            if hashes is not None and hasher is not None:
                hashes.file(key, hasher.hexdigest(), member.size)
        elif member.issym():
            tree.symlink(parts, member.linkname)
            if hashes is not None:
                hashes.link(key)
        elif member.islnk():
            link = _safe_relative(member.linkname, self._prefix, self._strip)
            if link is None:
                raise UnsafeArchiveError(f"layer entry {member.name!r} is a hard link to the root; refusing")
            tree.hard_link(parts, self._base + link.parts, self.inodes)
            if hashes is not None:
                target = hashes.files.get(_hash_key(link, self._prefix, self._strip))
                if target is None:  # hard_link() refused anything but a file this layer wrote: unreachable
                    raise UnsafeArchiveError(f"layer entry {member.name!r} is a hard link to no file; refusing")
                hashes.file(key, *target)
        else:
            raise UnsafeArchiveError(
                f"layer entry {member.name!r} is a device, FIFO or other special file; refusing to export"
            )
        self.paths[str(relative)] = None


class _Hasher(_Visitor):
    """Each file's SHA-256 (nothing written), with the directories the layer implies (for the clash check)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self.hashes = FileHashes()
        self.directories: set[str] = set()

    def __call__(self, source: PayloadView, member: tarfile.TarInfo, relative: PurePosixPath) -> None:
        key = _hash_key(relative, self._prefix, True)
        for parent in relative.parents:
            if parent.parts:
                self.directories.add(_hash_key(parent, self._prefix, True))
        if member.isdir():
            self.directories.add(key)
        elif member.isreg():
            hasher = hashlib.sha256()
            left = member.size
            while left > 0:
                data = source.read(min(CHUNK, left))
                if not data:
                    raise LayerError(f"the layer ends inside {member.name!r}")
                hasher.update(data)
                left -= len(data)
            self.hashes.file(key, hasher.hexdigest(), member.size)
        elif member.issym():
            self.hashes.link(key)
        elif member.islnk():
            link = _safe_relative(member.linkname, self._prefix, True)
            target = self.hashes.files.get(str(link)) if link is not None else None
            if target is None:
                raise UnsafeArchiveError(f"layer entry {member.name!r} is a hard link to {member.linkname!r}, "
                                         "which is not a file written before it in the same layer; refusing")
            self.hashes.file(key, *target)
        else:
            raise UnsafeArchiveError(f"layer entry {member.name!r} is a device, FIFO or other special file; refusing")


def _write_to(fd: int, shown: str, source: Readable, mode: int | None) -> os.stat_result:
    """Write ``source`` into the new file ``fd`` and close it; read errors (the layer's) pass up unchanged,
    write errors (the disk's) become StorageError naming ``shown``."""
    out = open(fd, "wb")
    ok = False
    try:
        _copy(source, out, shown)
        try:
            out.flush()
            if mode is not None:
                os.fchmod(fd, mode)
            made = os.fstat(fd)
        except OSError as exc:
            raise StorageError(f"cannot write {shown}: {exc.strerror}") from None
        ok = True
    finally:
        try:
            out.close()
        except OSError as exc:
            if ok:
                raise StorageError(f"cannot write {shown}: {exc.strerror}") from None
    return made


def _write_entry(fd: int, shown: str, source: PayloadView, size: int | None, mode: int | None,
                 hasher: Any = None) -> os.stat_result:
    """Write ``size`` bytes of ``source`` (all that are left when None) into the new file ``fd`` and close it;
    a layer that ends first is a :class:`LayerError`, write errors (the disk's) StorageError naming ``shown``.
    ``hasher`` (a hashlib object), if given, is updated with every byte written."""
    def disk(exc: OSError) -> StorageError:
        return StorageError(f"cannot write {shown}: {exc.strerror}")

    try:
        written = source.copy_to(fd, size, disk, hasher)
        if size is not None and written != size:
            raise LayerError(f"the layer ends inside {shown}")
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            return os.fstat(fd)
        except OSError as exc:
            raise disk(exc) from None
    finally:
        os.close(fd)


Opener = Callable[[], AbstractContextManager[Readable]]


def write_raw(blob: Readable | Opener, desc: Descriptor, tree: StagingTree, parts: Parts, *,
              clone_from: Path | None = None, compression: str | None = None, mode: int | None = None,
              progress: ProgressListener | None = None, hashes: FileHashes | None = None,
              key: str | None = None, stamps: StampStore | None = None) -> None:
    """Write a raw (untarred) layer to ``parts`` of ``tree``: exactly its declared size, verified.

    ``clone_from`` is the cache's copy of the blob: where the file system can (btrfs, XFS), the file is a
    reflink clone of it and costs no extra disk (its blocks were verified when they entered the cache);
    elsewhere the kernel copies it (copy_file_range) while a thread checks its digest.  Without it (or
    when it is missing or not the declared size) ``blob`` streams and is hashed; ``blob`` may be a function
    that opens it, called only then.  ``compression`` (gzip, zstd: KitOps' ``raw+gzip``/``raw+zstd``) is
    undone after hashing, charged to the budget like a tar layer.  ``mode``: the file's permission bits (the
    file metadata's).  A path that already exists (another layer's) is refused.  With ``hashes`` the file's
    SHA-256 is recorded under ``key`` (default: ``parts`` joined): for an uncompressed SHA-256 layer it is
    the layer's digest, verified here; otherwise it is computed while written.  ``stamps``: the cache's
    stamps, which may vouch for ``clone_from`` instead of a hash (:mod:`ormb.content.stamps`).

    Two steps, so that several raw layers can be written at once (:func:`prepare_raw` in the tree's order,
    then the returned job's ``run`` in threads): only uncompressed layers, whose bytes the budget does not
    count, may run at the same time.
    """
    prepare_raw(blob, desc, tree, parts, clone_from=clone_from, compression=compression, mode=mode,
                progress=progress, hashes=hashes, key=key, stamps=stamps).run()


class RawJob:
    """The bytes of one raw layer into the file :func:`prepare_raw` made (see :func:`write_raw`).  ``run``
    touches nothing of the tree but its own file: it may run in a thread while other jobs run.  Given a
    ``stop`` flag (shared by the jobs run at once), ``run`` checks it between chunks of its copy, streamed or
    from the cache's copy, and raises :class:`~ormb.content.background.Stopped` with its file closed."""

    def __init__(self, blob: Readable | Opener, desc: Descriptor, tree: StagingTree, parts: Parts, fd: int,
                 clone_from: Path | None, compression: str | None, mode: int | None, progress: ProgressListener,
                 hashes: FileHashes | None, key: str, stamps: StampStore | None = None) -> None:
        self._stamps = stamps
        self._blob, self.desc, self._tree, self._parts, self._fd = blob, desc, tree, parts, fd
        self._clone_from, self.compression, self._mode, self._progress = clone_from, compression, mode, progress
        self._hashes, self._key = hashes, key
        algorithm, _, self._hex = desc.digest.partition(":")
        self._known = compression is None and algorithm == "sha256"  # the file's SHA-256 is the layer's digest

    def _open(self) -> AbstractContextManager[Readable]:
        return self._blob() if callable(self._blob) else nullcontext(self._blob)

    def _record(self, sha256: str, size: int) -> None:
        if self._hashes is not None:
            self._hashes.file(self._key, sha256, size)

    def close(self) -> None:
        """The job will not run (another failed first): close its file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def run(self, stop: threading.Event | None = None) -> None:
        desc, tree, parts, progress, compression, mode = (self.desc, self._tree, self._parts, self._progress,
                                                          self.compression, self._mode)
        fd, self._fd = self._fd, -1
        if stop is not None and stop.is_set():
            os.close(fd)
            raise Stopped()
        budget = tree.budget
        shown = "/".join(parts)
        # a local copy serves unless the file's SHA-256 must be computed from bytes the kernel would copy unseen
        usable = self._clone_from is not None and (self._hashes is None or self._known or compression is not None)
        local_fd = _open_local(self._clone_from, desc.size) if usable and self._clone_from is not None else None
        if local_fd is not None and compression is not None:  # KitOps raw+gzip/zstd from the cache
            def consumed(n: int) -> None:
                budget.read(n)
                progress.advance(desc.digest, n)

            source = local(local_fd, desc.size, consumed)
            digest = CheckedCopy(local_fd, desc.size, desc.digest, self._stamps)
            hasher = hashlib.sha256() if self._hashes is not None else None
            try:
                try:
                    made = _write_entry(fd, tree.show(parts), PayloadView(payload_pieces(source, compression), budget),
                                        None, mode, hasher)
                    if not source.at_end():
                        raise LayerError("bytes after the stream's end")
                except LayerError as wrapped:
                    cause = wrapped.__cause__ or wrapped
                    _check_local(digest, desc, shown)
                    raise UnsafeArchiveError(f"layer {desc.digest} ({shown}) is not valid {compression}: "
                                             f"{type(cause).__name__}: {cause}") from None
                _check_local(digest, desc, shown)
            finally:
                digest.stop()
                os.close(local_fd)
            if hasher is not None:
                self._record(hasher.hexdigest(), made.st_size)
            progress.finish(desc.digest)
            return
        try:
            copied = local_fd is not None and _copy_local(local_fd, fd, desc, tree.show(parts), stop,
                                                                 self._stamps)
        except BaseException:
            os.close(fd)
            raise
        if copied:
            try:
                if mode is not None:
                    os.fchmod(fd, mode)
            except OSError as exc:
                raise StorageError(f"cannot write {tree.show(parts)}: {exc.strerror}") from None
            finally:
                os.close(fd)
            self._record(self._hex, desc.size)  # only when known: the verified copy is the layer
            progress.advance(desc.digest, desc.size)
            progress.finish(desc.digest)
            return
        handed = False  # once _stream has the file, it closes it
        try:
            with self._open() as blob:
                handed = True
                self._stream(blob, fd, shown, stop)
        except BaseException:
            if not handed:
                os.close(fd)
            raise
        progress.finish(desc.digest)

    def _stream(self, blob: Readable, fd: int, shown: str, stop: threading.Event | None) -> None:
        desc, tree, parts, compression = self.desc, self._tree, self._parts, self.compression
        budget = tree.budget
        reader = _HashingReader(blob, desc, self._progress, desc.digest, budget if compression else None, stop)
        try:
            if compression is None:
                counted = _FileHasher(reader) if self._hashes is not None and not self._known else None
                _write_to(fd, tree.show(parts), counted or reader, self._mode)
                reader.verify(blob, f"layer {desc.digest} ({shown})")
                if counted is not None:
                    self._record(counted.hexdigest(), counted.size)
                else:
                    self._record(self._hex, desc.size)
                return
            hasher = hashlib.sha256() if self._hashes is not None else None
            try:
                made = _write_entry(fd, tree.show(parts), PayloadView(payload_pieces(streamed(reader.read), compression),
                                                                      budget), None, self._mode, hasher)
            except LayerError as wrapped:
                _refuse_layer(reader, desc, f"layer {desc.digest} ({shown})", compression, wrapped)
            reader.verify(blob, f"layer {desc.digest} ({shown})")
            if hasher is not None:
                self._record(hasher.hexdigest(), made.st_size)
        finally:
            reader.close()


def _refuse_layer(reader: _HashingReader, desc: Descriptor, what: str, compression: str | None,
                  wrapped: LayerError) -> NoReturn:
    """A raw layer whose bytes could not be undone: corrupt if its digest does not match once the rest is hashed
    (the registry's fault, not the format's), else not valid ``compression``."""
    reader.drain()
    if reader.digest() != desc.digest:
        raise IntegrityError(f"{what} does not match its digest") from None
    cause = wrapped.__cause__ or wrapped
    raise UnsafeArchiveError(f"{what} is not valid {compression}: {type(cause).__name__}: {cause}") from None


def prepare_raw(blob: Readable | Opener, desc: Descriptor, tree: StagingTree, parts: Parts, *,
                clone_from: Path | None = None, compression: str | None = None, mode: int | None = None,
                progress: ProgressListener | None = None, hashes: FileHashes | None = None,
                key: str | None = None, stamps: StampStore | None = None) -> RawJob:
    """The first step of :func:`write_raw`: account for the layer and make its (empty) file, in the tree's
    order; the job that writes the bytes is returned."""
    progress = progress or NoProgress()
    shown = "/".join(parts)
    progress.start(desc.digest, shown, desc.size)
    budget = tree.budget
    budget.start_layer(_layer_name(desc, shown))
    tree.begin_layer(replaceable=False)
    budget.entry(shown)
    fd = tree.create_file(parts)
    return RawJob(blob, desc, tree, parts, fd, clone_from, compression, mode, progress, hashes, key or shown, stamps)


def hash_raw(blob: Readable, desc: Descriptor, *, compression: str | None = None,
             max_expand: int | None = None) -> tuple[str, int]:
    """(SHA-256 hex, size) of the file a raw layer holds, read as :func:`write_raw` reads it (the layer's
    digest and size checked, ``compression`` undone within an expansion budget); nothing is written."""
    budget = ExpansionBudget(max_expand)
    budget.start_layer(_layer_name(desc))
    reader = _HashingReader(blob, desc, NoProgress(), desc.digest, budget if compression else None)
    try:
        source: Readable = reader
        if compression is not None:
            source = PayloadView(payload_pieces(streamed(reader.read), compression), budget)
        hasher = _FileHasher(source)
        try:
            while hasher.read(CHUNK):
                pass
        except LayerError as wrapped:
            _refuse_layer(reader, desc, f"layer {desc.digest}", compression, wrapped)
        reader.verify(blob, f"layer {desc.digest}")
    finally:
        reader.close()
    return hasher.hexdigest(), hasher.size


def _copy_local(source: int, fd: int, desc: Descriptor, shown: str, stop: threading.Event | None = None,
                stamps: StampStore | None = None) -> bool:
    """Make the new, empty file ``fd`` the cache's copy ``source`` (its size checked by the caller): a reflink
    clone sharing its blocks where the file system can (btrfs, XFS; the clone's source is then read and its digest
    checked, as for a copy, so a damaged cache blob is refused on every file system), else a kernel copy (:func:`ormb.content.filecopy.copy_out`) while a thread checks the copy's
    digest (either check is skipped when the blob's stamp in ``stamps`` vouches for it: :mod:`ormb.content.stamps`;
    the size is checked all the same).  False when the kernel copy fails short of a full disk: the caller then streams the blob.
    ``source`` is closed.  A set ``stop`` flag ends the copy and the check at their next step (:class:`Stopped`)."""
    try:
        # created before the clone or copy: its fstat then covers the whole copy, and a write to the cache blob
        # meanwhile (between the copy's read and the hash's read of the same bytes) refuses the export
        digest = CheckedCopy(source, desc.size, desc.digest, stamps, stop)
        try:
            if clone(source, fd):  # checked as the kernel copy is: a damaged cache blob must not pass on XFS alone
                if os.fstat(fd).st_size != desc.size:
                    raise IntegrityError(f"layer {desc.digest} ({shown}): the cache's copy is not {desc.size} bytes",
                                         "the cache is damaged: remove the model ('ormb rm'), run 'ormb prune', "
                                         "then pull or save it again")
                _check_local(digest, desc, shown)
                return True
            try:
                copied = copy_out(source, 0, fd, desc.size, stop)
            except OSError as exc:
                if exc.errno in WRITE_ERRORS:
                    raise StorageError(f"cannot write {shown}: {exc.strerror}") from None
                copied = -1
            if copied == desc.size:
                _check_local(digest, desc, shown)
                return True
        finally:
            digest.stop()
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        except OSError:
            pass
        return False
    finally:
        os.close(source)


def _copy(source: Readable, out: IO[bytes], shown: str) -> None:
    """Copy with the write in a background thread (a file of one chunk is written at once: a thread
    per small file costs more than it saves); read errors (the layer's fault) pass up unchanged,
    write errors (the disk's) become StorageError."""
    chunk = source.read(CHUNK)
    following = source.read(CHUNK) if chunk else b""
    if not following:
        try:
            write_sliced(out, chunk)
        except OSError as exc:
            raise StorageError(f"cannot write {shown}: {exc.strerror}") from None
        return
    with BackgroundWriter(out) as writer:  # the write overlaps reading, unpacking and hashing the next chunk
        while chunk:
            try:
                writer.write(chunk)
            except OSError as exc:
                raise StorageError(f"cannot write {shown}: {exc.strerror}") from None
            chunk, following = following, (source.read(CHUNK) if following else b"")
        try:
            writer.close()
        except OSError as exc:
            raise StorageError(f"cannot write {shown}: {exc.strerror}") from None
