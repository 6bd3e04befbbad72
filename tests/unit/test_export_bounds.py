"""What an export may cost, whatever the layers say: disk (one expansion budget per export, measured
against the bytes actually read, directories included), memory (tarfile's headers), and errors (a tar
reader's crash is an unsafe archive, not exit 70).  The second security review's findings F1-F5, F13;
docs/security.md lists these tests.
"""

from __future__ import annotations

import errno
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
import zstandard

from conftest import craft_layer, craft_tar, place_model, place_modelpack
from ormb import api
from ormb.config import Settings
from ormb.content.memory import MemoryStore
from ormb.errors import IntegrityError, OrmbError, UnsafeArchiveError
from ormb.model import modelpack
from ormb.model.export import export_model
from ormb.oci.descriptor import Descriptor, Manifest

REF = "localhost:5000/evil/model:v1"
TESTS = Path(__file__).resolve().parents[1]
SRC = TESTS.parent / "src"


def _small_floor(monkeypatch: pytest.MonkeyPatch, floor: int) -> None:
    """The default expansion floor (1 GiB) made small, so a bomb shows the bound without writing a GiB."""
    for name in ("ormb.model.unpack", "ormb.model.budget"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "MIN_EXPAND"):
            monkeypatch.setattr(module, "MIN_EXPAND", floor)


def _zeros_tar(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(bytes(size)))
    return raw.getvalue()


# -- F1: the expansion limit never trusts a declared size ----------------------------------------


