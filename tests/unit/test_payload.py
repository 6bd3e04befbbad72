"""The unpacked bytes of a layer (src/ormb/model/payload.py): every gzip stream reads as gzip itself reads it
(stored blocks passed through, compressed ones inflated, both mixed in one member, several members), from a
stream or from a local file (whose stored data comes as regions the kernel copies); broken streams raise
LayerError; every byte is charged to the budget before it is handed out or written."""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ormb.errors import UnsafeArchiveError
from ormb.model.budget import ExpansionBudget
from ormb.model.gzipstream import StoredGzipWriter
from ormb.model.payload import LayerError, PayloadView, Region, local, payload_pieces, streamed


def _stored(data: bytes) -> bytes:
    out = io.BytesIO()
    writer = StoredGzipWriter(out)
    writer.write(data)
    writer.close()
    return out.getvalue()


def _mixed(data: bytes, cut: int) -> bytes:
    """One member: stored blocks for ``data[:cut]``, then compressed blocks that refer back into them."""
    stored = zlib.compressobj(0, zlib.DEFLATED, -15)
    head = stored.compress(data[:cut]) + stored.flush(zlib.Z_FULL_FLUSH)
    packed = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=data[max(0, cut - 32768):cut]) if cut else \
        zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = packed.compress(data[cut:]) + packed.flush()
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + head + tail + struct.pack("<II", zlib.crc32(data),
                                                                                     len(data) & 0xFFFFFFFF)


def _named(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", filename="layer.tar", mtime=1) as f:
        f.write(data)
    return out.getvalue()


ENCODINGS = {
    "stored": _stored,
    "level1": lambda d: gzip.compress(d, 1),
    "level9": lambda d: gzip.compress(d, 9),
    "mixed": lambda d: _mixed(d, len(d) // 2),
    "named": _named,
    "members": lambda d: gzip.compress(d[: len(d) // 3]) + _stored(d[len(d) // 3:]),
}


def _unpack_stream(blob: bytes, sizes: list[int], budget: ExpansionBudget | None = None) -> bytes:
    view = PayloadView(payload_pieces(streamed(io.BytesIO(blob).read), "gzip"), budget or ExpansionBudget())
    out = []
    i = 0
    while part := view.read(sizes[i % len(sizes)]):
        out.append(part)
        i += 1
    return b"".join(out)


def _unpack_local(tmp_path: Path, blob: bytes, sizes: list[int]) -> tuple[bytes, int]:
    path = tmp_path / "blob"
    path.write_bytes(blob)
    target = tmp_path / "out"
    consumed: list[int] = []
    with open(path, "rb") as f, open(target, "wb") as out:
        view = PayloadView(payload_pieces(local(f.fileno(), len(blob), consumed.append), "gzip"), ExpansionBudget())
        i = 0
        while view.copy_to(out.fileno(), sizes[i % len(sizes)], lambda e: e):
            i += 1
    return target.read_bytes(), sum(consumed)


@given(st.binary(max_size=200_000) | st.builds(lambda n: os.urandom(n), st.integers(0, 300_000)),
       st.sampled_from(sorted(ENCODINGS)), st.lists(st.integers(1, 200_000), min_size=1, max_size=5))
def test_every_gzip_stream_reads_as_gzip_reads_it(data: bytes, encoding: str, sizes: list[int]) -> None:
    blob = ENCODINGS[encoding](data)
    assert gzip.decompress(blob) == data  # the encoders themselves are right
    assert _unpack_stream(blob, sizes) == data


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_local_blob_copies_the_same_bytes_and_reads_all_of_it(tmp_path: Path, encoding: str) -> None:
    data = os.urandom(400_000) + bytes(300_000)
    blob = ENCODINGS[encoding](data)
    copied, consumed = _unpack_local(tmp_path, blob, [70_000, 1, 1 << 20])
    assert copied == data and consumed == len(blob)


def test_stored_data_of_a_local_blob_comes_as_regions_the_kernel_copies(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    blob = _stored(data)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    with open(path, "rb") as f:
        pieces = payload_pieces(local(f.fileno(), len(blob), lambda n: None), "gzip")
        first = pieces.next_piece(1 << 20)
        assert isinstance(first, Region) and first.length == 65535 and first.data() == data[:65535]


@pytest.mark.parametrize("damage", ["crc", "length", "complement", "type3", "truncated", "garbage", "magic"])
def test_a_broken_stream_is_a_layer_error(tmp_path: Path, damage: str) -> None:
    data = os.urandom(200_000)
    blob = bytearray(_stored(data))
    if damage == "crc":
        blob[-8] ^= 1
    elif damage == "length":
        blob[-1] ^= 1
    elif damage == "complement":
        blob[13] ^= 1  # NLEN of the first block
    elif damage == "type3":
        blob[10] = 0b110
    elif damage == "truncated":
        del blob[-100:]
    elif damage == "garbage":
        blob += b"not gzip"
    elif damage == "magic":
        blob[0] = 0
    with pytest.raises(LayerError):
        _unpack_stream(bytes(blob), [1 << 20])
    if damage != "crc":  # a local blob's stored data is not read: its CRC is not computed (the digest is)
        with pytest.raises(LayerError):
            _unpack_local(tmp_path, bytes(blob), [1 << 20])


def test_every_byte_is_charged_before_it_is_handed_out(tmp_path: Path) -> None:
    bomb = gzip.compress(bytes(50 << 20), 9)  # 50 MiB of zeros in about 50 KiB
    with pytest.raises(UnsafeArchiveError, match="expands to more than 10.0 MiB"):
        _unpack_stream(bomb, [1 << 20], ExpansionBudget(max_expand=10 << 20))
    out = tmp_path / "out"
    view = PayloadView(payload_pieces(streamed(io.BytesIO(bomb).read), "gzip"), ExpansionBudget(max_expand=10 << 20))
    with open(out, "wb") as f, pytest.raises(UnsafeArchiveError):
        view.copy_to(f.fileno(), None, lambda e: e)
    assert out.stat().st_size <= 10 << 20


def test_the_view_only_goes_forward(tmp_path: Path) -> None:
    view = PayloadView(payload_pieces(streamed(io.BytesIO(_stored(b"abcdef" * 1000)).read), "gzip"),
                       ExpansionBudget())
    assert view.read(3) == b"abc" and view.tell() == 3
    assert view.seek(10) == 10 and view.read(2) == b"ef"
    with pytest.raises(LayerError, match="went back"):
        view.seek(5)
