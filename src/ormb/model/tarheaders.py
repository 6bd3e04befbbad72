"""tarfile's header reader with bounds: what every reader of a layer's tar headers uses (export, signing's
hashes, the registry's catalog listing).

tarfile parses headers the way a trusted archive deserves; a layer is not trusted.  :class:`CheckedTarInfo`
(pass it as ``tarinfo=`` to :func:`tarfile.open`) keeps tarfile's parser and bounds what it may cost:

- extended header data (PAX, GNU long names) before one entry: ``MAX_HEADER`` bytes in all, nested at most
  ``MAX_HEADER_CHAIN`` headers deep (tarfile reads each whole into memory and nests a call per header);
- global PAX headers: ``MAX_GLOBAL`` bytes and ``MAX_GLOBAL_KEYS`` keys in all (tarfile copies them into
  every later entry);
- sparse entries are refused before tarfile reads their map (a map of millions of numbers is parsed into
  Python lists);
- a PAX header's records are checked in one linear pass (:func:`check_pax_records`) before tarfile's parser
  sees them: CPython before 3.11.10 / 3.12.6 parses a run of digits in quadratic time (CVE-2024-6232, a
  ``re.search(rb"\\d+ hdrcharset=...")`` over the whole header: 128 KiB of digits held a worker for 20 s,
  1 MiB for half an hour), and overlapping records make its record loop rescan the header.

Every refusal is an :class:`~ormb.errors.UnsafeArchiveError`, but a malformed PAX header's: that is a
:class:`PaxRecordError`, one of tarfile's errors, so a reader treats it as whatever else tarfile raises on
a layer (export checks the layer's digest first: a corrupt download is an integrity error, a malformed
layer an unsafe archive).
"""

from __future__ import annotations

import re
import tarfile
from typing import Any, NoReturn

from ormb.errors import UnsafeArchiveError
from ormb.units import human_size

MAX_HEADER = 1 << 20  # extended header data (PAX, GNU long names) before one entry, in all
MAX_HEADER_CHAIN = 32  # extended headers before one entry (tar, GNU tar and Go write at most three)
MAX_GLOBAL = 64 << 10  # global PAX header data in one layer, in all (git archive writes 52 bytes)
MAX_GLOBAL_KEYS = 64
MAX_LENGTH_DIGITS = 20  # digits of a PAX record's length (CPython's own fix allows 20 as well)
MAX_DIGIT_RUN = 64  # digits in a row anywhere in a PAX header: the old parser costs their square
_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
               tarfile.GNUTYPE_LONGLINK)
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_LONG_DIGIT_RUN = re.compile(rb"[0-9]{%d}" % (MAX_DIGIT_RUN + 1))  # at most MAX_DIGIT_RUN + 1 steps a position
_HDRCHARSET = b" hdrcharset="


class PaxRecordError(tarfile.TarError):
    """A PAX header that is not a sequence of well-formed records, or that would cost tarfile's parser
    more than linear time."""


def check_pax_records(buf: bytes, size: int) -> None:
    """Refuse (:class:`PaxRecordError`) a PAX header (``buf``: its ``size`` bytes and the padding to the block tarfile reads with them)
    unless it is a sequence of well-formed records ``"LEN KEY=VALUE\\n"`` followed by NUL padding, with no
    run of more than ``MAX_DIGIT_RUN`` digits and ``hdrcharset=`` only as a key.

    One pass, every byte looked at a bounded number of times; what passes costs tarfile's parser (any
    CPython) linear time: its record loop reads each record once, and its ``hdrcharset`` search
    backtracks at most ``MAX_DIGIT_RUN`` digits at each position and scans to the end of one record at
    each ``hdrcharset`` key.
    """
    pos, end = 0, len(buf)
    charset_keys = 0
    while pos < end and buf[pos] != 0:
        space = buf.find(b" ", pos, pos + MAX_LENGTH_DIGITS + 1)
        digits = buf[pos:space] if space > pos else b""
        if not digits.isdigit():
            _refuse_pax("a record does not start with its length")
        length = int(digits)
        record_end = pos + length
        if length < len(digits) + 4 or record_end > min(size, end) or buf[record_end - 1] != 0x0A:  # "N k=\n"
            _refuse_pax("a record's length does not match the record")
        equals = buf.find(b"=", space + 1, record_end - 1)
        if equals <= space + 1:
            _refuse_pax("a record has no key")
        if buf[space + 1:equals] == b"hdrcharset":
            charset_keys += 1
        pos = record_end
    if buf[pos:].strip(b"\0"):
        _refuse_pax("it has bytes after its records")
    if _LONG_DIGIT_RUN.search(buf) is not None:
        _refuse_pax(f"it holds more than {MAX_DIGIT_RUN} digits in a row")
    if buf.count(_HDRCHARSET) != charset_keys:
        _refuse_pax("'hdrcharset=' appears in it other than as a key")


