"""The background writer and hasher: the same bytes as a plain write and hashlib; early write-back (for files
fsynced before they become visible) starts behind the writer without changing a byte; errors come back."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ormb.content import background
from ormb.content.background import WRITEBACK_STEP, BackgroundHasher, BackgroundWriter


@given(st.lists(st.binary(max_size=3000), max_size=20), st.booleans())
def test_writer_and_hasher_give_what_a_plain_write_and_hashlib_give(chunks: list[bytes], writeback: bool) -> None:
    import tempfile

    with tempfile.TemporaryFile() as f:
        hasher = BackgroundHasher(hashlib.sha256())
        with BackgroundWriter(f, writeback=writeback) as writer:
            for chunk in chunks:
                hasher.update(chunk)
                writer.write(bytearray(chunk))  # a mutable buffer the caller may reuse: copied
            writer.close()
        f.seek(0)
        assert f.read() == b"".join(chunks)
        assert hasher.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_write_back_starts_behind_the_writer_in_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    real = background._SYNC_FILE_RANGE
    assert real is not None  # Linux with glibc: the call is there

    def spy(fd: int, offset: int, length: int, flags: int) -> int:
        calls.append((offset, length))
        assert flags == background.SYNC_FILE_RANGE_WRITE
        return int(real(fd, offset, length, flags))

    monkeypatch.setattr(background, "_SYNC_FILE_RANGE", spy)
    chunk = os.urandom(1 << 20)
    total = 2 * WRITEBACK_STEP + (3 << 20)
    with open(tmp_path / "blob", "w+b") as f:
        f.write(b"head")  # the writer starts where the file stands
        with BackgroundWriter(f, writeback=True) as writer:
            for _ in range(total // len(chunk)):
                writer.write(chunk)
            writer.close()
    assert calls == [(4, WRITEBACK_STEP), (4 + WRITEBACK_STEP, WRITEBACK_STEP)]
    assert (tmp_path / "blob").read_bytes() == b"head" + chunk * (total // len(chunk))


def test_no_write_back_unless_asked_and_none_where_libc_lacks_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(background, "_SYNC_FILE_RANGE", lambda *args: calls.append(1) or 0)
    data = os.urandom(WRITEBACK_STEP + 1)
    with open(tmp_path / "a", "wb") as f, BackgroundWriter(f) as writer:
        writer.write(data)
        writer.close()
    assert calls == []
    monkeypatch.setattr(background, "_SYNC_FILE_RANGE", None)
    with open(tmp_path / "b", "wb") as f, BackgroundWriter(f, writeback=True) as writer:
        writer.write(data)
        writer.close()
    assert (tmp_path / "b").read_bytes() == data


def test_a_write_error_comes_back_to_the_caller(tmp_path: Path) -> None:
    with open(tmp_path / "ro", "wb") as f:
        pass
    with open(tmp_path / "ro", "rb") as f, BackgroundWriter(f, writeback=True) as writer:  # type: ignore[arg-type]
        writer.write(b"x" * 10)
        with pytest.raises(OSError):
            writer.close()
