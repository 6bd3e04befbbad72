"""Unpack layers into a staging tree (:mod:`ormb.model.staging`), checking every entry and byte.

Tar layers are read as a stream while their bytes are hashed; raw layers (one file each) are
cloned from the cache where the file system can, else copied while hashed.  Every file, directory
and link is made through the staging tree, relative to directory descriptors and never through a
link; what a layer may not do (escape, write through a link, hard-link a file it did not write,
special files, names that are no path) is refused with :class:`UnsafeArchiveError`.

Expansion is bounded: a raw layer writes exactly its declared size; a tar layer may unpack to at
most ``max_expand`` bytes (default :func:`expansion_limit`), counting its decompressed bytes and
4 KiB for every entry, and checked before a file is written from the size in its header.

Signatures need the SHA-256 of every file a layer holds: :class:`FileHashes` collects them while
an export writes (``hashes=``), and :func:`hash_tar` reads a tar layer the same checked way without
writing anything (signing a model of the ormb format).
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
from isal import igzip, isal_zlib

from ormb.content.background import BackgroundHasher, BackgroundWriter
from ormb.content.target import Readable
from ormb.errors import IntegrityError, OrmbError, StorageError, UnsafeArchiveError
from ormb.model.staging import Parts, StagingTree
from ormb.oci.descriptor import Descriptor
from ormb.progress import NoProgress, ProgressListener
from ormb.units import human_size

CHUNK = 1 << 20
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")

# Expansion of a tar layer: at most EXPAND_RATIO times its size, and at least MIN_EXPAND, unless the
# user says otherwise (--max-expand / ORMB_MAX_EXPAND).  Model weights compress by 1.1-2x; a layer that
# unpacks to 20 times its size is a dataset of zeros or a bomb.
EXPAND_RATIO = 20
MIN_EXPAND = 1 << 30
ENTRY_COST = 4096  # what an entry costs the disk besides its bytes (inode, directory entry)
MAX_HEADER = 1 << 20  # a PAX or GNU long-name header larger than this is refused before it is read
_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
               tarfile.GNUTYPE_LONGLINK)


def expansion_limit(layer_size: int, max_expand: int | None = None) -> int:
    """How many bytes a tar layer of ``layer_size`` may unpack to."""
    return max_expand if max_expand is not None else max(MIN_EXPAND, EXPAND_RATIO * layer_size)


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
    """Reads from ``raw``, hashing and counting every byte, reporting progress."""

    def __init__(self, raw: Readable, desc: Descriptor, progress: ProgressListener, task: str) -> None:
        self._raw = raw
        self._hasher = BackgroundHasher(hashlib.new(desc.digest.partition(":")[0]))
        self.size = 0
        self._progress = progress
        self._task = task

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._hasher.update(data)
        self.size += len(data)
        self._progress.advance(self._task, len(data))
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def digest(self) -> str:
        return f"{self._hasher.name}:{self._hasher.hexdigest()}"

    def close(self) -> None:
        self._hasher.close()


class _Budget:
    """What a tar layer has unpacked so far (its decompressed bytes, 4 KiB per entry) against its limit."""

    def __init__(self, desc: Descriptor, limit: int) -> None:
        self._desc, self.limit = desc, limit
        self._stream = self._entries = 0

    def _check(self, ahead: int, where: str) -> None:
        if self._stream + self._entries * ENTRY_COST + ahead > self.limit:
            raise UnsafeArchiveError(
                f"layer {self._desc.digest[:19]} ({human_size(self._desc.size)}) expands to more than "
                f"{human_size(self.limit)} (at {where}); refusing",
                "if you trust it, raise the limit: --max-expand SIZE or ORMB_MAX_EXPAND=SIZE, e.g. 500G")

    def read(self, amount: int) -> None:
        self._stream += amount
        self._check(0, "the tar stream")

    def entry(self, size: int, where: str) -> None:
        """One more entry, whose ``size`` bytes are still to come: refused before they are written."""
        self._entries += 1
        self._check(size, where)


class _Bounded:
    """The decompressed stream, charged to the budget as it is read (headers and padding included)."""

    def __init__(self, raw: Any, budget: _Budget) -> None:
        self._raw, self._budget = raw, budget

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._raw.read(n)
        self._budget.read(len(data))
        return data


class _CheckedTarInfo(tarfile.TarInfo):
    """A tar header whose extended (PAX, GNU long name) data must be small: tarfile reads that data into
    memory whole, so a header claiming gigabytes would be a memory bomb."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _CheckedTarInfo:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _META_TYPES and info.size > MAX_HEADER:
            raise UnsafeArchiveError(f"a tar header of the layer carries {human_size(info.size)} of extended data; "
                                     "refusing")
        return info


def _safe_relative(name: str, prefix: str, strip: bool = False) -> PurePosixPath | None:
    """The entry's path below the destination, ``None`` for the root entry; refuses escapes.

    With ``strip`` the ``prefix`` itself is removed (``model/a.onnx`` -> ``a.onnx``).  Backslashes
    count as separators (a Windows-made tar); ``.`` and empty names are dropped.
    """
    if "\0" in name:
        raise UnsafeArchiveError(f"layer entry {name!r} has a NUL character in its name; refusing to export")
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