def _refuse_pax(why: str) -> NoReturn:
    raise PaxRecordError(f"a PAX header of the layer is malformed: {why}; refusing")


def _refuse_sparse(*_args: object) -> NoReturn:
    raise UnsafeArchiveError("a tar entry of the layer is a sparse file; refusing")


class CheckedTarInfo(tarfile.TarInfo):
    """tarfile's header parser with the bounds of the module doc."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> CheckedTarInfo:
        limits: HeaderLimits | None = tarfile_.__dict__.get("_ormb_limits")
        if limits is None:  # the first header, read by TarFile.__init__
            limits = tarfile_._ormb_limits = HeaderLimits()  # type: ignore[attr-defined]
        buf = tarfile_.fileobj.read(tarfile.BLOCKSIZE)
        obj = cls.frombuf(buf, tarfile_.encoding, tarfile_.errors)
        obj.offset = tarfile_.fileobj.tell() - tarfile.BLOCKSIZE
        limits.header(obj, tarfile_)
        try:
            return obj._proc_member(tarfile_)  # type: ignore[attr-defined,no-any-return]
        finally:
            limits.done()

    # tarfile's sparse parsers (GNU 0.0, 0.1, 1.0, old GNU 'S'): refused before they read the map
    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_sparse = _refuse_sparse

    def _proc_pax(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        # tarfile's _proc_pax reads the header's blocks with its first read: that read is checked
        original = tarfile_.fileobj
        tarfile_.fileobj = _PaxChecked(original, self.size)
        try:
            return super()._proc_pax(tarfile_)  # type: ignore[misc,no-any-return]
        finally:
            tarfile_.fileobj = original

    def _apply_pax_info(self, pax_headers: dict[str, str], encoding: str, errors: str) -> None:
        if any(key.startswith("GNU.sparse.") for key in pax_headers):  # a sparse file by any other header
            _refuse_sparse()
        super()._apply_pax_info(pax_headers, encoding, errors)  # type: ignore[misc]


class _PaxChecked:
    """tarfile's stream while a PAX header is parsed: its first read (the header's records) is checked by
    :func:`check_pax_records`; everything else passes through."""

    def __init__(self, stream: Any, size: int) -> None:
        self._stream, self._size, self._checked = stream, size, False

    def read(self, n: int) -> bytes:
        data: bytes = self._stream.read(n)
        if not self._checked:
            self._checked = True
            check_pax_records(data, self._size)
        return data

    def __getattr__(self, name: str) -> Any:  # tell(), seek() ...: the stream's
        return getattr(self._stream, name)


class HeaderLimits:
    """The extended headers seen before the entry being read, and the global ones of the whole layer."""

    def __init__(self) -> None:
        self.depth = 0
        self.extended = 0
        self.globals = 0

    def header(self, info: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        if self.depth == 0:
            self.extended = 0
        self.depth += 1
        if len(tar.pax_headers) > MAX_GLOBAL_KEYS:
            raise UnsafeArchiveError(f"the layer's global PAX headers set more than {MAX_GLOBAL_KEYS} keys; refusing")
        if info.type not in _META_TYPES:
            return
        if self.depth > MAX_HEADER_CHAIN:
            raise UnsafeArchiveError(f"a tar entry of the layer nests more than {MAX_HEADER_CHAIN} extended headers "
                                     "(too deeply); refusing")
        self.extended += info.size
        if self.extended > MAX_HEADER:
            raise UnsafeArchiveError(f"a tar entry of the layer carries more than {human_size(MAX_HEADER)} of extended "
                                     "data in its headers; refusing")
        if info.type == tarfile.XGLTYPE:
            self.globals += info.size
            if self.globals > MAX_GLOBAL:
                raise UnsafeArchiveError(f"the layer's global PAX headers hold more than {human_size(MAX_GLOBAL)}; "
                                         "refusing")

    def done(self) -> None:
        self.depth -= 1
