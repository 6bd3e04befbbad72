"""Copies between two open files that the kernel makes: a reflink where the file system can, else copy_file_range.

``cp`` copies this way (coreutils 9 tries ``FICLONE``, then ``copy_file_range``): the bytes never pass
through Python.  On btrfs and XFS a reflink shares the source's blocks and costs no disk and no time;
on ext4 and tmpfs ``copy_file_range`` copies page cache to page cache in the kernel.  Where neither works
(another file system than the destination's on older kernels, a file system without either) the copy
falls back to ``read``/``write``.

:class:`KernelCopy` runs a copy in a thread while the caller reads what is done (to hash it, see
:meth:`ormb.content.layout.OCILayout.ingest_copy`); :func:`copy_range` copies in the caller's thread.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading

from ormb.content.background import WRITEBACK_STEP, check_stop, start_writeback

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
STEP = 8 << 20  # bytes per copy_file_range call: what a reader of the copy waits for at most
_FALLBACK_CHUNK = 1 << 20
# copy_file_range cannot do this pair of files (another file system, an old kernel, a special file): copy by hand
_UNSUPPORTED = frozenset({errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF, errno.ETXTBSY})
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})  # the destination's fault


class CopyEnded(Exception):
    """The source ended after ``copied`` bytes, before the size asked for."""

    def __init__(self, copied: int) -> None:
        super().__init__(f"the source ended after {copied} bytes")
        self.copied = copied


def clone(source: int, dest: int) -> bool:
    """Make the empty file ``dest`` a reflink of all of ``source``; False where the file system cannot."""
    try:
        fcntl.ioctl(dest, FICLONE, source)
    except OSError:
        try:
            os.ftruncate(dest, 0)  # whatever a failed clone left
        except OSError:
            pass
        return False
    return True


def copy_range(source: int, dest: int, offset: int, count: int) -> int:
    """Copy ``count`` bytes at ``offset`` of ``source`` to the same offset of ``dest`` (copy_file_range, else
    pread/pwrite); returns what was copied, less than ``count`` only when the source ends first."""
    done = 0
    kernel = True
    while done < count:
        want = min(count - done, STEP)
        if kernel:
            try:
                n = os.copy_file_range(source, dest, want, offset + done, offset + done)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                kernel = False
                continue
        else:
            data = os.pread(source, min(want, _FALLBACK_CHUNK), offset + done)
            n = os.pwrite(dest, data, offset + done) if data else 0
            if data and n != len(data):  # a short write of a regular file: the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if n == 0:
            break
        done += n
    return done


def copy_out(source: int, offset: int, dest: int, count: int, stop: threading.Event | None = None) -> int:
    """Append ``count`` bytes at ``offset`` of ``source`` to ``dest`` at its file position (which moves on):
    copy_file_range, else sendfile (file to file, another file system too), else pread/write.  Returns what
    was copied, less than ``count`` only when the source ends first.  A set ``stop`` flag raises
    :class:`~ormb.content.background.Stopped` before the next ``STEP``."""
    done = 0
    method = 0  # 0: copy_file_range, 1: sendfile, 2: by hand
    while done < count:
        check_stop(stop)
        want = min(count - done, STEP)
        try:
            if method == 0:
                n = os.copy_file_range(source, dest, want, offset + done)
            elif method == 1:
                n = os.sendfile(dest, source, offset + done, want)
            else:
                data = os.pread(source, min(want, _FALLBACK_CHUNK), offset + done)
                n = os.write(dest, data) if data else 0
                if data and n != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            if method < 2 and exc.errno in _UNSUPPORTED:
                method += 1
                continue
            raise
        if n == 0:
            break
        done += n
    return done


class KernelCopy:
    """Copies ``size`` bytes of ``source`` into the empty file ``dest`` (both from offset 0) in a thread:
    a reflink when the file system allows, else :func:`copy_range` in ``STEP`` pieces, starting each
    piece's write-back (``writeback``: ``dest`` is fsynced before it becomes visible).  :meth:`ready`
    says how much is copied; small files are copied at once, without a thread.  Errors come back from
    :meth:`ready` and :meth:`join`; :class:`CopyEnded` when the source holds fewer than ``size`` bytes."""

    def __init__(self, source: int, dest: int, size: int, *, writeback: bool = True, reflink: bool = True) -> None:
        self._source, self._dest, self._size = source, dest, size
        self._writeback, self._reflink = writeback, reflink
        self._copied = 0
        self._done = False
        self._error: BaseException | None = None
        self._stop = False
        self._condition = threading.Condition()
        self.cloned = False
        self._thread: threading.Thread | None = None
        if size <= STEP:
            self._run()
        else:
            self._thread = threading.Thread(target=self._run, name="ormb-copy", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            if self._reflink and self._size and clone(self._source, self._dest):
                self.cloned = True
                self._advance(self._size)
                return
            started = 0
            while self._copied < self._size and not self._stop:
                want = min(STEP, self._size - self._copied)
                n = copy_range(self._source, self._dest, self._copied, want)
                self._advance(n)
                if n < want:
                    raise CopyEnded(self._copied)
                if self._writeback and self._copied - started >= WRITEBACK_STEP:
                    start_writeback(self._dest, started, self._copied - started)
                    started = self._copied
        except BaseException as exc:
            with self._condition:
                self._error = exc
        finally:
            with self._condition:
                self._done = True
                self._condition.notify_all()

    def _advance(self, n: int) -> None:
        with self._condition:
            self._copied += n
            self._condition.notify_all()

    def ready(self, beyond: int) -> int:
        """Wait until more than ``beyond`` bytes are copied (or the copy ended); return how many are."""
        with self._condition:
            while self._copied <= beyond and not self._done:
                self._condition.wait()
            if self._copied <= beyond and self._error is not None:
                raise self._error
            return self._copied

    def join(self) -> None:
        """Wait for the end of the copy; raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """Stop after the piece under way and wait (on an error of the reader)."""
        self._stop = True
        if self._thread is not None:
            self._thread.join()
