"""Writers that produce standard gzip streams.

:class:`StoredGzipWriter` emits deflate *stored* blocks: any gzip reader (the original ormb,
Harbor, ``tar xz``) reads it, its bytes depend only on the input on every machine, and it
runs at the speed of CRC-32.  Real compressors (zlib, ISA-L) may give different bytes on
different CPUs or library versions, which would break reproducible digests; they are
offered as an option (:func:`compressing_writer`).
"""

from __future__ import annotations

import struct
from typing import Protocol

# ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown): no name, no time.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_MAX_STORED = 0xFFFF
_FULL_BLOCK_HEADER = b"\x00" + struct.pack("<HH", _MAX_STORED, _MAX_STORED ^ 0xFFFF)


class Sink(Protocol):
    def write(self, data: bytes | memoryview) -> int: ...


class StoredGzipWriter:
    """A gzip stream of stored deflate blocks of a fixed size, written to ``sink``."""

    def __init__(self, sink: Sink) -> None:
        from isal.isal_zlib import crc32  # here: the CLI imports this module to list COMPRESSIONS

        self._crc32 = crc32
        self._sink = sink
        self._crc = 0
        self._size = 0
        self._pending = bytearray()
        sink.write(GZIP_HEADER)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        self._crc = self._crc32(view, self._crc)
        self._size += n
        if self._pending:
            take = min(_MAX_STORED - len(self._pending), n)
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < _MAX_STORED:
                return n
            self._sink.write(_FULL_BLOCK_HEADER + self._pending)
            self._pending = bytearray()
        full = len(view) - len(view) % _MAX_STORED
        if full:
            parts: list[bytes | memoryview] = []
            for start in range(0, full, _MAX_STORED):
                parts.append(_FULL_BLOCK_HEADER)
                parts.append(view[start : start + _MAX_STORED])
            self._sink.write(b"".join(parts))
        self._pending += view[full:]
        return n

    def close(self) -> None:
        last = bytes(self._pending)
        self._sink.write(b"\x01" + struct.pack("<HH", len(last), len(last) ^ 0xFFFF) + last)
        self._sink.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))
        self._pending = bytearray()


class _Compressing:
    def __init__(self, sink: Sink, level: int) -> None:
        from isal import igzip

        self._gzip = igzip.IGzipFile(  # type: ignore[no-untyped-call]
            fileobj=sink, mode="wb", compresslevel=level, mtime=0, filename=""
        )

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return int(self._gzip.write(data))  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._gzip.close()


COMPRESSIONS = ("stored", "fast", "best")


def gzip_writer(sink: Sink, compression: str = "stored") -> StoredGzipWriter | _Compressing:
    """``stored``: reproducible everywhere (default); ``fast``/``best``: ISA-L levels 1/3, smaller layers."""
    if compression == "stored":
        return StoredGzipWriter(sink)
    if compression == "fast":
        return _Compressing(sink, 1)
    if compression == "best":
        return _Compressing(sink, 3)
    raise ValueError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
