"""Unpack a tar(+gzip) layer into a directory, safely and all-or-nothing.

Entries are extracted into a staging directory inside the destination while the layer's
bytes are hashed.  Only when every entry passed the checks and the digest matched are the
files moved into place (``os.replace``: an existing file is replaced whole, never left with
stale bytes).  On any failure the staging directory is removed and the destination is as
it was before.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO

import zstandard
from isal import igzip, isal_zlib

from ormb.content.background import BackgroundHasher, BackgroundWriter
from ormb.errors import IntegrityError, StorageError, UnsafeArchiveError
from ormb.oci.descriptor import Descriptor
from ormb.progress import NoProgress, ProgressListener

CHUNK = 1 << 20
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


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


class _HashingReader(_Reader):
    """Reads from ``raw``, hashing and counting every byte, reporting progress."""

    def __init__(self, raw: BinaryIO, desc: Descriptor, progress: ProgressListener, task: str) -> None:
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


@dataclass(frozen=True)
class UnpackedFiles:
    paths: tuple[str, ...]  # entry paths as written below the destination


def _safe_relative(name: str, prefix: str, strip: bool = False) -> PurePosixPath | None:
    """The entry's path below the destination, ``None`` for the root entry; refuses escapes.

    With ``strip`` the ``prefix`` itself is removed (``model/a.onnx`` -> ``a.onnx``).
    """
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


def _within(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


@contextmanager
def staged_directory(dest: Path) -> Iterator[Path]:
    """A staging directory inside ``dest``; its content moves into ``dest`` only if the block succeeds.

    On failure the staging directory goes, and so does ``dest`` if this call created it.
    """
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dest, prefix=".ormb-export-"))
    except OSError as exc:
        raise StorageError(f"cannot create {dest}: {exc.strerror}") from None
    ok = False
    try:
        yield staging
        _move_into_place(staging, dest)
        ok = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not ok and created:
            shutil.rmtree(dest, ignore_errors=True)


def _decompressed(reader: Any, compression: str | None) -> Any:
    if compression == "gzip":
        return igzip.IGzipFile(fileobj=reader, mode="rb")  # type: ignore[no-untyped-call]
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(reader, read_across_frames=True)
    return reader


def extract_tar(
    blob: BinaryIO,
    desc: Descriptor,
    staging: Path,
    *,
    prefix: str = "",
    strip_prefix: bool = False,
    compression: str | None = "gzip",
    progress: ProgressListener | None = None,
) -> list[str]:
    """Extract a tar layer into ``staging``, checking every entry and the layer's digest."""
    progress = progress or NoProgress()
    progress.start(desc.digest, desc.digest.partition(":")[2][:12], desc.size)
    reader = _HashingReader(blob, desc, progress, desc.digest)
    try:
        paths = _extract_all(_decompressed(reader, compression), staging, prefix, strip_prefix)
        reader.drain()
    except StorageError:
        raise
    except (tarfile.TarError, EOFError, OSError, isal_zlib.error, zstandard.ZstdError) as exc:  # type: ignore[misc]
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
    progress.finish(desc.digest)
    return paths


def write_raw(blob: BinaryIO, desc: Descriptor, staging: Path, relative: PurePosixPath, *,
              clone_from: Path | None = None, progress: ProgressListener | None = None,
              compression: str | None = None) -> None:
    """Write a raw (untarred) layer to ``staging/relative``, verifying its digest while writing.

    ``clone_from`` is a verified local copy of the blob (the cache's): where the file system can
    (btrfs, XFS), the file is a reflink clone of it and costs no extra disk; elsewhere it is copied.
    ``compression`` (gzip, zstd: KitOps' ``raw+gzip``/``raw+zstd``) is undone after hashing.
    """
    progress = progress or NoProgress()
    target = staging / relative
    root = os.path.realpath(staging)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc.strerror}") from None
    if not _within(root, os.path.realpath(target.parent)):
        raise UnsafeArchiveError(f"the file path {relative} would be written through a link outside; refusing")
    if target.is_symlink() or target.exists():
        raise UnsafeArchiveError(f"two layers write the file {relative}; refusing")
    progress.start(desc.digest, str(relative), desc.size)
    if clone_from is not None and compression is None and reflink(clone_from, target):
        progress.advance(desc.digest, desc.size)
        progress.finish(desc.digest)
        return
    reader = _HashingReader(blob, desc, progress, desc.digest)
    try:
        try:
            out = open(target, "xb")
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror}") from None
        try:
            with out:
                _copy(_decompressed(_Limited(reader, desc.size), compression), out, target)
        except (OSError, EOFError, isal_zlib.error, zstandard.ZstdError) as exc:  # type: ignore[misc]
            if isinstance(exc, StorageError):
                raise
            reader.drain()  # hash the rest: a corrupt layer is the registry's fault, not the format's
            if reader.digest() != desc.digest:
                raise IntegrityError(f"layer {desc.digest} ({relative}) does not match its digest") from None
            raise UnsafeArchiveError(f"layer {desc.digest} ({relative}) is not valid {compression}: {exc}") from None
        extra = reader.read(1)
    finally:
        reader.close()
    if extra or reader.size != desc.size or reader.digest() != desc.digest:
        raise IntegrityError(f"layer {desc.digest} ({relative}) does not match its digest or size")
    progress.finish(desc.digest)


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


