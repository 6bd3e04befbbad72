"""Verified stamps: a cache blob's identity on disk, recorded when its bytes were last hashed and matched.

The technique of git's index, Bazel's digest cache and ccache.  A blob enters the cache only after its
bytes were hashed and matched its digest; at that moment the layout records, for the file as installed,
``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` and the digest.  A reader that would re-hash a
cache blob only to check it (export) fstat()s its open file instead: a stamp of the same digest that
matches exactly says the file was verified and not written since, because every write, truncate,
punched hole, link, chmod or replacement changes the inode's ctime or the inode itself, and no
unprivileged user can set ctime.  Root and a flipped bit on the disk are outside what a stamp catches:
``ormb check`` re-hashes every blob and never reads a stamp.

::

    <layout>/.stamps/                 0700
      sha256/<hex>                    0600, one JSON object: {"digest", "dev", "ino", "size", "mtime_ns", "ctime_ns"}
      sha256/.<hex>.<random>.tmp      a stamp being written (renamed over the stamp when complete)

A stamp that is missing, unreadable, not a regular file of this user, larger than :data:`MAX_STAMP`,
malformed, of another digest, or that differs in any field is no stamp: the blob is hashed as before.
Nothing here raises on a bad stamp or a failed write: a stamp can only save work, never cause an error.

:class:`CheckedCopy` is the one place a reader decides between trusting a stamp and hashing
(:class:`~ormb.content.background.FileDigest`); after a hash that matched it records a stamp from an fstat
taken before the hash began, only if an fstat after the hash is identical and the file's last change is
older than :data:`RACY_NS` (git's rule for "racily clean" entries: a change in the same clock tick as the
fstat could keep the same ctime where timestamps are coarse).  The stamp made at ingest is taken of the file
just installed, by the process that wrote and hashed it (see docs/security.md for what that leaves).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

from ormb.content.background import FileDigest
from ormb.oci.digest import split_digest
from ormb.oci.grammar import is_digest

MAX_STAMP = 512  # bytes: a stamp is about 180
# A file whose ctime is this recent when its hash begins is hashed but not stamped ("racy git"): where the file
# system's clock ticks coarsely, a write in the same tick as the last change would keep the same ctime.
RACY_NS = 1_000_000_000
STAMP_DIR = ".stamps"
_FIELDS = ("dev", "ino", "size", "mtime_ns", "ctime_ns")


def identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What a stamp records of a file: device, inode, size, mtime and ctime (ns)."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class StampStore:
    """The stamps of one layout's blobs (see the module's docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, digest: str) -> Path:
        algorithm, hexpart = split_digest(digest)
        return self.directory / algorithm / hexpart

    def matches(self, digest: str, st: os.stat_result) -> bool:
        """Whether a stamp of ``digest`` exists and records exactly the file ``st`` describes."""
        if not stat.S_ISREG(st.st_mode):
            return False
        recorded = self._read(digest)
        return recorded is not None and recorded == identity(st)

    def _read(self, digest: str) -> tuple[int, ...] | None:
        try:
            path = self.path(digest)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ValueError):
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > MAX_STAMP:
                return None
            data = os.read(fd, MAX_STAMP + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(data) > MAX_STAMP:
            return None
        try:
            record = json.loads(data)
        except (ValueError, RecursionError):
            return None
        if not isinstance(record, dict) or record.get("digest") != digest:
            return None
        values = tuple(record.get(name) for name in _FIELDS)
        if not all(type(v) is int and v >= 0 for v in values):  # not bool, not float
            return None
        return values  # type: ignore[return-value]

    def record(self, digest: str, st: os.stat_result) -> None:
        """Record that the file ``st`` describes holds the bytes of ``digest`` (the caller verified them).
        Written whole or not at all; a failure (full disk, read-only cache) records nothing and is not an error."""
        if not is_digest(digest) or not stat.S_ISREG(st.st_mode) or not writes_back(st.st_dev):
            return
        target = self.path(digest)
        data = json.dumps({"digest": digest, **dict(zip(_FIELDS, identity(st), strict=True))}).encode()
        try:
            _private_dir(self.directory)
            _private_dir(target.parent)
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        except OSError:
            return
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), 0o600)
                file.write(data)
            os.replace(name, target)  # no fsync: a stamp lost or torn in a crash is no stamp, and costs one hash
        except OSError:
            with suppress(OSError):
                os.unlink(name)

    def remove(self, digest: str) -> None:
        """Forget the stamp of ``digest`` (its blob is being deleted); a missing stamp is fine."""
        with suppress(OSError, ValueError):
            self.path(digest).unlink()

    def clear_orphans(self, blobs: set[str]) -> int:
        """Remove every entry of the stamp directory that is not the stamp of a blob in ``blobs`` (stamps of
        deleted blobs, temporary files of killed writers, anything else); returns how many went."""
        removed = 0
        for path in self._entries():
            digest = f"{path.parent.name}:{path.name}"
            if is_digest(digest) and digest in blobs and not path.is_symlink() and path.is_file():
                continue
            with suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    continue  # only what is inside an algorithm's directory is ours to judge
                path.unlink()
                removed += 1
        return removed

    def _entries(self) -> Iterator[Path]:
        try:
            if self.directory.is_symlink():  # not made by ormb: nothing it points at is judged or removed
                return
            algorithms = sorted(self.directory.iterdir())
        except OSError:
            return
        for algorithm in algorithms:
            if algorithm.is_symlink() or not algorithm.is_dir():
                with suppress(OSError):
                    algorithm.unlink()
                continue
            try:
                yield from sorted(algorithm.iterdir())
            except OSError:
                continue


