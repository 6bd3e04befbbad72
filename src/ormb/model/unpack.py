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
(one tar reader, :func:`_read_tar`, with the same bounds) without writing anything.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import zstandard
from isal import igzip

from ormb.content.background import BackgroundHasher, BackgroundWriter, write_sliced
from ormb.content.target import Readable
from ormb.errors import IntegrityError, OrmbError, StorageError, UnsafeArchiveError
from ormb.model.budget import ExpansionBudget
from ormb.model.staging import Parts, StagingTree
from ormb.model.tarheaders import CheckedTarInfo
from ormb.oci.descriptor import Descriptor
from ormb.progress import NoProgress, ProgressListener

CHUNK = 1 << 20
TAR_BUFFER = 64 << 10  # tarfile's stream buffer: it copies what is left of it on every header read
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass
class FileHashes:
    """The SHA-256 (hex) and size of every regular file a layer holds, by its path below the layer's
    prefix (``model/`` of the ormb format is not part of it), as the last entry of each path left it;
    and the paths that are symbolic links (a signature covers regular files only)."""

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


class _Reader:
    """``readinto`` and ``readable`` over ``read``, for the decompressors that ask for them."""

    def read(self, n: int = -1) -> bytes:
        raise NotImplementedError

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class _FileHasher(_Reader):
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


class _HashingReader(_Reader):
    """Reads at most the declared size of ``raw``, hashing and counting every byte, reporting progress,
    and crediting the budget (for layers whose unpacked bytes are charged)."""

    def __init__(self, raw: Readable, desc: Descriptor, progress: ProgressListener, task: str,
                 budget: ExpansionBudget | None = None) -> None:
        self._raw = raw
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
        data = self._raw.read(left if n < 0 else min(n, left))
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