def reflink(source: Path, target: Path) -> bool:
    """Clone ``source`` to the new file ``target`` sharing its blocks; False where unsupported."""
    try:
        with open(source, "rb") as src, open(target, "xb") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        return True
    except OSError:
        target.unlink(missing_ok=True)
        return False


def unpack_layer(
    blob: BinaryIO,
    desc: Descriptor,
    dest: Path,
    *,
    prefix: str = "model/",
    strip_prefix: bool = False,
    gzipped: bool = True,
    progress: ProgressListener | None = None,
) -> UnpackedFiles:
    """Extract the tar layer ``blob`` (described by ``desc``) into ``dest``; see the module docstring."""
    with staged_directory(dest) as staging:
        paths = extract_tar(blob, desc, staging, prefix=prefix, strip_prefix=strip_prefix,
                            compression="gzip" if gzipped else None, progress=progress)
    return UnpackedFiles(tuple(paths))


def _extract_all(source: BinaryIO, staging: Path, prefix: str, strip: bool = False) -> list[str]:
    root = os.path.realpath(staging)
    regular: set[str] = set()
    paths: list[str] = []
    with tarfile.open(fileobj=source, mode="r|", bufsize=CHUNK) as tar:
        for member in tar:
            relative = _safe_relative(member.name, prefix, strip)
            if relative is None:
                continue
            target = staging / relative
            parent = os.path.realpath(target.parent)
            if not _within(root, parent):
                raise UnsafeArchiveError(f"layer entry {member.name!r} would be written through a link outside; refusing")
            try:
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.is_symlink() or target.is_file():
                    target.unlink()
            except OSError as exc:
                raise StorageError(f"cannot write {target}: {exc.strerror}") from None
            if member.isreg():
                extracted = tar.extractfile(member)
                assert extracted is not None
                try:
                    out = open(target, "xb")
                except OSError as exc:
                    raise StorageError(f"cannot write {target}: {exc.strerror}") from None
                with out:
                    _copy(extracted, out, target)
                os.chmod(target, (member.mode & 0o755) | 0o600)
                regular.add(str(relative))
            elif member.issym():
                _check_symlink(member, relative)
                os.symlink(member.linkname, target)
            elif member.islnk():
                link = _safe_relative(member.linkname, prefix, strip)
                if link is None or str(link) not in regular:
                    raise UnsafeArchiveError(
                        f"layer entry {member.name!r} is a hard link to {member.linkname!r}, which is not a file "
                        "extracted before it; refusing to export"
                    )
                os.link(staging / link, target)
                regular.add(str(relative))
            else:
                raise UnsafeArchiveError(
                    f"layer entry {member.name!r} is a device, FIFO or other special file; refusing to export"
                )
            paths.append(str(relative))
    return paths


def _copy(source: IO[bytes] | _Limited, out: IO[bytes], target: Path) -> None:
    """Copy with the write in a background thread; read errors (the layer's fault) pass up unchanged,
    write errors (the disk's) become StorageError."""
    with BackgroundWriter(out) as writer:  # the write overlaps reading, unpacking and hashing the next chunk
        while chunk := source.read(CHUNK):
            try:
                writer.write(chunk)
            except OSError as exc:
                raise StorageError(f"cannot write {target}: {exc.strerror}") from None
        try:
            writer.close()
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror}") from None


def _check_symlink(member: tarfile.TarInfo, relative: PurePosixPath) -> None:
    link = member.linkname
    if link.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(link):
        raise UnsafeArchiveError(f"layer entry {member.name!r} is a symlink to the absolute path {link!r}; refusing")
    resolved = os.path.normpath(os.path.join(str(relative.parent), link))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(
            f"layer entry {member.name!r} is a symlink to {link!r}, outside the export directory; refusing"
        )


def _move_into_place(staging: Path, dest: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(staging):
        relative = Path(dirpath).relative_to(staging)
        for name in dirnames:
            src, dst = Path(dirpath) / name, dest / relative / name
            if src.is_symlink():
                _replace(src, dst)
                continue
            if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
                dst.unlink()
            dst.mkdir(exist_ok=True)
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
        for name in filenames:
            _replace(Path(dirpath) / name, dest / relative / name)


def _replace(src: Path, dst: Path) -> None:
    if dst.is_dir() and not dst.is_symlink():
        raise StorageError(f"cannot export {dst}: a directory of that name is in the way", "move it away first")
    os.replace(src, dst)
