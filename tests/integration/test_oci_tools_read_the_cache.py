"""Other OCI tools read ormb's cache: skopeo and umoci (installed by the test command)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import make_model
from ormb import api
from ormb.config import Settings

pytestmark = pytest.mark.integration


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:  # the test command installs it: missing is a failure, never a skip
        pytest.fail(f"{name} is not installed; run scripts/test, which installs it")
    return path


def test_skopeo_copies_a_model_out_of_the_cache(tmp_path: Path, settings: Settings) -> None:
    src = make_model(tmp_path / "m", {"model.onnx": b"onnx" * 1000}, ormbfile="format: ONNX\n")
    saved = api.save(src, "team/m:v1", settings=settings)
    cache = settings.cache_dir
    dest = tmp_path / "copy"
    subprocess.run(
        [_tool("skopeo"), "copy", f"oci:{cache}:localhost:5000/team/m:v1", f"oci:{dest}:v1"],
        check=True, capture_output=True,
    )
    raw = subprocess.run(
        [_tool("skopeo"), "inspect", "--raw", f"oci:{dest}:v1"], check=True, capture_output=True
    ).stdout
    assert "sha256:" + __import__("hashlib").sha256(raw).hexdigest() == saved.digest
    assert json.loads(raw)["config"]["mediaType"] == "application/vnd.caicloud.model.config.v1alpha1+json"


def test_umoci_lists_the_cache(tmp_path: Path, settings: Settings) -> None:
    src = make_model(tmp_path / "m", {"w.bin": b"w"})
    api.save(src, "team/m:v1", settings=settings)
    api.save(src, "team/m:v2", settings=settings)
    listed = subprocess.run(
        [_tool("umoci"), "ls", "--layout", str(settings.cache_dir)], check=True, capture_output=True, text=True
    ).stdout.split()
    assert listed == ["localhost:5000/team/m:v1", "localhost:5000/team/m:v2"]


def test_a_layout_written_by_skopeo_is_readable_by_ormb(tmp_path: Path, settings: Settings) -> None:
    src = make_model(tmp_path / "m", {"w.bin": b"weights"})
    api.save(src, "team/m:v1", settings=settings)
    subprocess.run(
        [_tool("skopeo"), "copy", f"oci:{settings.cache_dir}:localhost:5000/team/m:v1",
         f"oci:{settings.cache_dir}:localhost:5000/team/m:copied"],
        check=True, capture_output=True,
    )
    api.export("team/m:copied", tmp_path / "out", settings=settings)
    assert (tmp_path / "out" / "model" / "w.bin").read_bytes() == b"weights"