class _Bounded:
    """The decompressed stream of a layer, charged to the budget as it is read (headers and padding
    included); a failure of the decompressor is the layer's (:class:`_LayerError`)."""

    def __init__(self, raw: Any, budget: ExpansionBudget) -> None:
        self._raw, self._budget = raw, budget
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        try:
            data: bytes = self._raw.read(n)
        except OrmbError:
            raise
        except Exception as exc:
            raise _LayerError() from exc
        self.total += len(data)
        self._budget.stream(self.total)
        return data


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
    the caller counts what it reads (export through its budget; the catalog's listings too)."""
    if compression == "gzip":
        return igzip.IGzipFile(fileobj=reader, mode="rb")  # type: ignore[no-untyped-call]
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(reader, read_across_frames=True)
    return reader


def _layer_name(desc: Descriptor, path: str | None = None) -> str:
    return f"layer {desc.digest[:19]}" + (f" ({path})" if path else "")


TarVisitor = Callable[[tarfile.TarFile, tarfile.TarInfo, PurePosixPath], None]


def _read_tar(blob: Readable, desc: Descriptor, visit: TarVisitor, *, prefix: str, strip_prefix: bool,
              compression: str | None, budget: ExpansionBudget, progress: ProgressListener) -> None:
    """Read a tar layer as a stream with every bound of the module doc, checking the layer's digest and
    size and every entry's name; ``visit`` gets each entry below the root with its safe relative path."""
    reader = _HashingReader(blob, desc, progress, desc.digest, budget)
    try:
        try:
            with _open_tar(_Bounded(decompressed(reader, compression), budget)) as tar:
                while (member := _next(tar)) is not None:
                    budget.entry(member.name)
                    budget.ahead(tar.offset, desc.size - reader.size, member.name)
                    relative = _safe_relative(member.name, prefix, strip_prefix)
                    if relative is None:
                        continue
                    if prefix and not strip_prefix and str(relative) + "/" == prefix and not member.isdir():
                        # ``model/.`` as a file or link: it would replace the model's directory, and a
                        # signature (whose root that directory is) could not name it
                        raise UnsafeArchiveError(f"layer entry {member.name!r} makes {prefix} a file or link; "
                                                 "refusing")
                    visit(tar, member, relative)
            reader.drain()
        except _LayerError as wrapped:
            cause = wrapped.__cause__
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


def _hash_key(relative: PurePosixPath, prefix: str, stripped: bool) -> str:
    """The path a signature names for an entry: below the prefix (``model/``), whether or not export strips it."""
    path = str(relative)
    return path[len(prefix):] if prefix and not stripped else path


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
    hashes: FileHashes | None = None,
) -> list[str]:
    """Extract a tar layer into ``tree`` below ``base``, checking every entry and the layer's digest;
    the bytes it unpacks to are charged to ``tree.budget``.

    Returns the entries' paths below ``base`` (after ``strip_prefix``), each once.  With ``hashes``,
    every regular file is hashed while it is written (paths below ``prefix``).
    """
    progress = progress or NoProgress()
    progress.start(desc.digest, desc.digest.partition(":")[2][:12], desc.size)
    tree.budget.start_layer(_layer_name(desc))
    tree.begin_layer(replaceable=True)
    inodes: set[tuple[int, int]] = set()  # the regular files this layer wrote: what a hard link may name
    paths: dict[str, None] = {}

    def visit(tar: tarfile.TarFile, member: tarfile.TarInfo, relative: PurePosixPath) -> None:
        parts = base + relative.parts
        key = _hash_key(relative, prefix, strip_prefix)
        if member.isdir():
            tree.directory(parts)
            return
        if member.isreg():
            if member.issparse():
                raise UnsafeArchiveError(f"layer entry {member.name!r} is a sparse file; refusing to export")
            extracted = tar.extractfile(member)
            assert extracted is not None
            content: Readable = _Entry(extracted)
            hasher = _FileHasher(content) if hashes is not None else None
            fd = tree.create_file(parts)
            made = _write_to(fd, tree.show(parts), hasher or content, (member.mode & 0o755) | 0o600)
            inodes.add((made.st_dev, made.st_ino))
            if hashes is not None and hasher is not None:
                hashes.file(key, hasher.hexdigest(), hasher.size)
        elif member.issym():
            tree.symlink(parts, member.linkname)
            if hashes is not None:
                hashes.link(key)
        elif member.islnk():
            link = _safe_relative(member.linkname, prefix, strip_prefix)
            if link is None:
                raise UnsafeArchiveError(f"layer entry {member.name!r} is a hard link to the root; refusing")
            tree.hard_link(parts, base + link.parts, inodes)
            if hashes is not None:
                target = hashes.files.get(_hash_key(link, prefix, strip_prefix))
                if target is None:  # hard_link() refused anything but a file this layer wrote: unreachable
                    raise UnsafeArchiveError(f"layer entry {member.name!r} is a hard link to no file; refusing")
                hashes.file(key, *target)
        else:
            raise UnsafeArchiveError(
                f"layer entry {member.name!r} is a device, FIFO or other special file; refusing to export"
            )
        paths[str(relative)] = None

    _read_tar(blob, desc, visit, prefix=prefix, strip_prefix=strip_prefix, compression=compression,
              budget=tree.budget, progress=progress)
    progress.finish(desc.digest)
    return list(paths)


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
    hashes = FileHashes()
    directories: set[str] = set()

    def visit(tar: tarfile.TarFile, member: tarfile.TarInfo, relative: PurePosixPath) -> None:
        key = _hash_key(relative, prefix, True)
        for parent in relative.parents:
            if parent.parts:
                directories.add(_hash_key(parent, prefix, True))
        if member.isdir():
            directories.add(key)
        elif member.isreg():
            if member.issparse():
                raise UnsafeArchiveError(f"layer entry {member.name!r} is a sparse file; refusing")
            extracted = tar.extractfile(member)
            assert extracted is not None
            hasher = _FileHasher(_Entry(extracted))
            while hasher.read(CHUNK):
                pass
            hashes.file(key, hasher.hexdigest(), hasher.size)
        elif member.issym():
            hashes.link(key)
        elif member.islnk():
            link = _safe_relative(member.linkname, prefix, True)
            target = hashes.files.get(str(link)) if link is not None else None
            if target is None:
                raise UnsafeArchiveError(f"layer entry {member.name!r} is a hard link to {member.linkname!r}, "
                                         "which is not a file written before it in the same layer; refusing")
            hashes.file(key, *target)
        else:
            raise UnsafeArchiveError(f"layer entry {member.name!r} is a device, FIFO or other special file; refusing")

    _read_tar(blob, desc, visit, prefix=prefix, strip_prefix=True, compression=compression, budget=budget,
              progress=progress)
    clash = next((p for p in sorted(directories) if p in hashes.files or p in hashes.links), None)
    if clash is not None:
        raise UnsafeArchiveError(f"layer {desc.digest[:19]} makes {clash!r} both a file and a directory; refusing")
    return hashes


