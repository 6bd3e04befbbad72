import os
from pathlib import Path

import pytest

from conftest import craft_layer, make_model, place_model
from ormb import api
from ormb.config import Settings
from ormb.errors import IntegrityError, UnsafeArchiveError

REF = "localhost:5000/evil/model:v1"

MALICIOUS = {
    "absolute path": [("/etc/evil", "file", b"x")],
    "dot-dot": [("model/../../evil", "file", b"x")],
    "outside model/": [("ormbfile.yaml", "file", b"x")],
    "symlink escaping": [("model/link", "symlink", "../../../etc/passwd")],
    "absolute symlink": [("model/link", "symlink", "/etc/passwd")],
    "symlink then write through it": [("model/d", "symlink", "../.."), ("model/d/evil", "file", b"x")],
    "hard link escaping": [("model/link", "hardlink", "/etc/passwd")],
    "hard link to unknown entry": [("model/link", "hardlink", "model/nothing")],
    "device": [("model/tty", "chr", b"")],
    "fifo": [("model/pipe", "fifo", b"")],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_unsafe_layers_are_refused_and_nothing_is_written(tmp_path: Path, settings: Settings, case: str) -> None:
    # a good first entry proves that the refusal removes what was already extracted
    place_model(settings.cache_dir, REF, craft_layer([("model/good.bin", "file", b"ok"), *MALICIOUS[case]]))
    fresh = tmp_path / "fresh"
    with pytest.raises(UnsafeArchiveError) as info:
        api.export(REF, fresh, settings=settings)
    assert "refusing" in str(info.value)
    assert not fresh.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(UnsafeArchiveError):
        api.export(REF, existing, settings=settings)
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]
    assert not (tmp_path / "evil").exists()


def test_symlinks_and_hard_links_inside_the_directory_are_fine(tmp_path: Path, settings: Settings) -> None:
    layer = craft_layer([
        ("model/", "dir", b""),
        ("model/weights.bin", "file", b"w"),
        ("model/alias.bin", "symlink", "weights.bin"),
        ("model/copy.bin", "hardlink", "model/weights.bin"),
    ])
    place_model(settings.cache_dir, REF, layer)
    api.export(REF, tmp_path / "out", settings=settings)
    assert (tmp_path / "out" / "model" / "alias.bin").read_bytes() == b"w"
    assert os.readlink(tmp_path / "out" / "model" / "alias.bin") == "weights.bin"
    assert (tmp_path / "out" / "model" / "copy.bin").read_bytes() == b"w"


def test_a_layer_that_does_not_match_its_digest_is_refused(tmp_path: Path, settings: Settings) -> None:
    layer = craft_layer([("model/w.bin", "file", b"weights")])
    place_model(settings.cache_dir, REF, layer, layer_digest="sha256:" + "0" * 64)
    with pytest.raises(IntegrityError):
        api.export(REF, tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists()


def test_garbage_layer_is_a_clear_error(tmp_path: Path, settings: Settings) -> None:
    place_model(settings.cache_dir, REF, b"this is not gzip at all")
    with pytest.raises(UnsafeArchiveError, match="not a valid tar archive"):
        api.export(REF, tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists()


def test_export_is_byte_identical_restores_modes_and_replaces_stale_files(tmp_path: Path, settings: Settings) -> None:
    files = {"weights.bin": os.urandom(100_000), "nested/run.sh": b"#!/bin/sh\n"}
    src = make_model(tmp_path / "src", files, ormbfile="format: Others\nauthor: me\n")
    os.chmod(src / "model" / "nested" / "run.sh", 0o755)
    api.save(src, "m:v1", settings=settings)
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / "weights.bin").write_bytes(b"S" * 500_000)  # longer than the new file: stale bytes
    result = api.export("m:v1", out, settings=settings)
    for name, data in files.items():
        assert (out / "model" / name).read_bytes() == data
    assert os.stat(out / "model" / "nested" / "run.sh").st_mode & 0o777 == 0o755
    assert os.stat(out / "model" / "weights.bin").st_mode & 0o777 == 0o644
    assert "author: me" in (out / "ormbfile.yaml").read_text()
    assert sorted(result.files) == ["model/nested/run.sh", "model/weights.bin"]
    assert not [p for p in out.iterdir() if p.name.startswith(".ormb-export-")]


def test_no_metadata_leaves_out_the_ormbfile(tmp_path: Path, settings: Settings) -> None:
    src = make_model(tmp_path / "src", {"w.bin": b"w"})
    api.save(src, "m:v1", settings=settings)
    api.export("m:v1", tmp_path / "out", metadata=False, settings=settings)
    assert not (tmp_path / "out" / "ormbfile.yaml").exists()


def test_a_layer_corrupt_in_the_middle_of_a_file_is_a_layer_error_not_a_disk_error(
    tmp_path: Path, settings: Settings,
) -> None:
    import gzip
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = os.urandom(3 << 20)
        info = tarfile.TarInfo("model/w.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer = bytearray(gzip.compress(raw.getvalue(), compresslevel=1, mtime=0))
    middle = len(layer) // 2
    layer[middle : middle + 64] = b"\xff" * 64  # the deflate stream breaks inside the file's data
    place_model(settings.cache_dir, REF, bytes(layer))
    with pytest.raises((UnsafeArchiveError, IntegrityError)) as info:
        api.export(REF, tmp_path / "out", settings=settings)
    assert "cannot write" not in str(info.value)
    assert not (tmp_path / "out").exists()