def _decompressed(reader: Any, compression: str | None) -> Any:
    if compression == "gzip":
        return igzip.IGzipFile(fileobj=reader, mode="rb")  # type: ignore[no-untyped-call]
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(reader, read_across_frames=True)
    return reader


TarVisitor = Callable[[tarfile.TarFile, tarfile.TarInfo, "PurePosixPath"], None]


def _read_tar(blob: Readable, desc: Descriptor, visit: TarVisitor, *, prefix: str, strip_prefix: bool,
              compression: str | None, max_expand: int | None, progress: ProgressListener) -> None:
    """Read a tar layer as a stream, checking the layer's digest and size, every entry's name and the
    expansion budget; ``visit`` gets each entry below the root with its safe relative path."""
    reader = _HashingReader(blob, desc, progress, desc.digest)
    budget = _Budget(desc, expansion_limit(desc.size, max_expand))
    try:
        source = _Bounded(_decompressed(reader, compression), budget)
        with tarfile.open(fileobj=source, mode="r|", bufsize=CHUNK, tarinfo=_CheckedTarInfo) as tar:  # type: ignore[call-overload]
            for member in tar:
                budget.entry(member.size if member.isreg() else 0, member.name)
                relative = _safe_relative(member.name, prefix, strip_prefix)
                if relative is None:
                    continue
                if prefix and not strip_prefix and str(relative) + "/" == prefix and not member.isdir():
                    # ``model/.`` as a file or link: it would replace the model's directory, and a signature
                    # (whose root that directory is) could not name it
                    raise UnsafeArchiveError(f"layer entry {member.name!r} makes {prefix} a file or link; refusing")
                visit(tar, member, relative)
        reader.drain()
    except OrmbError:
        raise
    except RecursionError:
        raise UnsafeArchiveError(f"layer {desc.digest} nests tar headers too deeply; refusing") from None
    except (tarfile.TarError, EOFError, OSError, ValueError, isal_zlib.error, zstandard.ZstdError) as exc:  # type: ignore[misc]
        reader.drain()
        if reader.digest() != desc.digest:
            raise IntegrityError(f"layer {desc.digest} does not match its digest") from None
        raise UnsafeArchiveError(f"layer {desc.digest} is not a valid tar archive: {exc}") from None
    finally:
        reader.close()
    if reader.size != desc.size or reader.digest() != desc.digest:
        raise IntegrityError(
            f"layer {desc.digest} does not match: read {reader.size} bytes with digest {reader.digest()}"
        )


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
    max_expand: int | None = None,
    progress: ProgressListener | None = None,
    hashes: FileHashes | None = None,
) -> list[str]:
    """Extract a tar layer into ``tree`` below ``base``, checking every entry and the layer's digest.

    Returns the entries' paths below ``base`` (after ``strip_prefix``), each once.  With ``hashes``,
    every regular file is hashed while it is written (paths below ``prefix``).
    """
    progress = progress or NoProgress()
    progress.start(desc.digest, desc.digest.partition(":")[2][:12], desc.size)
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
            hasher = _FileHasher(extracted) if hashes is not None else None
            made = _write_file(tree, parts, hasher or extracted, (member.mode & 0o755) | 0o600)
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
              max_expand=max_expand, progress=progress)
    progress.finish(desc.digest)
    return list(paths)


def hash_tar(blob: Readable, desc: Descriptor, *, prefix: str = "", compression: str | None = "gzip",
             max_expand: int | None = None, progress: ProgressListener | None = None) -> FileHashes:
    """The files of a tar layer with their SHA-256, read once as export reads it (the same checks of the
    layer's digest, of entry names and of expansion); nothing is written.

    A hard link counts as its target's content; an entry that export would refuse (a special file, a
    hard link to a file not before it, a path that is a file and a directory) is refused here too.
    """
    progress = progress or NoProgress()
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
            hasher = _FileHasher(extracted)
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

    _read_tar(blob, desc, visit, prefix=prefix, strip_prefix=True, compression=compression,
              max_expand=max_expand, progress=progress)
    clash = next((p for p in sorted(directories) if p in hashes.files or p in hashes.links), None)
    if clash is not None:
        raise UnsafeArchiveError(f"layer {desc.digest[:19]} makes {clash!r} both a file and a directory; refusing")
    return hashes


