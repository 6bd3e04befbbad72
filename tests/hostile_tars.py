"""Tar archives whose headers attack the reader, built byte by byte (uncompressed; compress with
conftest.compress).  Shared by the tests of ormb.model.tarheaders (export's reader) and of the catalog
(tests/unit/test_catalog_bounds.py), which read layers with the same reader.

Shapes from the catalog review (/work/attack-catalog-repro): a PAX header of digits (CVE-2024-6232, quadratic
on CPython < 3.11.10), global PAX keys copied into every entry, a GNU sparse map of millions of numbers.
"""

from __future__ import annotations

import tarfile


def record(key: str, value: str | bytes) -> bytes:
    """One PAX record ``"LEN KEY=VALUE\\n"`` with its length right."""
    body = f" {key}=".encode() + (value.encode() if isinstance(value, str) else value) + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def meta_block(data: bytes, kind: bytes = tarfile.XHDTYPE, name: str = "././@PaxHeader") -> bytes:
    """A header of type ``kind`` whose data is ``data`` (as it is: any bytes), padded to the block."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    return info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def file_block(name: str, data: bytes = b"") -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % tarfile.BLOCKSIZE)


END = bytes(2 * tarfile.BLOCKSIZE)


def pax_digits(n: int, name: str = "README.md") -> bytes:
    """A PAX header that is ``n`` digits and nothing else, then a file: tarfile's hdrcharset search costs n²/2
    steps on CPython < 3.11.10 (128 KiB: 20 s; 512 KiB: about 5 minutes; 1 MiB: half an hour)."""
    return meta_block(b"1" * n) + file_block(name, b"# hi\n") + END


def pax_digits_in_a_value(n: int, name: str = "README.md") -> bytes:
    """A well-formed record whose value is ``n`` digits: the same quadratic search, well-formed records."""
    return meta_block(record("comment", "7" * n)) + file_block(name, b"# hi\n") + END


def pax_charset_keys_in_a_value(n: int, name: str = "README.md") -> bytes:
    """One record whose value repeats ``1 hdrcharset=`` ``n`` times without a newline: each occurrence made the
    old search scan to the record's end (quadratic without a long digit run)."""
    return meta_block(record("comment", b"1 hdrcharset=" * n)) + file_block(name, b"# hi\n") + END


def pax_overlapping_records(n: int, name: str = "README.md") -> bytes:
    """``4 5 6 7 ... =``: every record's key runs to the one ``=`` at the end, and its length points into the
    next: tarfile's record loop rescans the rest of the header at each of the n records."""
    return meta_block(b"4 " * n + b"=\n") + file_block(name, b"# hi\n") + END


def global_pax_keys(keys: int, entries: int) -> bytes:
    """A global PAX header of ``keys`` keys, then ``entries`` empty files: plain tarfile copies every key into
    every entry and (``r|`` mode) keeps every entry: 50,000 keys x 3,000 entries = gigabytes."""
    head = meta_block(b"".join(record(f"k{i}", "v") for i in range(keys)), tarfile.XGLTYPE, "pax_global_header")
    return head + b"".join(file_block(f"f{i}") for i in range(entries)) + END


def gnu_sparse_map(pairs: int, name: str = "README.md") -> bytes:
    """A GNU sparse 1.0 entry whose map holds ``2 * pairs`` numbers: plain tarfile parses every one into a list."""
    head = meta_block(b"".join(record(k, v) for k, v in (("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"),
                                                          ("GNU.sparse.name", name), ("GNU.sparse.realsize", "0"))))
    body = f"{pairs * 2}\n".encode() + b"0\n0\n" * pairs
    return head + file_block("GNUSparseFile.0/" + name, body) + END
