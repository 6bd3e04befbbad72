"""A layer's unpacked bytes as pieces, and a file-like view of them that tarfile reads headers from while file
contents go to their files with ``writev`` without passing through Python's buffers.

The ormb format's layer is gzip of *stored* deflate blocks (:mod:`ormb.model.gzipstream`): its unpacked bytes
are the blob's bytes less five bytes every 65,535.  :class:`Gunzip` hands those bytes out as slices of the
chunks read from the blob (no inflating, no copy); a compressed block (another tool's gzip, or a stream that
mixes both) is inflated from there on with ISA-L, with the last 32 KiB unpacked as its dictionary, so every
gzip stream reads (several members too).  The gzip trailer (CRC-32 and length) is checked where a member
ends.  zstd and plain tar layers come as pieces too (:func:`payload_pieces`).

:class:`PayloadView` is what tarfile reads (``read``, ``tell``, forward ``seek``): the headers of a tar
layer are parsed by tarfile with ormb's bounds (:mod:`ormb.model.unpack`), and each regular file's bytes go
straight from the pieces to its file (:meth:`PayloadView.copy_to`).  Every unpacked byte is charged to the
export's budget before it is written.  Whatever the stream gets wrong raises :class:`LayerError`, whose
``__cause__`` says what; the caller decides whether the layer is corrupt (digest) or malformed.
"""

from __future__ import annotations

import errno
import os
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ormb.content.filecopy import WRITE_ERRORS, copy_out
from ormb.errors import OrmbError
from ormb.model.budget import ExpansionBudget

CHUNK = 1 << 20  # bytes read from the layer at a time
WRITE_BATCH = 1 << 20  # bytes handed to one writev
_WINDOW = 32 << 10  # deflate's window: what a compressed block may refer back to
MAX_GZIP_HEADER = 64 << 10  # a gzip member header with a longer name, comment or extra field is refused
_MAGIC = b"\x1f\x8b"
_FEXTRA, _FNAME, _FCOMMENT, _FHCRC = 4, 8, 16, 2
_IOV_MAX = 1024

Piece = bytes | memoryview


class LayerError(Exception):
    """The layer's bytes are not what their format says (``__cause__``, or the message, says how)."""


class Pieces(Protocol):
    def next_piece(self, limit: int) -> Piece | Region:
        """The next unpacked bytes, at most ``limit`` (> 0) of them; empty at the end."""


@dataclass(frozen=True)
class Region:
    """``length`` bytes at ``offset`` of the open file ``fd``: unpacked bytes that are the layer's own bytes
    (a stored block of a local blob), copied by the kernel without being read (:meth:`PayloadView.copy_to`)."""

    fd: int
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length

    def data(self) -> bytes:
        data = os.pread(self.fd, self.length, self.offset)
        if len(data) != self.length:
            raise LayerError("the layer ended while it was read")
        return data


class _Stream:
    """The layer's raw bytes, read ``CHUNK`` at a time from ``read`` (a blob being hashed as it streams)."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._raw = memoryview(b"")

    def _fill(self) -> bool:
        if not self._raw:
            self._raw = memoryview(self._read(CHUNK))
        return bool(self._raw)

    def take(self, n: int) -> bytes:
        """Exactly ``n`` raw bytes (across chunks); :class:`LayerError` when the layer ends first."""
        parts: list[Piece] = []
        left = n
        while left:
            if not self._fill():
                raise LayerError("the layer ends early")
            part = self._raw[:left]
            self._raw = self._raw[len(part):]
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def piece(self, n: int) -> Piece:
        """Up to ``n`` raw bytes as they are (a slice of a chunk: no copy); empty at the end."""
        if not self._fill():
            return b""
        part = self._raw[:n]
        self._raw = self._raw[len(part):]
        return part

    def at_end(self) -> bool:
        return not self._fill()

    def buffered(self) -> bytes:
        """The raw bytes read but not taken yet (handed to an inflater), now taken."""
        rest, self._raw = bytes(self._raw), memoryview(b"")
        return rest

    def read_more(self) -> bytes:
        """The next raw chunk whole (for an inflater); nothing may be buffered."""
        assert not self._raw
        return self._read(CHUNK)

    def put_back(self, data: bytes) -> None:
        """Raw bytes an inflater read past its stream's end: they are read next."""
        self._raw = memoryview(data + bytes(self._raw))


