"""skopeo and ormb read each other's pushes through a real registry."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from registries import Distribution

from conftest import make_model
from ormb import api
from ormb.config import Settings

pytestmark = pytest.mark.integration


def _skopeo() -> str:
    path = shutil.which("skopeo")
    if path is None:
        pytest.fail("skopeo is not installed; run scripts/test, which installs it")
    return path


def test_skopeo_fetches_what_ormb_pushed(tmp_path: Path, settings: Settings, registry: Distribution) -> None:
    ref = f"{registry.host}/interop/pushed:v1"
    saved = api.save(make_model(tmp_path / "m", {"w.bin": os.urandom(50_000)}), ref, settings=settings)
    api.push(ref, settings=settings)
    subprocess.run([_skopeo(), "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'oci'}:v1"],
                   check=True, capture_output=True)
    raw = subprocess.run([_skopeo(), "inspect", "--raw", f"oci:{tmp_path / 'oci'}:v1"], check=True,
                         capture_output=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == saved.digest


def test_ormb_pulls_what_skopeo_pushed_from_an_ormb_cache(
    tmp_path: Path, settings: Settings, registry: Distribution,
) -> None:
    weights = os.urandom(50_000)
    api.save(make_model(tmp_path / "m", {"w.bin": weights}), "localhost:5000/interop/src:v1", settings=settings)
    target = f"{registry.host}/interop/by-skopeo:v1"
    subprocess.run([_skopeo(), "copy", "--dest-tls-verify=false",
                    f"oci:{settings.cache_dir}:localhost:5000/interop/src:v1", f"docker://{target}"],
                   check=True, capture_output=True)
    other = Settings(home=tmp_path / "other", default_registry="localhost:5000")
    api.pull(target, settings=other)
    api.export(target, tmp_path / "out", settings=other)
    assert (tmp_path / "out" / "model" / "w.bin").read_bytes() == weights
