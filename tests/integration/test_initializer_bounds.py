"""The storage initializer streams layers from a registry that may lie about their sizes (F1 of the second
security review): the manifest's sizes are not verified until a blob has been read, so no limit may
trust them.  A hostile registry (tests/hostile.py) serves a manifest that declares 1 TiB for a layer of a
few KiB that unpacks to 8 MiB (the default floor of 1 GiB is lowered to 1 MiB so the bound shows without
writing a GiB)."""

from __future__ import annotations

import hashlib
import importlib
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from hostile import PASSWORD, USER, HostileRegistry

from conftest import craft_tar
from ormb.config import Settings
from ormb.errors import IntegrityError, UnsafeArchiveError
from ormb.model import modelpack
from ormb.registry.transport import TransportOptions
from ormb.serving.initializer import pull_and_export

pytestmark = pytest.mark.integration
TIB = 1 << 40


@pytest.fixture
def hostile(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostileRegistry]:
    registry = HostileRegistry(auth="basic")
    monkeypatch.setenv("ORMB_USERNAME", USER)
    monkeypatch.setenv("ORMB_PASSWORD", PASSWORD)
    for name in ("ormb.model.unpack", "ormb.model.budget"):  # the 1 GiB floor, lowered
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "MIN_EXPAND"):
            monkeypatch.setattr(module, "MIN_EXPAND", 1 << 20)
    yield registry
    registry.stop()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _serve(registry: HostileRegistry, layer: bytes, packing: str, declared: int) -> str:
    """A ModelPack model whose one layer is ``layer`` but declared ``declared`` bytes long."""
    config = b'{"descriptor":{"name":"x"},"config":{},"modelfs":{"type":"layers","diffIds":[]}}'
    registry.blobs[_sha(config)] = config
    registry.blobs[_sha(layer)] = layer
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": modelpack.ARTIFACT_TYPE,
        "config": {"mediaType": modelpack.CONFIG, "digest": _sha(config), "size": len(config)},
        "layers": [{"mediaType": modelpack.layer_type("weight", packing), "digest": _sha(layer), "size": declared}],
    }).encode()
    registry.manifests["evil/model:v1"] = (manifest, "application/vnd.oci.image.manifest.v1+json")
    return f"{registry.host}/evil/model:v1"


def _bomb() -> bytes:
    info = tarfile.TarInfo("zeros.bin")
    info.size = 8 << 20
    return zstandard.ZstdCompressor().compress(info.tobuf(tarfile.PAX_FORMAT) + bytes(info.size) + bytes(1024))


def _initialize(tmp_path: Path, source: str) -> None:
    pull_and_export(source, tmp_path / "dest", layout="mlflow", settings=Settings(home=tmp_path / "home",
                                                                                   default_registry="x"),
                    options=TransportOptions(retries=1, backoff=0.01))


def test_a_blob_whose_length_differs_from_the_manifest_is_refused_before_it_is_read(
    tmp_path: Path, hostile: HostileRegistry,
) -> None:
    source = _serve(hostile, _bomb(), "tar+zstd", TIB)
    with pytest.raises(IntegrityError, match="declares 1099511627776") as info:
        _initialize(tmp_path, source)
    assert "run the same command again" not in str(info.value)
    assert not (tmp_path / "dest").exists()


def test_a_bomb_sent_without_a_length_is_bounded_by_the_bytes_received(tmp_path: Path,
                                                                       hostile: HostileRegistry) -> None:
    hostile.blobs_chunked = True  # no Content-Length: the declared 1 TiB cannot be checked before reading
    source = _serve(hostile, _bomb(), "tar+zstd", TIB)
    with pytest.raises(UnsafeArchiveError, match="expands to more than 1.0 MiB"):
        _initialize(tmp_path, source)
    assert not (tmp_path / "dest").exists()


def test_a_blob_that_ends_before_its_declared_size_says_so(tmp_path: Path, hostile: HostileRegistry) -> None:
    hostile.blobs_chunked = True
    layer = craft_tar([("w.bin", "file", b"weights")])
    source = _serve(hostile, layer, "tar", len(layer) + 1000)
    with pytest.raises(IntegrityError, match=f"after {len(layer)} of {len(layer) + 1000} bytes") as info:
        _initialize(tmp_path, source)
    assert "run the same command again" not in str(info.value)
    assert not (tmp_path / "dest").exists()