class _File:
    """The raw bytes of a local blob (the cache's, trusted: verified when it entered), ``size`` of them from
    ``fd``'s offset 0: headers are read (``pread``), stored data is handed out as :class:`Region` unread.
    ``consumed`` is told of every raw byte passed (the budget, progress)."""

    def __init__(self, fd: int, size: int, consumed: Callable[[int], None]) -> None:
        self._fd, self._size, self._consumed = fd, size, consumed
        self.offset = 0

    def _advance(self, n: int) -> None:
        self.offset += n
        self._consumed(n)

    def take(self, n: int) -> bytes:
        data = os.pread(self._fd, min(n, self._size - self.offset), self.offset) if n else b""
        if len(data) != n:
            raise LayerError("the layer ends early")
        self._advance(n)
        return data

    def piece(self, n: int) -> Piece | Region:
        n = min(n, self._size - self.offset)
        if n <= 0:
            return b""
        region = Region(self._fd, self.offset, n)
        self._advance(n)
        return region

    def at_end(self) -> bool:
        return self.offset >= self._size

    def buffered(self) -> bytes:
        return b""

    def read_more(self) -> bytes:
        data = os.pread(self._fd, min(CHUNK, self._size - self.offset), self.offset) if not self.at_end() else b""
        self._advance(len(data))
        return data

    def put_back(self, data: bytes) -> None:
        self.offset -= len(data)
        self._consumed(-len(data))


_Source = _Stream | _File


class Plain:
    """An uncompressed layer: its raw bytes are its unpacked bytes."""

    def __init__(self, source: _Source) -> None:
        self._source = source

    def next_piece(self, limit: int) -> Piece | Region:
        return self._source.piece(limit)


class Zstd:
    """A zstd layer (frames one after another), unpacked by python-zstandard."""

    def __init__(self, source: _Source) -> None:
        import zstandard

        class _Reader:
            held = b""

            def read(self, n: int = -1) -> bytes:
                if not self.held:
                    self.held = source.read_more()
                data = self.held if n < 0 else self.held[:n]
                self.held = self.held[len(data):]
                return data

        self._reader = zstandard.ZstdDecompressor().stream_reader(_Reader(), read_across_frames=True)  # type: ignore[arg-type]

    def next_piece(self, limit: int) -> Piece:
        return bytes(self._reader.read(min(limit, CHUNK)))


