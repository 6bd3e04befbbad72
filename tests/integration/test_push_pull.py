"""push / pull / inspect --remote / tags against a real CNCF distribution."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from registries import Distribution

from conftest import make_model
from ormb import api
from ormb.config import Settings
from ormb.errors import NotFoundError
from ormb.registry.transport import TransportOptions

pytestmark = pytest.mark.integration


def _settings(tmp_path: Path, name: str) -> Settings:
    return Settings(home=tmp_path / name, default_registry="localhost:5000")


def _raw_manifest(host: str, repo: str, tag: str) -> tuple[bytes, str]:
    request = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}",
                                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(request) as response:
        return response.read(), response.headers["Content-Type"]


def test_round_trip_between_two_machines(tmp_path: Path, registry: Distribution) -> None:
    trainer, server = _settings(tmp_path, "trainer"), _settings(tmp_path, "server")
    weights = os.urandom(3 << 20)
    src = make_model(tmp_path / "m", {"model.onnx": weights, "labels.txt": b"a\nb\n"}, ormbfile="format: ONNX\n")
    ref = f"{registry.host}/team/roundtrip:v1"
    saved = api.save(src, ref, settings=trainer)
    pushed = api.push(ref, settings=trainer)
    assert (pushed.digest, pushed.layers, len(pushed.transferred)) == (saved.digest, 1, 2)
    pulled = api.pull(ref, settings=server)
    assert pulled.digest == saved.digest and pulled.updated
    api.export(ref, tmp_path / "out", settings=server)
    assert (tmp_path / "out" / "model" / "model.onnx").read_bytes() == weights
    again = api.pull(ref, settings=server)
    assert again.transferred == () and not again.updated  # repeat pulls move no bytes
    repush = api.push(ref, settings=trainer)
    assert repush.transferred == () and repush.transferred_bytes == 0


def test_what_ormb_pushes_has_the_shape_the_original_ormb_pulls(tmp_path: Path, registry: Distribution) -> None:
    settings = _settings(tmp_path, "home")
    src = make_model(tmp_path / "m", {"saved_model.pb": b"pb", "variables/v.index": b"i"},
                     ormbfile="format: SavedModel\nauthor: me\n")
    ref = f"{registry.host}/compat/shape:v1"
    api.save(src, ref, settings=settings)
    api.push(ref, settings=settings)
    raw, content_type = _raw_manifest(registry.host, "compat/shape", "v1")
    manifest = json.loads(raw)
    assert content_type == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["schemaVersion"] == 2
    assert manifest["config"]["mediaType"] == "application/vnd.caicloud.model.config.v1alpha1+json"
    assert [layer["mediaType"] for layer in manifest["layers"]] == ["application/tar+gzip"]
    details = api.inspect_remote(ref, settings=settings)
    assert details.metadata.author == "me"
    assert details.files == ("model/saved_model.pb", "model/variables/v.index")


def test_chunked_upload(tmp_path: Path, registry: Distribution) -> None:
    settings = _settings(tmp_path, "home")
    weights = os.urandom((5 << 20) + 12345)
    src = make_model(tmp_path / "m", {"w.bin": weights})
    ref = f"{registry.host}/team/chunked:v1"
    api.save(src, ref, settings=settings)
    pushed = api.push(ref, settings=settings, options=TransportOptions(chunk_size=1 << 20))
    assert len(pushed.transferred) == 2
    other = _settings(tmp_path, "other")
    api.pull(ref, settings=other)
    api.export(ref, tmp_path / "out", settings=other)
    assert hashlib.sha256((tmp_path / "out" / "model" / "w.bin").read_bytes()).digest() == \
        hashlib.sha256(weights).digest()


def test_tags_are_listed_across_pages(tmp_path: Path, registry: Distribution) -> None:
    settings = _settings(tmp_path, "home")
    src = make_model(tmp_path / "m", {"w.bin": b"w"})
    names = [f"v{i}" for i in range(7)]
    for name in names:
        ref = f"{registry.host}/team/paged:{name}"
        api.save(src, ref, settings=settings)
        api.push(ref, settings=settings)
    from ormb.registry.client import Registry
    from ormb.registry.remote import RemoteRepository

    repo = RemoteRepository(Registry(registry.host), "team/paged")
    assert sorted(repo.tags(page_size=3)) == names  # 3 pages of at most 3
    assert sorted(api.tags(f"{registry.host}/team/paged", settings=settings)) == names


def test_unknown_tag_and_repository_are_clear(tmp_path: Path, registry: Distribution) -> None:
    settings = _settings(tmp_path, "home")
    src = make_model(tmp_path / "m", {"w.bin": b"w"})
    api.save(src, f"{registry.host}/team/known:v1", settings=settings)
    api.push(f"{registry.host}/team/known:v1", settings=settings)
    with pytest.raises(NotFoundError, match="manifest team/known:nope: manifest unknown"):
        api.pull(f"{registry.host}/team/known:nope", settings=settings)
    with pytest.raises(NotFoundError, match="team/never-pushed"):
        api.pull(f"{registry.host}/team/never-pushed:v1", settings=settings)


def test_original_ormb_artifacts_pull_and_export(tmp_path: Path, registry: Distribution) -> None:
    """An artifact as the original ormb (Go, oras) pushed it, built byte for byte from the spec."""
    import gzip
    import io
    import tarfile
    import urllib.request

    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in (("model/saved_model.pb", b"graph"), ("model/variables/variables.index", b"idx")):
            info = tarfile.TarInfo(name)  # Go's FileInfoHeader: real mode, owner and mtime
            info.size, info.mode, info.mtime, info.uname, info.gname, info.uid = len(data), 0o664, 1591000000, "u", "g", 1000
            tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(tar_bytes.getvalue())
    config = json.dumps({"author": "caicloud", "created": "2020-06-01T08:00:00Z", "format": "SavedModel",
                         "directoryStructure": ["model/saved_model.pb", "model/variables/variables.index"]},
                        separators=(",", ":")).encode()

    def put_blob(data: bytes) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        post = urllib.request.Request(f"http://{registry.host}/v2/caicloud/fashion/blobs/uploads/", method="POST")
        with urllib.request.urlopen(post) as response:
            location = urllib.parse.urljoin(f"http://{registry.host}/", response.headers["Location"])
        separator = "&" if "?" in location else "?"
        put = urllib.request.Request(f"{location}{separator}digest={digest}", data=data, method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})
        urllib.request.urlopen(put).close()
        return {"digest": digest, "size": len(data)}

    manifest = json.dumps({  # image-spec v1.0 Go struct: no mediaType field
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.caicloud.model.config.v1alpha1+json", **put_blob(config)},
        "layers": [{"mediaType": "application/tar+gzip", **put_blob(layer)}],
    }).encode()
    urllib.request.urlopen(urllib.request.Request(
        f"http://{registry.host}/v2/caicloud/fashion/manifests/v1", data=manifest, method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})).close()

    settings = _settings(tmp_path, "home")
    ref = f"{registry.host}/caicloud/fashion:v1"
    api.pull(ref, settings=settings)
    assert api.inspect(ref, settings=settings).metadata.author == "caicloud"
    api.export(ref, tmp_path / "out", settings=settings)
    assert (tmp_path / "out" / "model" / "saved_model.pb").read_bytes() == b"graph"
    assert (tmp_path / "out" / "model" / "variables" / "variables.index").read_bytes() == b"idx"
