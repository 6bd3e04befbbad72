"""The checked tar header reader (ormb.model.tarheaders) that export, signing's hashes and the catalog share:
what a PAX header may cost, whatever the Python's tarfile.

CVE-2024-6232: CPython before 3.11.10 / 3.12.6 (this project runs on 3.11.7) parses a PAX header of digits in
quadratic time.  The payloads here are large enough that the unchecked parser would take minutes (512 KiB of
digits: about 5 minutes; the largest ones generated: half an hour); the checked reader refuses them after one
linear pass.  No test here times anything: a regression shows as a test that does not finish.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from hostile_tars import (
    END,
    file_block,
    meta_block,
    pax_charset_keys_in_a_value,
    pax_digits,
    pax_digits_in_a_value,
    pax_overlapping_records,
    record,
)
from hypothesis import given
from hypothesis import strategies as st

from conftest import compress, place_model
from ormb import api
from ormb.config import Settings
from ormb.errors import UnsafeArchiveError
from ormb.model.tarheaders import MAX_DIGIT_RUN, MAX_HEADER, CheckedTarInfo, PaxRecordError, check_pax_records
from ormb.model.unpack import hash_tar
from ormb.oci.descriptor import Descriptor

REF = "localhost:5000/evil/model:v1"
ROOM = MAX_HEADER - 1024  # the largest payloads that pass the extended-header size bound


def _hash(data: bytes) -> object:
    desc = Descriptor("application/vnd.cncf.model.code.v1.tar", "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    return hash_tar(io.BytesIO(data), desc, compression=None)


SHAPES = {
    "digits": (pax_digits, 1),
    "digits in a value": (pax_digits_in_a_value, 1),
    "hdrcharset in a value": (pax_charset_keys_in_a_value, 13),
    "overlapping records": (pax_overlapping_records, 2),
}


@given(st.sampled_from(sorted(SHAPES)), st.integers(MAX_DIGIT_RUN + 1, ROOM))
def test_any_quadratic_pax_header_is_refused_by_exports_reader(shape: str, n: int) -> None:
    make, unit = SHAPES[shape]
    with pytest.raises(UnsafeArchiveError, match="PAX header"):
        _hash(make(max(n // unit, MAX_DIGIT_RUN + 1)))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_largest_quadratic_pax_headers_are_refused(shape: str) -> None:
    """1 MiB of digits: half an hour of tarfile's parser on 3.11.7 (the reviewer's side note on export)."""
    make, unit = SHAPES[shape]
    with pytest.raises(UnsafeArchiveError, match="PAX header"):
        _hash(make(ROOM // unit))


def test_export_refuses_a_pax_header_of_digits_and_writes_nothing(tmp_path: Path, settings: Settings) -> None:
    place_model(settings.cache_dir, REF, compress(pax_digits(512 << 10, "model/README.md"), "tar+gzip"))
    with pytest.raises(UnsafeArchiveError, match="PAX header"):
        api.export(REF, tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists()


def _read(data: bytes, checked: bool) -> list[tuple[str, int, dict[str, str]]]:
    kwargs = {"tarinfo": CheckedTarInfo} if checked else {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|", **kwargs) as tar:  # type: ignore[call-overload]
        return [(m.name, m.size, dict(m.pax_headers)) for m in tar]


KEYS = st.text(st.characters(codec="ascii", categories=["L", "N"], include_characters="._-"), min_size=1, max_size=20)
VALUES = st.text(max_size=MAX_DIGIT_RUN).filter(lambda v: "hdrcharset=" not in v)


@given(st.lists(st.tuples(st.text(min_size=1, max_size=200).filter(lambda n: "\0" not in n), KEYS, VALUES),
                min_size=1, max_size=5))
def test_pax_headers_tarfile_writes_are_read_as_tarfile_reads_them(entries: list[tuple[str, str, str]]) -> None:
    """No false refusal: whatever names and PAX keys and values tarfile writes (its records, its padding),
    the checked reader reads the same entries as tarfile."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, key, value in entries:
            info = tarfile.TarInfo(name)
            info.pax_headers = {f"ormb.{key}": value}
            tar.addfile(info, io.BytesIO(b""))
    data = raw.getvalue()
    assert _read(data, checked=True) == _read(data, checked=False)


@given(st.lists(st.tuples(st.integers(0, 600), st.binary(min_size=1, max_size=3)), min_size=1, max_size=4))
def test_a_damaged_pax_header_is_refused_or_read_as_tarfile_reads_it(edits: list[tuple[int, bytes]]) -> None:
    """Bytes of a PAX header overwritten anywhere (lengths, keys, values, padding): the checked reader
    refuses it (UnsafeArchiveError, or tarfile's own error), or reads exactly what tarfile reads."""
    header = bytearray(record("path", "model/weights.bin") + record("ormb.note", "12 x=y") + record("mtime", "1.5"))
    block = bytearray(meta_block(bytes(header)))
    for at, data in edits:
        at = 512 + at % (len(block) - 512)
        block[at:at + len(data)] = data
    archive = bytes(block[:len(block) - len(block) % 512 or None]) + file_block("model/a", b"a") + END
    try:
        expected = _read(archive, checked=False)
    except (tarfile.TarError, ValueError, OverflowError, UnicodeError):
        expected = None
    try:
        got = _read(archive, checked=True)
    except (UnsafeArchiveError, PaxRecordError):
        return
    except (tarfile.TarError, ValueError, OverflowError, UnicodeError):
        assert expected is None
        return
    assert got == expected


@pytest.mark.parametrize(("records", "why"), [
    (b"12 path=ab\n", "length does not match"),           # says 12, is 11
    (b"99999999999999999999 path=x\n", "length does not match"),  # 20 digits, far past the header
    (b"999999999999999999999 path=x\n", "does not start with its length"),  # 21 digits
    (b"0 path=x\n", "length does not match"),
    (b"6 path\n", "length does not match"),
    (b"9 pathx\n\n", "no key"),
    (b"8 =path\n", "no key"),
    (b"x5 a=\n", "does not start with its length"),
    (record("path", "a") + b"junk", "does not start with its length"),
    (record("comment", "1" * (MAX_DIGIT_RUN + 1)), "digits in a row"),
    (record("comment", "x hdrcharset=BINARY"), "hdrcharset"),
])
def test_malformed_pax_records_are_refused_with_a_reason(records: bytes, why: str) -> None:
    with pytest.raises(PaxRecordError, match=why):
        check_pax_records(records + bytes(-len(records) % 512), len(records))


def test_bytes_in_the_padding_after_the_records_are_refused() -> None:
    """tarfile parses records in the padding too (it reads whole blocks)."""
    records = record("path", "a")
    with pytest.raises(PaxRecordError, match="bytes after its records"):
        check_pax_records(records + b"\0junk" + bytes(400), len(records))


def test_a_charset_record_and_digits_up_to_the_bound_pass() -> None:
    records = record("hdrcharset", "BINARY") + record("comment", "1" * MAX_DIGIT_RUN) + record("mtime", "1.25")
    check_pax_records(records + bytes(-len(records) % 512), len(records))