class Gunzip:
    """A gzip layer unpacked: stored blocks as the layer's own bytes (slices of its chunks, or regions of a
    local blob), other blocks inflated (see the module).  The trailer's CRC-32 is checked when every byte of the
    member was read (a local blob's regions are not: it is trusted), its length always."""

    def __init__(self, source: _Source) -> None:
        from isal.isal_zlib import crc32

        self._crc32 = crc32
        self._source = source
        self._state = self._header
        self._left = 0  # bytes of the current stored block not handed out yet
        self._final = False
        self._crc: int | None = 0  # None once a piece passed unread (a Region)
        self._size = 0
        self._window: deque[Piece | Region] = deque()  # the last stored pieces, at least _WINDOW bytes if there are
        self._window_size = 0
        self._inflater: Any = None
        self._pending = b""  # raw bytes the inflater has not been given yet
        self._members = 0

    def next_piece(self, limit: int) -> Piece | Region:
        while True:
            piece = self._state(limit)
            if piece is not None:
                return piece

    # -- states: each returns a piece to hand out, or None to go on with the next state -----------------
    def _header(self, limit: int) -> Piece | Region | None:
        if self._members and self._source.at_end():
            self._state = self._end
            return None
        fixed = self._source.take(10)
        if fixed[:2] != _MAGIC or fixed[2] != 8:
            raise LayerError("not a gzip stream" if not self._members else "bytes after the gzip stream")
        flags = fixed[3]
        if flags & 0xE0:
            raise LayerError("reserved gzip header flags are set")
        length = 10
        if flags & _FEXTRA:
            extra = struct.unpack("<H", self._source.take(2))[0]
            self._source.take(extra)
            length += 2 + extra
        for flag in (_FNAME, _FCOMMENT):
            if flags & flag:
                while self._source.take(1) != b"\0":
                    length += 1
                    if length > MAX_GZIP_HEADER:
                        raise LayerError(f"a gzip header is longer than {MAX_GZIP_HEADER} bytes")
        if flags & _FHCRC:
            self._source.take(2)
        self._members += 1
        self._crc, self._size = 0, 0
        self._window.clear()
        self._window_size = 0
        self._final = False
        self._state = self._block
        return None

    def _block(self, limit: int) -> Piece | Region | None:
        if self._final:
            self._state = self._trailer
            return None
        head = self._source.take(1)[0]
        kind = (head >> 1) & 3
        if kind == 0:  # stored: LEN, NLEN, then LEN bytes as they are
            length, complement = struct.unpack("<HH", self._source.take(4))
            if length ^ complement != 0xFFFF:
                raise LayerError("a stored block's length and its complement disagree")
            self._final, self._left = bool(head & 1), length
            self._state = self._stored
            return None
        if kind == 3:
            raise LayerError("a deflate block of the reserved type 3")
        from isal import isal_zlib  # a compressed block: inflate the rest of this member from here

        window = b"".join(p.data() if isinstance(p, Region) else p for p in self._window)[-_WINDOW:]
        self._inflater = isal_zlib.decompressobj(wbits=-15, zdict=window)
        self._pending = bytes([head]) + self._source.buffered()
        self._state = self._inflate
        return None

    def _stored(self, limit: int) -> Piece | Region | None:
        if not self._left:
            self._state = self._block
            return None
        piece = self._source.piece(min(limit, self._left))
        if not piece:
            raise LayerError("the gzip stream ends inside a stored block")
        self._left -= len(piece)
        return self._unpacked(piece)

    def _inflate(self, limit: int) -> Piece | Region | None:
        inflater = self._inflater
        if inflater.eof:
            self._source.put_back(inflater.unused_data)  # the trailer, and what follows it
            self._inflater = None
            self._state = self._trailer
            return None
        if inflater.unconsumed_tail:  # what the last call left for lack of room
            data = inflater.unconsumed_tail
        elif self._pending:
            data, self._pending = self._pending, b""
        else:
            data = self._source.read_more()
            if not data:
                raise LayerError("the gzip stream ends inside a compressed block")
        try:
            out = inflater.decompress(data, limit)  # never more than asked for
        except Exception as exc:  # isal's error: the deflate data is malformed
            raise LayerError(f"the deflate data is malformed: {exc}") from exc
        return self._unpacked(out) if out else None

    def _trailer(self, limit: int) -> Piece | Region | None:
        crc, size = struct.unpack("<II", self._source.take(8))
        if size != self._size & 0xFFFFFFFF or (self._crc is not None and crc != self._crc & 0xFFFFFFFF):
            raise LayerError("the gzip trailer's CRC-32 or length does not match the unpacked bytes")
        self._state = self._header
        return None

    def _end(self, limit: int) -> Piece | Region | None:
        return b""

    def _unpacked(self, piece: Piece | Region) -> Piece | Region:
        if isinstance(piece, Region):
            self._crc = None
        elif self._crc is not None:
            self._crc = self._crc32(piece, self._crc)
        self._size += len(piece)
        if self._inflater is None:  # only stored bytes may later be a compressed block's dictionary
            self._window.append(piece)
            self._window_size += len(piece)
            while self._window_size - len(self._window[0]) >= _WINDOW:
                self._window_size -= len(self._window.popleft())
        return piece


def payload_pieces(source: _Source, compression: str | None) -> Pieces:
    """The unpacked bytes of a layer whose raw bytes come from ``source``: ``gzip``, ``zstd`` or None (plain)."""
    if compression == "gzip":
        return Gunzip(source)
    if compression == "zstd":
        return Zstd(source)
    if compression is None:
        return Plain(source)
    raise ValueError(f"unknown compression {compression!r}")


def streamed(read: Callable[[int], bytes]) -> _Stream:
    """A layer's raw bytes from ``read`` (a blob as it streams, hashed by the caller)."""
    return _Stream(read)


def local(fd: int, size: int, consumed: Callable[[int], None]) -> _File:
    """A local blob's raw bytes (trusted: see :class:`_File`)."""
    return _File(fd, size, consumed)