def test_a_layer_that_declares_a_huge_size_gets_no_bigger_budget(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # what a registry can do to the storage initializer: the manifest says 1 TiB, the blob is a few KiB of
    # zstd that unpacks to 8 MiB.  The limit was 20 x the declared size (20 TiB); now it is 20 x what was read.
    _small_floor(monkeypatch, 1 << 20)
    blob = zstandard.ZstdCompressor().compress(_zeros_tar("zeros.bin", 8 << 20))
    assert len(blob) < 4096
    real = Descriptor.of_bytes(modelpack.layer_type("weight", "tar+zstd"), blob)
    lying = Descriptor(real.media_type, real.digest, 1 << 40)
    store = MemoryStore()
    store.blobs[real.digest] = blob  # fetch() hands out the real, short blob: the declared size is the lie
    manifest = Manifest(Descriptor.of_bytes(modelpack.CONFIG, b"{}"), (lying,), artifact_type=modelpack.ARTIFACT_TYPE)
    with pytest.raises(UnsafeArchiveError, match="expands to more than 1.0 MiB"):
        export_model(store, manifest, tmp_path / "dest", metadata=None)
    assert not (tmp_path / "dest").exists()


def test_a_blob_longer_than_its_declared_size_is_not_read_past_it(tmp_path: Path) -> None:
    layer = craft_tar([("w.bin", "file", b"w" * 1000)])
    desc = Descriptor.of_bytes(modelpack.layer_type("weight", "tar"), layer)
    store = MemoryStore()
    store.blobs[desc.digest] = layer + bytes(10 << 20)  # 10 MiB more than declared
    manifest = Manifest(Descriptor.of_bytes(modelpack.CONFIG, b"{}"), (desc,), artifact_type=modelpack.ARTIFACT_TYPE)
    with pytest.raises(IntegrityError, match="more bytes than"):
        export_model(store, manifest, tmp_path / "dest", metadata=None)
    assert not (tmp_path / "dest").exists()


# -- F3, F4: one budget per export, directories included -----------------------------------------


def test_directories_a_layer_implies_are_charged_to_the_budget(tmp_path: Path, settings: Settings) -> None:
    # 40 entries 126 levels deep: about 5,000 directories (20 MiB at 4 KiB each) from a 10 KiB layer,
    # none of them an entry of the layer
    deep = "/".join(["a"] * 126)
    members = [tarfile.TarInfo(f"model/e{i}/{deep}/f").tobuf(tarfile.PAX_FORMAT) for i in range(40)]
    place_model(settings.cache_dir, REF, zlib.compress(b"".join(members) + bytes(1024), wbits=31))
    with pytest.raises(UnsafeArchiveError, match="expands to more than 1.0 MiB"):
        api.export(REF, tmp_path / "dest", settings=settings, max_expand=1 << 20)
    assert not (tmp_path / "dest").exists()


def test_max_expand_bounds_the_whole_export_not_each_layer(tmp_path: Path, settings: Settings) -> None:
    layers = [("tar+zstd", zstandard.ZstdCompressor().compress(_zeros_tar(f"l{i}/zeros", 6 << 20)), {})
              for i in range(6)]
    place_modelpack(settings.cache_dir, REF, layers)
    with pytest.raises(UnsafeArchiveError, match="expands to more than 8.0 MiB"):
        api.export(REF, tmp_path / "dest", settings=settings, max_expand=8 << 20)
    assert not (tmp_path / "dest").exists()
    api.export(REF, tmp_path / "ok", settings=settings, max_expand=40 << 20)  # 36 MiB and 7 entries fit
    assert sum(p.stat().st_size for p in (tmp_path / "ok").rglob("zeros")) == 36 << 20


def test_the_default_budget_is_for_the_whole_export(tmp_path: Path, settings: Settings,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _small_floor(monkeypatch, 1 << 20)
    layers = [("tar+gzip", craft_layer([(f"l{i}/zeros", "file", bytes(400 << 10))]), {}) for i in range(3)]
    place_modelpack(settings.cache_dir, REF, layers)  # each layer fits the floor; the three do not
    with pytest.raises(UnsafeArchiveError, match="expands to more than 1.0 MiB"):
        api.export(REF, tmp_path / "dest", settings=settings)
    assert not (tmp_path / "dest").exists()


# -- F2: memory stays small whatever the headers hold -----------------------------------------------

_MEASURE = r"""
import json, resource, sys, tracemalloc
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a runaway fails here, not the machine
from ormb.content.memory import MemoryStore
from ormb.errors import OrmbError
from ormb.model.export import export_model
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
layer = Path(sys.argv[1]).read_bytes()
store = MemoryStore()
desc = Descriptor.of_bytes(mediatypes.ORMB_LAYER, layer)
store.blobs[desc.digest] = layer
manifest = Manifest(Descriptor.of_bytes(mediatypes.ORMB_CONFIG, b"{}"), (desc,))
tracemalloc.start()
try:
    export_model(store, manifest, Path(sys.argv[2]), metadata=None)
    outcome = "exported"
except OrmbError as exc:
    outcome = f"{type(exc).__name__}: {exc}"
except MemoryError:
    outcome = "MemoryError"
print(json.dumps({"outcome": outcome, "peak": tracemalloc.get_traced_memory()[1]}))
"""


def _export_measured(tmp_path: Path, layer: bytes) -> tuple[str, int]:
    """Export ``layer`` (an ormb model layer) in a fresh process; what happened and the peak of Python's
    allocations during the export."""
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(layer)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(path), str(tmp_path / "dest")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    return answer["outcome"], answer["peak"]


def _record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return f"{n}{body}".encode()


def _meta_block(records: bytes, kind: bytes = tarfile.XHDTYPE) -> bytes:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = kind
    info.size = len(records)
    return info.tobuf(tarfile.USTAR_FORMAT) + records + bytes(-len(records) % 512)


def _gzip(pieces: list[bytes]) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return b"".join(compressor.compress(p) for p in pieces) + compressor.compress(bytes(1024)) + compressor.flush()


MIB = 1 << 20


def test_a_global_pax_header_is_not_copied_into_every_entry(tmp_path: Path) -> None:
    # 50,000 global keys (600 KiB), then 3,000 entries: tarfile copied the keys into every entry and kept
    # every entry (15 GB; a MemoryError at this test's 3 GiB cap, exit 70 from the CLI)
    head = _meta_block(b"".join(_record(f"k{i}", "") for i in range(50_000)), tarfile.XGLTYPE)
    entries = []
    for i in range(3000):
        info = tarfile.TarInfo(f"model/d{i % 2}")
        info.type = tarfile.DIRTYPE
        entries.append(info.tobuf(tarfile.USTAR_FORMAT))
    outcome, peak = _export_measured(tmp_path, _gzip([head, *entries]))
    assert outcome.startswith("UnsafeArchiveError") and "global" in outcome, outcome
    assert peak < 32 * MIB, f"peak {peak / MIB:.0f} MiB"


def test_entries_with_large_pax_headers_do_not_pile_up_in_memory(tmp_path: Path) -> None:
    # 200 entries, each with a 1 MiB PAX comment (allowed: one entry's headers may hold 1 MiB); tarfile kept
    # every entry it read, and with it every comment: 200 MiB
    pieces = []
    for i in range(200):
        info = tarfile.TarInfo(f"model/f{i}")
        info.pax_headers = {"comment": "A" * (MIB - 100)}
        pieces.append(info.tobuf(tarfile.PAX_FORMAT))
    outcome, peak = _export_measured(tmp_path, _gzip(pieces))
    assert outcome == "exported", outcome
    assert peak < 32 * MIB, f"peak {peak / MIB:.0f} MiB"


def test_a_gnu_sparse_map_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    # GNU sparse 1.0: the map is in the entry's data; tarfile parsed all of it (4 MiB of "1\n": 2 million
    # numbers in a list) before ormb saw the entry and refused it as sparse
    head = _meta_block(b"".join(_record(k, v) for k, v in (("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"),
                                                          ("GNU.sparse.name", "model/a"),
                                                          ("GNU.sparse.realsize", "10"))))
    info = tarfile.TarInfo("model/a")
    info.size = 4 * MIB + 512
    pieces = [head, info.tobuf(tarfile.USTAR_FORMAT), b"999999999999\n", b"1\n" * (2 * MIB)]
    outcome, peak = _export_measured(tmp_path, _gzip(pieces))
    assert outcome.startswith("UnsafeArchiveError") and "sparse" in outcome, outcome
    assert peak < 32 * MIB, f"peak {peak / MIB:.0f} MiB"


def test_extended_headers_of_one_entry_are_bounded_in_total(tmp_path: Path, settings: Settings) -> None:
    # each PAX header under the 1 MiB limit, together 3 MiB for one entry
    pieces = [_meta_block(_record(f"comment{i}", "A" * (MIB - 100))) for i in range(3)]
    pieces.append(tarfile.TarInfo("model/a").tobuf(tarfile.USTAR_FORMAT))
    place_model(settings.cache_dir, REF, _gzip(pieces))
    with pytest.raises(UnsafeArchiveError, match="extended data"):
        api.export(REF, tmp_path / "dest", settings=settings)
    assert not (tmp_path / "dest").exists()


def test_the_tarfile_internals_the_bounds_replace_still_exist() -> None:
    """The header bounds override tarfile's per-header parser and replace its sparse-map parsers (private
    methods, stable since Python 3.2); a Python whose tarfile renamed them must fail here, not silently
    parse sparse maps again."""
    for name in ("fromtarfile", "frombuf", "_proc_member", "_proc_pax", "_proc_sparse", "_proc_gnusparse_00",
                 "_proc_gnusparse_01", "_proc_gnusparse_10", "_apply_pax_info"):
        assert hasattr(tarfile.TarInfo, name), name
    assert isinstance(tarfile.TarFile("x", "w", io.BytesIO()).members, list)


# -- F5: whatever the tar reader raises is an unsafe archive ---------------------------------------


@pytest.mark.parametrize("records", [
    b"99999999999999999999 path=x\n",  # OverflowError in tarfile's record parsing
    b"0 path=x\n",                     # a zero-length record
    _record("size", "9" * 40),         # a size no file system has
    _record("mtime", "1e999"),
])
def test_whatever_breaks_the_tar_reader_is_an_unsafe_archive(tmp_path: Path, settings: Settings,
                                                             records: bytes) -> None:
    place_model(settings.cache_dir, REF, _gzip([_meta_block(records),
                                                tarfile.TarInfo("model/a").tobuf(tarfile.USTAR_FORMAT)]))
    try:
        api.export(REF, tmp_path / "dest", settings=settings)
    except UnsafeArchiveError:
        pass
    except OrmbError as exc:
        pytest.fail(f"{type(exc).__name__}: {exc}")
    assert not (tmp_path / "dest").exists() or sorted(os.listdir(tmp_path / "dest")) == ["model", "ormbfile.yaml"]


def test_a_tar_reader_crash_behind_a_wrong_digest_is_an_integrity_error(tmp_path: Path, settings: Settings) -> None:
    layer = _gzip([_meta_block(b"99999999999999999999 path=x\n"),
                   tarfile.TarInfo("model/a").tobuf(tarfile.USTAR_FORMAT)])
    place_model(settings.cache_dir, REF, layer, layer_digest="sha256:" + "0" * 64)
    with pytest.raises(IntegrityError):
        api.export(REF, tmp_path / "dest", settings=settings)


# -- F13: too many hard links is the layer's fault ---------------------------------------------------


def test_too_many_hard_links_is_an_unsafe_archive_not_a_disk_fault(tmp_path: Path, settings: Settings,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # ext4 allows 65,000 links to a file; a layer of 66,000 hard links (1 MiB of gzip) reaches it.  The file
    # system's answer, EMLINK, is simulated here after the first link.
    place_model(settings.cache_dir, REF, craft_layer([("model/f", "file", b"x"), ("model/h1", "hardlink", "model/f"),
                                                      ("model/h2", "hardlink", "model/f")]))
    real_link = os.link
    made: list[str] = []

    def link(*args: object, **kwargs: object) -> None:
        if made:
            raise OSError(errno.EMLINK, os.strerror(errno.EMLINK))
        made.append("one")
        real_link(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", link)
    with pytest.raises(UnsafeArchiveError, match="hard links"):
        api.export(REF, tmp_path / "dest", settings=settings)
    assert not (tmp_path / "dest").exists()
