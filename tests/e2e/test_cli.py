"""The ormb command as a user types it: a real process, real files, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import craft_layer, make_model, place_model

ORMB = str(Path(sys.executable).with_name("ormb"))
pytestmark = pytest.mark.e2e


def ormb(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ORMB, *args], capture_output=True, text=True, cwd=cwd, input=stdin, timeout=120)


def test_save_export_round_trip_prints_like_the_original(tmp_path: Path, ormb_home: Path) -> None:
    weights = os.urandom(50_000)
    src = make_model(tmp_path / "fashion", {"saved_model.pb": weights, "variables/variables.index": b"i"},
                     ormbfile="format: SavedModel\nauthor: gaocegege\n")
    saved = ormb("save", str(src), "gaocegege/fashion_model:v1")
    assert saved.returncode == 0, saved.stderr
    lines = saved.stdout.splitlines()
    assert lines[0] == "ref:       localhost:5000/gaocegege/fashion_model:v1"
    assert lines[1].startswith("digest:    sha256:")
    assert lines[2].startswith("size:      ") and lines[2].endswith("KiB")
    assert lines[3] == "format:    SavedModel"
    assert lines[4] == "v1: saved"
    out = tmp_path / "out"
    exported = ormb("export", "gaocegege/fashion_model:v1", "-d", str(out))
    assert exported.returncode == 0, exported.stderr
    assert (out / "model" / "saved_model.pb").read_bytes() == weights
    assert "author: gaocegege" in (out / "ormbfile.yaml").read_text()


def test_models_inspect_tag_remove_prune_and_json(tmp_path: Path, ormb_home: Path) -> None:
    src = make_model(tmp_path / "m", {"model.onnx": b"onnx"}, ormbfile="format: ONNX\n")
    assert ormb("save", str(src), "team/m:v1").returncode == 0
    assert ormb("tag", "team/m:v1", "team/m:prod").returncode == 0
    listed = ormb("list")
    assert listed.returncode == 0
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["REPOSITORY", "TAG", "DIGEST", "FORMAT", "CREATED", "SIZE"]
    assert [row.split()[:2] for row in rows] == [["localhost:5000/team/m", "prod"], ["localhost:5000/team/m", "v1"]]
    as_json = json.loads(ormb("models", "--json").stdout)
    assert {m["reference"] for m in as_json} == {"localhost:5000/team/m:v1", "localhost:5000/team/m:prod"}
    details = json.loads(ormb("inspect", "team/m:v1", "--json").stdout)
    assert details["files"] == ["model/model.onnx"]
    assert details["metadata"]["format"] == "ONNX"
    assert details["layers"][0]["mediaType"] == "application/tar+gzip"
    assert "model/model.onnx" in ormb("inspect", "team/m:v1").stdout
    assert ormb("rm", "team/m:v1", "team/m:prod").returncode == 0
    pruned = json.loads(ormb("prune", "--json").stdout)
    assert pruned["blobs"] == 3
    assert json.loads(ormb("models", "--json").stdout) == []


def test_version_and_help(ormb_home: Path) -> None:
    assert ormb("version").stdout.startswith("ormb ")
    assert json.loads(ormb("version", "--json").stdout)["version"]
    helped = ormb("--help")
    assert helped.returncode == 0
    for command in ("save", "export", "models", "inspect", "tag", "remove", "prune"):
        assert command in helped.stdout
    assert "Exit codes" in helped.stdout


def _assert_one_error_line(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_malformed_ormbfile_is_one_line_with_file_and_line(tmp_path: Path, ormb_home: Path) -> None:
    src = make_model(tmp_path / "m", {"model.onnx": b"x"}, ormbfile="format: ONNX\nauthr: me\n")
    result = ormb("save", str(src), "m:v1")
    _assert_one_error_line(result, 2, "ormbfile.yaml:2", "unknown key 'authr'", "did you mean 'author'?")
    assert not (ormb_home / "cache" / "index.json").exists() or "m:v1" not in (ormb_home / "cache" / "index.json").read_text()


def test_bad_reference_shows_the_accepted_form(tmp_path: Path, ormb_home: Path) -> None:
    src = make_model(tmp_path / "m", {"model.onnx": b"x"})
    _assert_one_error_line(ormb("save", str(src), "Bad/Ref:v1"), 2, "[host[:port]/]repository[:tag]")


def test_wrong_format_says_what_was_expected(tmp_path: Path, ormb_home: Path) -> None:
    src = make_model(tmp_path / "m", {"weights.bin": b"x"}, ormbfile="format: ONNX\n")
    _assert_one_error_line(ormb("save", str(src), "m:v1"), 2, "expected a *.onnx file", "weights.bin")


def test_unknown_reference_exit_code_3(ormb_home: Path) -> None:
    _assert_one_error_line(ormb("export", "nothing:v1", "-d", "x"), 3, "not in the local cache", "ormb models")


def test_unsafe_layer_exit_code_4_and_nothing_written(tmp_path: Path, ormb_home: Path) -> None:
    place_model(ormb_home / "cache", "localhost:5000/evil:v1", craft_layer([("model/../../x", "file", b"x")]))
    result = ormb("export", "evil:v1", "-d", str(tmp_path / "out"))
    _assert_one_error_line(result, 4, "refusing")
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(ormb_home: Path) -> None:
    result = ormb("--debug", "export", "nothing:v1")
    assert result.returncode == 3
    assert "Traceback" in result.stderr


def test_save_without_ormbfile_says_what_it_guessed(tmp_path: Path, ormb_home: Path) -> None:
    src = tmp_path / "loose"
    src.mkdir()
    (src / "model.joblib").write_bytes(b"j")
    result = ormb("save", str(src), "m:v1")
    assert result.returncode == 0, result.stderr
    assert "guessed SKLearn" in result.stderr
    assert sorted(p.name for p in src.iterdir()) == ["model.joblib"]


def test_python_dash_m_works(ormb_home: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "ormb", "version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("ormb ")


def test_check_hashes_every_blob_and_finds_damage_a_forged_stamp_hides(tmp_path: Path, ormb_home: Path) -> None:
    """``ormb check`` trusts no verified stamp: a blob damaged behind a stamp made to match (what a flipped bit
    on the disk or root can do) is found, exit 4, one Error: line naming it."""
    import hashlib

    from ormb.cache import open_cache
    from ormb.config import load_settings

    weights = os.urandom(200_000)
    saved = ormb("save", str(make_model(tmp_path / "m", {"w.bin": weights})), "team/m:v1", "--format", "modelpack")
    assert saved.returncode == 0, saved.stderr
    ok = ormb("check")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("Checked ") and "all match their digests" in ok.stdout
    cache = open_cache(load_settings())
    digest = f"sha256:{hashlib.sha256(weights).hexdigest()}"
    blob = cache.blob_path(digest)
    with open(blob, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 8)
    assert cache.stamps is not None
    cache.stamps.record(digest, blob.stat())  # the forgery: the stamp now matches the damaged file
    found = ormb("check")
    assert found.returncode == 4
    assert found.stderr.startswith("Error: 1 of ") and digest in found.stderr and len(found.stderr.splitlines()) == 1
    refused = ormb("export", "team/m:v1", "-d", str(tmp_path / "out"))  # the check dropped the stamp
    assert refused.returncode == 4 and "does not match its digest" in refused.stderr