class PayloadView:
    """The unpacked bytes as a forward-only file for tarfile (``read``, ``tell``, ``seek`` ahead), plus
    :meth:`copy_to`, which writes bytes to a file descriptor without joining them (a :class:`Region` is copied
    by the kernel).  Every byte is charged to ``budget`` (``stream``) before it is returned or written.
    What the pieces raise is a :class:`LayerError`."""

    name = None  # tarfile asks

    def __init__(self, pieces: Pieces, budget: ExpansionBudget) -> None:
        self._pieces = pieces
        self._budget = budget
        self._held: Piece | Region = b""  # the rest of the last piece taken
        self._position = 0

    def _next(self, limit: int) -> Piece | Region:
        """Up to ``limit`` bytes, charged."""
        if self._held:
            piece = self._held
        else:
            try:
                piece = self._pieces.next_piece(limit)
            except (OrmbError, LayerError):
                raise
            except Exception as exc:
                raise LayerError(str(exc)) from exc
        self._held = b""
        if len(piece) > limit:  # keep the rest for later
            piece, self._held = _split(piece, limit)
        self._position += len(piece)
        self._budget.stream(self._position)
        return piece

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise LayerError("a read of the whole layer at once")
        parts: list[Piece] = []
        while n > 0:
            piece = self._next(n)
            if not piece:
                break
            parts.append(piece.data() if isinstance(piece, Region) else piece)
            n -= len(piece)
        return b"".join(parts)

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self._position + offset if whence == 1 else -1
        if target < self._position:
            raise LayerError("the tar reader went back in a stream that only goes forward")
        while self._position < target:
            if not self._next(min(target - self._position, CHUNK)):
                break
        return self._position

    def drain(self) -> None:
        """Read to the end (charged like the rest), so every gzip member's trailer is checked: a tar's end
        marker comes before its layer's last bytes."""
        while self._next(CHUNK):
            pass

    def copy_to(self, fd: int, size: int | None, on_write_error: Callable[[OSError], Exception],
                hasher: Any = None) -> int:
        """Write the next ``size`` bytes (all that are left when None) to ``fd`` at its position; return how many
        went (fewer only at the layer's end).  A failing write raises ``on_write_error(exc)``.  ``hasher`` (a
        hashlib object), if given, sees every byte written: a :class:`Region` is then read, not copied unseen."""
        done = 0
        batch: list[Piece] = []
        batch_size = 0
        while size is None or done < size:
            want = CHUNK if size is None else min(CHUNK, size - done)
            piece = self._next(want)
            if not piece:
                break
            done += len(piece)
            if hasher is not None:
                if isinstance(piece, Region):
                    piece = piece.data()
                hasher.update(piece)
            if isinstance(piece, Region):
                _write_all(fd, batch, batch_size, on_write_error)
                batch, batch_size = [], 0
                _copy_region(fd, piece, on_write_error)
                continue
            batch.append(piece)
            batch_size += len(piece)
            if batch_size >= WRITE_BATCH or len(batch) >= _IOV_MAX:
                _write_all(fd, batch, batch_size, on_write_error)
                batch, batch_size = [], 0
        _write_all(fd, batch, batch_size, on_write_error)
        return done


def _split(piece: Piece | Region, at: int) -> tuple[Piece | Region, Piece | Region]:
    if isinstance(piece, Region):
        return (Region(piece.fd, piece.offset, at), Region(piece.fd, piece.offset + at, piece.length - at))
    return piece[:at], piece[at:]


def _copy_region(fd: int, region: Region, on_write_error: Callable[[OSError], Exception]) -> None:
    """The kernel copies ``region`` to ``fd`` (:func:`ormb.content.filecopy.copy_out`)."""
    try:
        copied = copy_out(region.fd, region.offset, fd, region.length)
    except OSError as exc:
        if exc.errno in WRITE_ERRORS:
            raise on_write_error(exc) from None
        raise LayerError(f"the layer cannot be read: {exc.strerror}") from None
    if copied != region.length:
        raise LayerError("the layer ended while it was copied")


def _write_all(fd: int, batch: list[Piece], size: int, on_write_error: Callable[[OSError], Exception]) -> None:
    """``writev`` the batch whole (a short write continues where it stopped)."""
    if not size:
        return
    try:
        written = os.writev(fd, batch)
        while written < size:
            rest: list[Piece] = []
            skip = written
            for piece in batch:
                if skip >= len(piece):
                    skip -= len(piece)
                    continue
                rest.append(memoryview(piece)[skip:])
                skip = 0
            batch, size = rest, size - written
            written = os.writev(fd, batch)
            if written == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a regular file that takes nothing more
    except OSError as exc:
        raise on_write_error(exc) from None