def _next(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    """The next entry; tarfile's list of the entries read so far is emptied (it would keep them all)."""
    try:
        member = tar.next()
    except (OrmbError, _LayerError):
        raise
    except Exception as exc:
        raise _LayerError() from exc
    tar.members.clear()  # type: ignore[attr-defined]
    return member


class _Entry(_Reader):
    """A regular entry's bytes; whatever the tar reader raises is the layer's fault."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw

    def read(self, n: int = -1) -> bytes:
        try:
            return self._raw.read(n)
        except (OrmbError, _LayerError):
            raise
        except Exception as exc:
            raise _LayerError() from exc


def _open_tar(source: _Bounded) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=source, mode="r|", bufsize=TAR_BUFFER, tarinfo=CheckedTarInfo)  # type: ignore[call-overload,no-any-return]
    except (OrmbError, _LayerError):
        raise
    except Exception as exc:
        raise _LayerError() from exc


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


def write_raw(blob: Readable, desc: Descriptor, tree: StagingTree, parts: Parts, *,
              clone_from: Path | None = None, compression: str | None = None,
              mode: int | None = None, progress: ProgressListener | None = None,
              hashes: FileHashes | None = None, key: str | None = None) -> None:
    """Write a raw (untarred) layer to ``parts`` of ``tree``: exactly its declared size, verified.

    ``clone_from`` is a verified local copy of the blob (the cache's): where the file system can
    (btrfs, XFS), the file is a reflink clone of it and costs no extra disk; elsewhere it is copied.
    ``compression`` (gzip, zstd: KitOps' ``raw+gzip``/``raw+zstd``) is undone after hashing, charged
    to the budget like a tar layer.  ``mode``: the file's permission bits (the file metadata's).  A path
    that already exists (another layer's) is refused.  With ``hashes`` the file's SHA-256 is recorded
    under ``key`` (default: ``parts`` joined): for an uncompressed SHA-256 layer it is the layer's
    digest, verified here; otherwise it is computed while written.
    """
    progress = progress or NoProgress()
    shown = "/".join(parts)
    progress.start(desc.digest, shown, desc.size)
    budget = tree.budget
    budget.start_layer(_layer_name(desc, shown))
    tree.begin_layer(replaceable=False)
    budget.entry(shown)
    algorithm, _, hexpart = desc.digest.partition(":")
    known = compression is None and algorithm == "sha256"  # the file's SHA-256 is the layer's digest
    fd = tree.create_file(parts)
    if clone_from is not None and compression is None and (hashes is None or known) and \
            _clone(clone_from, fd, desc.size):
        try:
            if mode is not None:
                os.fchmod(fd, mode)
        except OSError as exc:
            raise StorageError(f"cannot write {tree.show(parts)}: {exc.strerror}") from None
        finally:
            os.close(fd)
        if hashes is not None:
            hashes.file(key or shown, hexpart, desc.size)
        progress.advance(desc.digest, desc.size)
        progress.finish(desc.digest)
        return
    reader = _HashingReader(blob, desc, progress, desc.digest, budget if compression else None)
    hasher: _FileHasher | None = None
    try:
        if compression is None:
            hasher = _FileHasher(reader) if hashes is not None and not known else None
            _write_to(fd, tree.show(parts), hasher or reader, mode)
        else:
            source: Readable = _Bounded(decompressed(reader, compression), budget)
            hasher = _FileHasher(source) if hashes is not None else None
            try:
                _write_to(fd, tree.show(parts), hasher or source, mode)
            except _LayerError as wrapped:
                reader.drain()  # hash the rest: a corrupt layer is the registry's fault, not the format's
                if reader.digest() != desc.digest:
                    raise IntegrityError(f"layer {desc.digest} ({shown}) does not match its digest") from None
                cause = wrapped.__cause__
                raise UnsafeArchiveError(f"layer {desc.digest} ({shown}) is not valid {compression}: "
                                         f"{type(cause).__name__}: {cause}") from None
        reader.verify(blob, f"layer {desc.digest} ({shown})")
    finally:
        reader.close()
    if hashes is not None:
        if hasher is not None:
            hashes.file(key or shown, hasher.hexdigest(), hasher.size)
        else:
            hashes.file(key or shown, hexpart, desc.size)
    progress.finish(desc.digest)


def hash_raw(blob: Readable, desc: Descriptor, *, compression: str | None = None,
             max_expand: int | None = None) -> tuple[str, int]:
    """(SHA-256 hex, size) of the file a raw layer holds, read as :func:`write_raw` reads it (the layer's
    digest and size checked, ``compression`` undone within an expansion budget); nothing is written."""
    budget = ExpansionBudget(max_expand)
    budget.start_layer(_layer_name(desc))
    reader = _HashingReader(blob, desc, NoProgress(), desc.digest, budget if compression else None)
    try:
        source: Readable = reader if compression is None else _Bounded(decompressed(reader, compression), budget)
        hasher = _FileHasher(source)
        try:
            while hasher.read(CHUNK):
                pass
        except _LayerError as wrapped:
            reader.drain()
            if reader.digest() != desc.digest:
                raise IntegrityError(f"layer {desc.digest} does not match its digest") from None
            cause = wrapped.__cause__
            raise UnsafeArchiveError(f"layer {desc.digest} is not valid {compression}: "
                                     f"{type(cause).__name__}: {cause}") from None
        reader.verify(blob, f"layer {desc.digest}")
    finally:
        reader.close()
    return hasher.hexdigest(), hasher.size


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def _clone(source: Path, fd: int, size: int) -> bool:
    """Make the new, empty file ``fd`` a clone of ``source`` sharing its blocks.  False where the file
    system cannot, or where ``source`` is not ``size`` bytes: the caller then copies and verifies."""
    try:
        with open(source, "rb") as src:
            if os.fstat(src.fileno()).st_size != size:
                return False
            fcntl.ioctl(fd, FICLONE, src.fileno())
        return True
    except OSError:
        try:
            os.ftruncate(fd, 0)  # whatever a failed clone left
        except OSError:
            pass
        return False


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