# File systems whose pages are never written back (tmpfs: a cache under a RAM-backed /tmp or /dev/shm): a write
# through a shared mapping there moves no ctime at all (no write fault is taken to track dirty pages), so no
# stamp can vouch for a file on them: stamps are neither recorded nor trusted there, every export hashes.
# Only local disk file systems are trusted to keep ctime as this kernel sees every write: not tmpfs (above), not a
# network or FUSE file system (another machine's write reaches this one's fstat only after its attribute cache).
_LOCAL_DISK = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "bcachefs", "jfs", "reiserfs", "zfs",
                         "overlay"})
_writeback_by_device: dict[int, bool] = {}


def writes_back(device: int) -> bool:
    """Whether stamps hold on the file system of ``device`` (an ``st_dev``): a local disk file system, by
    /proc/self/mountinfo's type for the device; anything else or unknown (no /proc) counts as no."""
    known = _writeback_by_device.get(device)
    if known is not None:
        return known
    wanted = f"{os.major(device)}:{os.minor(device)}"
    answer = False
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mountinfo:
            for line in mountinfo:
                fields = line.split()
                if len(fields) > 2 and fields[2] == wanted and "-" in fields:
                    kind = fields[fields.index("-") + 1] if fields.index("-") + 1 < len(fields) else ""
                    answer = kind in _LOCAL_DISK
                    break
    except OSError:
        pass
    _writeback_by_device[device] = answer
    return answer


def _private_dir(path: Path) -> None:
    """``path`` as a directory of this user only its owner may enter (0700 whatever the umask); an existing one
    that is a symbolic link or another user's is an OSError (no stamp is written there)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise OSError(f"{path} is not a directory of this user")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


class CheckedCopy:
    """Whether the open cache blob ``fd`` holds the ``size`` bytes of ``digest``, decided while the caller copies
    it: a matching stamp in ``stamps`` vouches for it (nothing is read), else a thread hashes it
    (:class:`~ormb.content.background.FileDigest`) and, if it matched and the file did not change meanwhile, a
    stamp is recorded.  ``stamps=None`` always hashes and records nothing (a signature-verified export).

    :meth:`result` returns ``(size, digest)`` as :class:`FileDigest` does; a file that changed (its fstat) between
    this object's creation and :meth:`result` reads as size -1, stamped or hashed: the caller's copy and the hash
    are separate reads, and a write between them could leave the copy holding bytes the hash never saw.  Create
    it before the copy begins (a reflink clone included)."""

    def __init__(self, fd: int, size: int, digest: str, stamps: StampStore | None,
                 stop: threading.Event | None = None) -> None:
        self._fd, self._size, self._digest, self._stamps = fd, size, digest, stamps
        self._before: os.stat_result | None = None
        self._hash: FileDigest | None = None
        self._now = time.time_ns()  # before the fstat: the file system's coarse clock is never ahead of it
        try:  # taken with or without stamps: the hash and the caller's copy are two reads of the file, and only
            self._before = os.fstat(fd)  # an unchanged file guarantees that both saw the same bytes
        except OSError:
            self._before = None
        if stamps is not None and self._before is not None and not writes_back(self._before.st_dev):
            stamps = self._stamps = None  # tmpfs, NFS, FUSE...: a stamp is neither trusted nor recorded (see writes_back)
        if stamps is not None and self._before is not None and self._before.st_size == size \
                and stamps.matches(digest, self._before):
            self.trusted = True
            return
        self.trusted = False
        if self._stamps is not None:
            # A page dirtied through a shared writable mapping takes further writes without a fault, and so without
            # a new ctime, until it is written back: written back now (which write-protects it in every mapping),
            # each later write faults and moves ctime, and the fstat the stamp is recorded from comes after.
            try:
                os.fdatasync(fd)
                self._before = os.fstat(fd)
            except OSError:
                self._stamps = None  # hashed all the same, but not stamped
        self._hash = FileDigest(fd, size, digest.partition(":")[0], stop=stop)

    def result(self) -> tuple[int, str]:
        if self._hash is None:  # trusted: still so now the copy is done?
            return (self._size, self._digest) if self._unchanged() else (-1, "the stamped file changed")
        read, actual = self._hash.result()
        if not self._unchanged():  # written while hashed and copied: the copy may hold bytes the hash never saw
            return -1, "the cache's copy changed while it was read"
        if self._stamps is not None and read == self._size and actual == self._digest \
                and self._before is not None and self._now - self._before.st_ctime_ns >= RACY_NS:
            self._stamps.record(self._digest, self._before)
        return read, actual

    def _unchanged(self) -> bool:
        try:
            after = os.fstat(self._fd)
        except OSError:
            return False
        return self._before is not None and identity(after) == identity(self._before)

    def stop(self) -> None:
        if self._hash is not None:
            self._hash.stop()
