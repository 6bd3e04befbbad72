"""What a layer may not make an export do besides escaping: exhaust memory or recursion, expand without
bound, hide a mismatch behind a clone; and what it may do: links that stay inside."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import compress, craft_layer, craft_tar, place_model, place_modelpack
from ormb import api
from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.errors import IntegrityError, UnsafeArchiveError

REF = "localhost:5000/evil/model:v1"


def test_a_huge_pax_header_is_refused_before_it_is_read(tmp_path: Path, settings: Settings) -> None:
    info = tarfile.TarInfo("model/" + "a" * (2 << 20))  # a 2 MiB name: a 2 MiB PAX record
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    place_model(settings.cache_dir, REF, compress(raw.getvalue(), "tar+gzip"))
    with pytest.raises(UnsafeArchiveError, match="extended data"):
        api.export(REF, tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists()


def test_a_chain_of_headers_is_an_unsafe_archive_not_a_crash(tmp_path: Path, settings: Settings) -> None:
    long_name = tarfile.TarInfo("././@LongLink")
    long_name.type = tarfile.GNUTYPE_LONGNAME
    payload = b"model/x\0"
    long_name.size = len(payload)
    block = long_name.tobuf(tarfile.GNU_FORMAT) + payload + b"\0" * (512 - len(payload))
    data = block * 3000 + craft_tar([("model/x", "file", b"x")])  # 3000 headers, each naming the next
    place_model(settings.cache_dir, REF, compress(data, "tar+gzip"))
    with pytest.raises(UnsafeArchiveError, match="too deeply"):
        api.export(REF, tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists()


def test_paths_deeper_than_any_model_are_refused(tmp_path: Path, settings: Settings) -> None:
    place_model(settings.cache_dir, REF, craft_layer([("model/" + "d/" * 200 + "w.bin", "file", b"w")]))
    with pytest.raises(UnsafeArchiveError, match="deeper than"):
        api.export(REF, tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists()


def test_a_raw_layer_writes_its_declared_size_and_a_longer_cached_file_is_not_cloned(
    tmp_path: Path, settings: Settings,
) -> None:
    place_modelpack(settings.cache_dir, REF, [("raw", b"weights", {"org.cncf.model.filepath": "w.bin"})])
    cache = OCILayout(settings.cache_dir)
    blob = next(p for p in (settings.cache_dir / "blobs" / "sha256").iterdir()
                if p.read_bytes() == b"weights")
    with open(blob, "ab") as f:  # a corrupt cache: more bytes than the manifest declares
        f.write(b"and a lot more" * 1000)
    assert cache.blob_path("sha256:" + blob.name) == blob
    with pytest.raises(IntegrityError):
        api.export(REF, tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists()


def test_links_that_stay_inside_are_kept(tmp_path: Path, settings: Settings) -> None:
    place_model(settings.cache_dir, REF, craft_layer([
        ("model/sub/w.bin", "file", b"w"),
        ("model/alias", "symlink", "sub"),                 # a directory
        ("model/chain", "symlink", "alias/w.bin"),         # through another link
        ("model/sub/up", "symlink", "../../ormbfile.yaml"),  # the metadata the export writes
        ("model/sub/top", "symlink", ".."),
        ("model/copy.bin", "hardlink", "model/sub/w.bin"),
    ]))
    out = tmp_path / "out"
    api.export(REF, out, settings=settings)
    assert (out / "model" / "chain").read_bytes() == b"w"
    assert "format: Others" in (out / "model" / "sub" / "up").read_text()
    assert os.stat(out / "model" / "copy.bin").st_ino == os.stat(out / "model" / "sub" / "w.bin").st_ino
    assert os.stat(out / "model" / "copy.bin").st_nlink == 2


@pytest.mark.parametrize(("members", "message"), [
    ([("model/a", "symlink", "nothing")], "points to nothing"),
    ([("model/a", "symlink", "b"), ("model/b", "symlink", "a")], "loop"),
    ([("model/a", "symlink", "../../x")], "outside"),
    ([("model/f", "file", b"f"), ("model/a", "symlink", "f/x")], "goes through the file"),
    ([("model/d/", "dir", b""), ("model/d", "file", b"x")], "replace the directory"),
    ([("model/f", "file", b"f"), ("model/f/x", "file", b"x")], "is a file"),
    ([("model/.ormb-export-1234", "file", b"x")], None),  # fine below model/: only the top is reserved
])
def test_links_and_entries_that_cannot_be_kept(tmp_path: Path, settings: Settings,
                                               members: list[tuple[str, str, bytes | str]],
                                               message: str | None) -> None:
    place_model(settings.cache_dir, REF, craft_layer(members))
    if message is None:
        api.export(REF, tmp_path / "out", settings=settings)
        return
    with pytest.raises(UnsafeArchiveError, match=message):
        api.export(REF, tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists()


def test_modelpack_entries_named_like_staging_or_a_directory_at_the_ormbfile_are_refused(
    tmp_path: Path, settings: Settings,
) -> None:
    place_modelpack(settings.cache_dir, REF, [("tar", craft_tar([(".ormb-export-abcd/x", "file", b"x")]), {})])
    with pytest.raises(UnsafeArchiveError, match="reserved"):
        api.export(REF, tmp_path / "a", settings=settings)
    place_modelpack(settings.cache_dir, REF, [("tar", craft_tar([("ormbfile.yaml/x", "file", b"x")]), {})])
    with pytest.raises(UnsafeArchiveError, match="a layer writes ormbfile.yaml, where the export writes the model's"):
        api.export(REF, tmp_path / "b", settings=settings)
    api.export(REF, tmp_path / "c", metadata=False, settings=settings)  # without metadata it is just a directory
    assert (tmp_path / "c" / "ormbfile.yaml" / "x").read_bytes() == b"x"


def test_max_expand_on_the_command_line(tmp_path: Path, settings: Settings) -> None:
    place_model(settings.cache_dir, REF, craft_layer([("model/w.bin", "file", b"\0" * 100_000)]))
    env = {**os.environ, "ORMB_HOME": str(settings.home), "ORMB_NO_PROGRESS": "1"}
    cli = [sys.executable, "-m", "ormb", "export", "evil/model:v1"]
    small = subprocess.run([*cli, "-d", str(tmp_path / "a"), "--max-expand", "50K"], capture_output=True, text=True,
                           env=env)
    assert small.returncode == 4 and "expands to more than 50.0 KiB" in small.stderr, small.stderr
    via_env = subprocess.run([*cli, "-d", str(tmp_path / "b")], capture_output=True, text=True,
                             env={**env, "ORMB_MAX_EXPAND": "50k"})
    assert via_env.returncode == 4, via_env.stderr
    ok = subprocess.run([*cli, "-d", str(tmp_path / "c"), "--max-expand", "1M"], capture_output=True, text=True,
                        env=env)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*cli, "-d", str(tmp_path / "d"), "--max-expand", "lots"], capture_output=True, text=True,
                         env=env)
    assert bad.returncode == 2 and "--max-expand" in bad.stderr, bad.stderr
