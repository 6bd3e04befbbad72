"""The content-addressed write, one helper for the client cache and the embedded registry.

A blob is written to a temporary file beside the store, hashed while written, verified by the
caller, flushed and fsynced, then renamed into place: a reader never sees a half-written blob,
and a crash leaves at most a temporary file that nothing points at.

    with staged_file(ingest_dir, "blob-") as (file, path):
        ...write and hash...
        install_file(file, path, target)        # fsync + rename; the temporary name is gone
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import BinaryIO


@contextmanager
def staged_file(directory: Path, prefix: str, mode: int = 0o644,
                errors: Callable[[], AbstractContextManager[None]] = nullcontext) -> Iterator[tuple[BinaryIO, Path]]:
    """A new temporary file in ``directory`` (same filesystem as the store); removed on exit unless
    :func:`install_file` renamed it.  ``errors`` wraps this helper's own file operations (creating,
    closing), so a caller can translate a full disk into its own error."""
    with errors():
        fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".partial")
    path = Path(name)
    file = os.fdopen(fd, "w+b")
    try:
        os.fchmod(fd, mode)
        yield file, path
    except BaseException:
        with suppress(OSError):  # the error on the way out is the one to report
            file.close()
        raise
    else:
        with errors():  # close() flushes: a full disk may show only now
            file.close()
    finally:
        path.unlink(missing_ok=True)


def install_file(file: BinaryIO | None, path: Path, target: Path) -> None:
    """Make the verified bytes at ``path`` durable, then atomically visible as ``target``.

    ``file`` is the open file the bytes were written through (flushed here), or None when the
    caller closed it.  An existing ``target`` is replaced: the caller decides whether an
    existing file may be trusted instead (the cache trusts its own blobs; the registry trusts
    only files its database recorded as verified).
    """
    if file is not None:
        file.flush()
        os.fsync(file.fileno())
    else:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
