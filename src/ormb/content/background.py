"""A file writer that writes in a thread while the caller reads and hashes the next chunk.

Hashing (hashlib) and writing (the kernel copying into the page cache) both release the GIL,
so on two cores they overlap instead of adding up.  At most ``depth`` chunks wait: memory
stays bounded whatever the file's size.

A file that will be fsynced before it becomes visible (a blob of the cache or of the registry)
is written with ``writeback=True``: every ``WRITEBACK_STEP`` bytes the writer asks the kernel to
start writing them to disk (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which returns at once), so
the disk works while the rest arrives and the final fsync waits for the last few MiB only, not for
the whole file (0.3 s of a 1 GiB pull here).  It changes nothing about durability: the fsync
still decides; where libc lacks the call, nothing is started early.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from typing import IO, Any

_DONE = None


class Stopped(Exception):
    """Work in a thread was told to stop (``threading.Event``): another piece of the same work failed, or the
    user interrupted.  Not an error of its own: whoever set the flag raises the reason."""


def check_stop(stop: threading.Event | None) -> None:
    """Raise :class:`Stopped` if ``stop`` is set (called between chunks of a copy)."""
    if stop is not None and stop.is_set():
        raise Stopped()

# The largest single write(). Measured on the benchmark machine (bench/README.md): writes of 1 MiB or more
# into the page cache ran at 0.5-0.9 GB/s, writes of 64-512 KiB at 4-5 GB/s.
WRITE_SLICE = 256 << 10


WRITEBACK_STEP = 32 << 20
SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start write-out of dirty pages in the range, do not wait


def _load_sync_file_range() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux, or a libc without it
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes of ``fd`` from ``offset`` to disk, without waiting.
    Failures are ignored: this only moves work earlier, the fsync that follows reports what goes wrong."""
    if _SYNC_FILE_RANGE is not None and length > 0:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def write_sliced(file: IO[bytes], data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    for start in range(0, len(view), WRITE_SLICE):
        file.write(view[start : start + WRITE_SLICE])


class BackgroundWriter:
    def __init__(self, file: IO[bytes], depth: int = 4, *, writeback: bool = False) -> None:
        self._file = file
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._writeback = writeback
        self._offset = self._started = file.tell() if writeback else 0
        self._thread = threading.Thread(target=self._run, name="ormb-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is _DONE:
                return
            if self._error is None:
                try:
                    write_sliced(self._file, chunk)
                    if self._writeback:
                        self._offset += len(chunk)
                        if self._offset - self._started >= WRITEBACK_STEP:
                            self._file.flush()
                            start_writeback(self._file.fileno(), self._started, self._offset - self._started)
                            self._started = self._offset
                except BaseException as exc:
                    self._error = exc

    def write(self, chunk: bytes | bytearray | memoryview) -> int:
        if self._error is not None:
            raise self._error
        self._queue.put(bytes(chunk))
        return len(chunk)

    def close(self) -> None:
        """Wait until everything is written; raise the write's error, if any."""
        self._queue.put(_DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(_DONE)  # on an error in the caller: stop, do not raise a second error
        self._thread.join()


class BackgroundHasher:
    """hashlib's update() in a thread, so hashing overlaps reading and unpacking; same results.

    Chunks must not change after they are handed over (bytes, not a reused buffer).
    """

    def __init__(self, hasher: Any, depth: int = 4) -> None:
        self._hasher = hasher
        self.name: str = hasher.name
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="ormb-hasher", daemon=True)
        self._thread.start()
        self._finished = False

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not _DONE:
            self._hasher.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        self.close()
        return str(self._hasher.hexdigest())

    def close(self) -> None:
        """Hash what was handed over and stop the thread; hexdigest() stays available."""
        if not self._finished:
            self._queue.put(_DONE)
            self._thread.join()
            self._finished = True


class FileDigest:
    """The digest of the first ``size`` bytes of the open file ``fd``, computed in a thread while the caller does
    something else with the file (the kernel copies it: see :mod:`ormb.model.unpack`).  The file is read with
    ``pread`` into one reused buffer; ``fd`` must stay open until :meth:`result` or :meth:`stop` returned.  A set
    ``stop`` flag (shared with other work) ends the reading at the next chunk."""

    def __init__(self, fd: int, size: int, algorithm: str, chunk: int = 1 << 20,
                 stop: threading.Event | None = None) -> None:
        import hashlib

        self._fd, self._size, self._chunk, self._told = fd, size, chunk, stop
        self._hasher = hashlib.new(algorithm)
        self._name = algorithm
        self._read = 0
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ormb-verify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import os

        buffer = bytearray(self._chunk)
        view = memoryview(buffer)
        try:
            while self._read < self._size and not self._stop and not (self._told and self._told.is_set()):
                n = os.preadv(self._fd, [view[: min(self._chunk, self._size - self._read)]], self._read)
                if n <= 0:
                    return
                self._hasher.update(view[:n])
                self._read += n
        except BaseException as exc:
            self._error = exc

    def result(self) -> tuple[int, str]:
        """(bytes read, ``algorithm:hex``) once the thread is done; its read error, if any; :class:`Stopped` if the
        ``stop`` flag ended it early."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._read < self._size:
            check_stop(self._told)
        return self._read, f"{self._name}:{self._hasher.hexdigest()}"

    def stop(self) -> None:
        """Stop early (the caller failed) and wait for the thread."""
        self._stop = True
        self._thread.join()