def _write_file(tree: StagingTree, parts: Parts, source: Readable, mode: int) -> os.stat_result:
    """A new file at ``parts`` (replacing an earlier file or link of that name) with the bytes of ``source``."""
    return _write_to(tree.create_file(parts, replace=True), tree.show(parts), source, mode)


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
              clone_from: Path | None = None, compression: str | None = None, max_expand: int | None = None,
              mode: int | None = None, progress: ProgressListener | None = None, hashes: FileHashes | None = None,
              key: str | None = None) -> None:
    """Write a raw (untarred) layer to ``parts`` of ``tree``: exactly its declared size, verified.

    ``clone_from`` is a verified local copy of the blob (the cache's): where the file system can
    (btrfs, XFS), the file is a reflink clone of it and costs no extra disk; elsewhere it is copied.
    ``compression`` (gzip, zstd: KitOps' ``raw+gzip``/``raw+zstd``) is undone after hashing, bounded
    like a tar layer's expansion.  ``mode``: the file's permission bits (the file metadata's).  A path
    that already exists (another layer's) is refused.  With ``hashes`` the file's SHA-256 is recorded
    under ``key`` (default: ``parts`` joined): for an uncompressed SHA-256 layer it is the layer's
    digest, verified here; otherwise it is computed.
    """
    progress = progress or NoProgress()
    progress.start(desc.digest, "/".join(parts), desc.size)
    algorithm, _, hexpart = desc.digest.partition(":")
    known = compression is None and algorithm == "sha256"
    if hashes is not None and known:
        hashes.file(key or "/".join(parts), hexpart, desc.size)
    fd = tree.create_file(parts, replace=False)
    if clone_from is not None and compression is None and (hashes is None or known) and \
            _clone(clone_from, fd, desc.size):
        try:
            if mode is not None:
                os.fchmod(fd, mode)
        except OSError as exc:
            raise StorageError(f"cannot write {tree.show(parts)}: {exc.strerror}") from None
        finally:
            os.close(fd)
        progress.advance(desc.digest, desc.size)
        progress.finish(desc.digest)
        return
    reader = _HashingReader(blob, desc, progress, desc.digest)
    hasher: _FileHasher | None = None
    try:
        if compression is None:
            source: Readable = _Limited(reader, desc.size)
            hasher = _FileHasher(source) if hashes is not None and not known else None
            _write_to(fd, tree.show(parts), hasher or source, mode)
        else:
            budget = _Budget(desc, expansion_limit(desc.size, max_expand))
            source = _Bounded(_decompressed(_Limited(reader, desc.size), compression), budget)
            hasher = _FileHasher(source) if hashes is not None else None
            try:
                _write_to(fd, tree.show(parts), hasher or source, mode)
            except OrmbError:
                raise
            except (OSError, EOFError, ValueError, isal_zlib.error, zstandard.ZstdError) as exc:  # type: ignore[misc]
                reader.drain()  # hash the rest: a corrupt layer is the registry's fault, not the format's
                if reader.digest() != desc.digest:
                    raise IntegrityError(f"layer {desc.digest} ({'/'.join(parts)}) does not match its digest") from None
                raise UnsafeArchiveError(f"layer {desc.digest} ({'/'.join(parts)}) is not valid {compression}: "
                                         f"{exc}") from None
        extra = reader.read(1)
    finally:
        reader.close()
    if extra or reader.size != desc.size or reader.digest() != desc.digest:
        raise IntegrityError(f"layer {desc.digest} ({'/'.join(parts)}) does not match its digest or size")
    if hashes is not None and hasher is not None:
        hashes.file(key or "/".join(parts), hasher.hexdigest(), hasher.size)
    progress.finish(desc.digest)


def hash_raw(blob: Readable, desc: Descriptor, *, compression: str | None = None,
             max_expand: int | None = None) -> tuple[str, int]:
    """(SHA-256 hex, size) of the file a raw layer holds, read as :func:`write_raw` reads it (the layer's
    digest and size checked, ``compression`` undone within the expansion budget); nothing is written."""
    reader = _HashingReader(blob, desc, NoProgress(), desc.digest)
    try:
        source: Readable = _Limited(reader, desc.size)
        if compression is not None:
            source = _Bounded(_decompressed(source, compression), _Budget(desc, expansion_limit(desc.size, max_expand)))
        hasher = _FileHasher(source)
        try:
            while hasher.read(CHUNK):
                pass
        except OrmbError:
            raise
        except (OSError, EOFError, ValueError, isal_zlib.error, zstandard.ZstdError) as exc:  # type: ignore[misc]
            reader.drain()
            if reader.digest() != desc.digest:
                raise IntegrityError(f"layer {desc.digest} does not match its digest") from None
            raise UnsafeArchiveError(f"layer {desc.digest} is not valid {compression}: {exc}") from None
        extra = reader.read(1)
    finally:
        reader.close()
    if extra or reader.size != desc.size or reader.digest() != desc.digest:
        raise IntegrityError(f"layer {desc.digest} does not match its digest or size")
    return hasher.hexdigest(), hasher.size


class _Limited(_Reader):
    """At most ``limit`` bytes of ``raw``."""

    def __init__(self, raw: _HashingReader, limit: int) -> None:
        self._raw, self._left = raw, limit

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        data = self._raw.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(data)
        return data


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
    """Copy with the write in a background thread; read errors (the layer's fault) pass up unchanged,
    write errors (the disk's) become StorageError."""
    with BackgroundWriter(out) as writer:  # the write overlaps reading, unpacking and hashing the next chunk
        while chunk := source.read(CHUNK):
            try:
                writer.write(chunk)
            except OSError as exc:
                raise StorageError(f"cannot write {shown}: {exc.strerror}") from None
        try:
            writer.close()
        except OSError as exc:
            raise StorageError(f"cannot write {shown}: {exc.strerror}") from None
