"""Verified stamps with a real registry: a pull verifies and stores each blob, so the export that follows copies
it without hashing it again; ``ormb rm`` + ``ormb prune`` leave no stamp of a removed blob."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from conftest import make_model
from ormb import api
from ormb.cache import open_cache
from ormb.config import Settings
from ormb.content import stamps
from ormb.content.background import FileDigest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("artifact_format", ["ormb", "modelpack"])
def test_export_after_pull_reads_no_blob_to_hash_it_and_prune_forgets_the_stamps(
        tmp_path: Path, registry: Any, monkeypatch: pytest.MonkeyPatch, artifact_format: str) -> None:
    trainer = Settings(home=tmp_path / "trainer", default_registry="localhost:5000")
    server = Settings(home=tmp_path / "server", default_registry="localhost:5000")
    weights, config = os.urandom((2 << 20) + 5), b'{"a": 1}'
    ref = f"{registry.host}/team/stamped-{artifact_format}:v1"
    api.save(make_model(tmp_path / "m", {"w.bin": weights, "config.json": config}), ref, settings=trainer,
             artifact_format=artifact_format)
    api.push(ref, settings=trainer)
    api.pull(ref, settings=server)

    cache = open_cache(server)
    assert cache.stamps is not None
    pulled = set(cache.blob_digests())
    assert pulled and all(cache.stamps.matches(d, os.stat(cache.blob_path(d))) for d in pulled)

    hashed: list[int] = []

    class Counting(FileDigest):
        def result(self) -> tuple[int, str]:
            read, digest = super().result()
            hashed.append(read)
            return read, digest

    monkeypatch.setattr(stamps, "FileDigest", Counting)
    api.export(ref, tmp_path / "out", settings=server)
    root = tmp_path / "out" / ("model" if artifact_format == "ormb" else "")
    assert (root / "w.bin").read_bytes() == weights and (root / "config.json").read_bytes() == config
    assert hashed == []  # the pull's verification stands: not one blob read again to be hashed

    api.remove(ref, settings=server)
    assert api.prune(settings=server).blobs == len(pulled)
    left = sorted(p.name for p in (cache.stamps.directory / "sha256").iterdir())
    assert left == [] and not any(d.partition(":")[2] in left for d in pulled)
