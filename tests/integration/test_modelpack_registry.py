"""ModelPack through real registries (CNCF distribution and ormb registry serve): other tools' artifacts,
per-file dedupe measured in bytes, mounts, partial pulls, copy, referrers, automatic chunking."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import zstandard
from registries import FaultProxy

from conftest import make_model
from ormb import api
from ormb.config import Settings
from ormb.errors import NotFoundError
from ormb.registry.transport import TransportOptions

pytestmark = pytest.mark.integration
MiB = 1 << 20


def _home(tmp_path: Path, name: str) -> Settings:
    return Settings(home=tmp_path / name, default_registry="localhost:5000")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_raw(host: str, repo: str, tag: str, config: tuple[str, bytes], layers: list[tuple[str, bytes, dict[str, str]]],
             artifact_type: str | None = None, subject: dict[str, Any] | None = None) -> bytes:
    """Push an artifact byte for byte, as another tool would; returns the manifest bytes."""
    def blob(data: bytes) -> None:
        conn = http.client.HTTPConnection(host)
        conn.request("POST", f"/v2/{repo}/blobs/uploads/")
        response = conn.getresponse()
        response.read()
        location = urllib.parse.urljoin(f"http://{host}/", response.headers["Location"])
        parts = urllib.parse.urlsplit(location)
        path = parts.path + "?" + (parts.query + "&" if parts.query else "") + f"digest={sha(data)}"
        conn.request("PUT", path, body=data, headers={"Content-Type": "application/octet-stream"})
        assert conn.getresponse().status == 201
        conn.close()

    blob(config[1])
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}
    if artifact_type:
        manifest["artifactType"] = artifact_type
    manifest["config"] = {"mediaType": config[0], "digest": sha(config[1]), "size": len(config[1])}
    manifest["layers"] = []
    for media_type, data, layer_annotations in layers:
        blob(data)
        entry: dict[str, Any] = {"mediaType": media_type, "digest": sha(data), "size": len(data)}
        if layer_annotations:
            entry["annotations"] = layer_annotations
        manifest["layers"].append(entry)
    if subject:
        manifest["subject"] = subject
    data = json.dumps(manifest).encode()
    conn = http.client.HTTPConnection(host)
    conn.request("PUT", f"/v2/{repo}/manifests/{tag}", body=data,
                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert conn.getresponse().status == 201
    conn.close()
    return data


def tar_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


MP_CONFIG = json.dumps({"descriptor": {"name": "other-tool"}, "config": {"format": "gguf"},
                        "modelfs": {"type": "layers", "diffIds": ["sha256:" + "0" * 64]}}).encode()


def test_modelpack_from_other_tools_old_names_and_tar_variants(tmp_path: Path, registry: Any) -> None:
    weights, readme, code = os.urandom(50_000), b"# hello", b"print('hi')"
    push_raw(registry.host, "other/modctl", "v1", ("application/vnd.cnai.model.config.v1+json", MP_CONFIG), [
        ("application/vnd.cnai.model.weight.v1.raw", weights, {"org.cnai.model.filepath": "model.gguf"}),
        ("application/vnd.cncf.model.weight.v1.tar", tar_of({"shards/part-1.bin": b"part1"}), {}),
        ("application/vnd.cncf.model.doc.v1.tar+gzip", gzip.compress(tar_of({"README.md": readme})), {}),
        ("application/vnd.cncf.model.code.v1.tar+zstd", zstandard.ZstdCompressor().compress(tar_of({"src/run.py": code})), {}),
    ], artifact_type="application/vnd.cnai.model.manifest.v1+json")
    settings = _home(tmp_path, "home")
    ref = f"{registry.host}/other/modctl:v1"
    assert api.inspect_remote(ref, settings=settings).artifact_format == "modelpack"
    api.pull(ref, settings=settings)
    details = api.inspect(ref, settings=settings)
    assert details.metadata.format == "GGUF" and details.files[0] == "model.gguf"
    api.export(ref, tmp_path / "out", settings=settings)
    out = tmp_path / "out"
    assert (out / "model.gguf").read_bytes() == weights
    assert (out / "shards" / "part-1.bin").read_bytes() == b"part1"
    assert (out / "README.md").read_bytes() == readme
    assert (out / "src" / "run.py").read_bytes() == code


def test_kitops_modelkits(tmp_path: Path, registry: Any) -> None:
    kitfile = json.dumps({"manifestVersion": "1.0", "package": {"name": "kit", "authors": ["Kit Author"],
                                                                 "description": "a ModelKit"},
                          "model": {"name": "kit", "path": "models/model.gguf", "framework": "llama.cpp"}}).encode()
    gguf = b"GGUF" + os.urandom(1000)
    push_raw(registry.host, "other/kit", "v1", ("application/vnd.kitops.modelkit.config.v1+json", kitfile), [
        ("application/vnd.kitops.modelkit.model.v1.tar+gzip", gzip.compress(tar_of({"models/model.gguf": gguf})), {}),
        ("application/vnd.kitops.modelkit.docs.v1.tar", tar_of({"README.md": b"kit docs"}), {}),
    ])
    settings = _home(tmp_path, "home")
    ref = f"{registry.host}/other/kit:v1"
    api.pull(ref, settings=settings)
    details = api.inspect(ref, settings=settings)
    assert (details.metadata.author, details.metadata.framework) == ("Kit Author", "llama.cpp")
    api.export(ref, tmp_path / "out", settings=settings)
    assert (tmp_path / "out" / "models" / "model.gguf").read_bytes() == gguf
    assert (tmp_path / "out" / "README.md").read_bytes() == b"kit docs"


def _uploads(proxy: FaultProxy, since: int) -> list[tuple[str, str, int]]:
    return [(m, p, n) for m, p, n, _ in proxy.requests[since:] if m in ("PUT", "PATCH") and "/blobs/uploads/" in p]


def test_a_new_version_uploads_only_the_changed_file(tmp_path: Path, registry: Any) -> None:
    proxy = FaultProxy(registry.port)
    try:
        settings = _home(tmp_path, "home")
        files = {f"w{i}.safetensors": os.urandom(MiB) for i in range(4)}
        src = make_model(tmp_path / "m", files, ormbfile="format: Others\nartifactFormat: modelpack\n")
        api.save(src, f"{proxy.host}/dedupe/llm:v1", settings=settings)
        api.push(f"{proxy.host}/dedupe/llm:v1", settings=settings)
        changed = os.urandom(MiB + 12345)
        (src / "model" / "w2.safetensors").write_bytes(changed)
        saved = api.save(src, f"{proxy.host}/dedupe/llm:v2", settings=settings)
        config_size = int(str(api.inspect(f"{proxy.host}/dedupe/llm:v2", settings=settings).config["size"]))
        start = len(proxy.requests)
        result = api.push(f"{proxy.host}/dedupe/llm:v2", settings=settings)
        uploaded = sum(n for _, _, n in _uploads(proxy, start))
        assert uploaded == len(changed) + config_size  # the one changed file, and the (new) config
        assert len(result.existing) == 3 and result.digest == saved.digest
        assert (result.layers, result.size) == (4, 3 * MiB + len(changed))  # the config is not a layer
    finally:
        proxy.stop()


def test_blobs_are_mounted_across_repositories(tmp_path: Path, registry: Any) -> None:
    proxy = FaultProxy(registry.port)
    try:
        settings = _home(tmp_path, "home")
        src = make_model(tmp_path / "m", {f"w{i}.bin": os.urandom(MiB) for i in range(3)})
        api.save(src, f"{proxy.host}/mount/a:v1", settings=settings, artifact_format="modelpack")
        api.push(f"{proxy.host}/mount/a:v1", settings=settings)
        api.tag(f"{proxy.host}/mount/a:v1", f"{proxy.host}/mount/b:v1", settings=settings)
        start = len(proxy.requests)
        result = api.push(f"{proxy.host}/mount/b:v1", settings=settings)
        assert len(result.mounted) == 4 and result.transferred == ()  # three weights and the config
        assert result.layers == 3  # mounted layers are the model's layers too
        assert sum(n for _, _, n in _uploads(proxy, start)) == 0
        other = _home(tmp_path, "other")
        api.pull(f"{proxy.host}/mount/b:v1", settings=other)
    finally:
        proxy.stop()


def test_partial_pull_fetches_only_matching_files(tmp_path: Path, registry: Any) -> None:
    trainer, server = _home(tmp_path, "trainer"), _home(tmp_path, "server")
    quants = {f"llm.{q}.gguf": b"GGUF" + os.urandom(MiB) for q in ("Q4_K_M", "Q5_K_M", "Q8_0")}
    src = make_model(tmp_path / "m", {**quants, "README.md": b"# llm"})
    ref = f"{registry.host}/partial/llm:v1"
    api.save(src, ref, settings=trainer, artifact_format="modelpack")
    api.push(ref, settings=trainer)
    result = api.pull(ref, include=("*Q4_K_M*",), settings=server)
    assert len(result.left_out) == 3 and result.transferred_bytes < 2 * MiB
    api.export(ref, tmp_path / "q4", include=("*Q4_K_M*",), settings=server)
    assert (tmp_path / "q4" / "llm.Q4_K_M.gguf").read_bytes() == quants["llm.Q4_K_M.gguf"]
    with pytest.raises(NotFoundError, match="pulled with --include"):
        api.export(ref, tmp_path / "all", settings=server)
    assert not (tmp_path / "all").exists()
    listed = {str(m.reference): m for m in api.models(settings=server)}[ref]  # the cache says it is partial
    assert listed.cached_size is not None and listed.cached_size < listed.size
    assert api.models(settings=trainer)[0].cached_size is None
    env = {**os.environ, "ORMB_HOME": str(server.home), "ORMB_NO_PROGRESS": "1"}
    table = subprocess.run([str(Path(sys.executable).with_name("ormb")), "models"], capture_output=True, text=True,
                           env=env, check=True).stdout
    assert "(partial)" in table


def test_copy_between_repositories_and_layout_directories(tmp_path: Path, registry: Any) -> None:
    import shutil
    import subprocess

    settings = _home(tmp_path, "home")
    weights = os.urandom(MiB)
    src = make_model(tmp_path / "m", {"w.bin": weights})
    ref = f"{registry.host}/copy/src:v1"
    saved = api.save(src, ref, settings=settings, artifact_format="modelpack")
    api.push(ref, settings=settings)
    same = api.copy_model(ref, f"{registry.host}/copy/dst:v1", settings=settings)
    assert same.digest == saved.digest and len(same.mounted) == 2  # same registry: config and layer mounted
    assert same.transferred == ()  # nothing sent
    layout = tmp_path / "layout"
    out = api.copy_model(ref, f"oci:{layout}:v1", settings=settings)
    assert out.digest == saved.digest
    umoci = shutil.which("umoci")
    assert umoci, "umoci is installed by scripts/test"
    assert subprocess.run([umoci, "ls", "--layout", str(layout)], capture_output=True, text=True,
                          check=True).stdout.split() == ["v1"]
    back = api.copy_model(f"oci:{layout}:v1", f"{registry.host}/copy/back:v2", settings=settings)
    assert back.digest == saved.digest
    other = _home(tmp_path, "other")
    api.pull(f"{registry.host}/copy/back:v2", settings=other)
    api.export(f"{registry.host}/copy/back:v2", tmp_path / "out", settings=other)
    assert (tmp_path / "out" / "w.bin").read_bytes() == weights


def test_copy_brings_referrers_along(tmp_path: Path, registry: Any, registry_kind: str) -> None:
    settings = _home(tmp_path, "home")
    src = make_model(tmp_path / "m", {"w.bin": b"weights"})
    ref = f"{registry.host}/refs/model:v1"
    saved = api.save(src, ref, settings=settings, artifact_format="modelpack")
    api.push(ref, settings=settings)
    model_manifest = api.inspect(ref, settings=settings)
    subject = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": saved.digest,
               "size": len(json.dumps({}))}
    conn = http.client.HTTPConnection(registry.host)
    conn.request("HEAD", f"/v2/refs/model/manifests/{saved.digest}",
                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    subject["size"] = int(conn.getresponse().headers["Content-Length"])
    conn.close()
    signature = push_raw(registry.host, "refs/model", sha(b"sig-manifest-placeholder").replace(":", "-")[:20],
                         ("application/vnd.oci.empty.v1+json", b"{}"),
                         [("application/vnd.example.signature", b"signed!", {})],
                         artifact_type="application/vnd.example.signature", subject=subject)
    if registry_kind == "distribution":  # no referrers API in 2.8: publish the tag-schema index, as oras does
        index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                           "digest": sha(signature), "size": len(signature),
                                           "artifactType": "application/vnd.example.signature"}]}).encode()
        conn = http.client.HTTPConnection(registry.host)
        conn.request("PUT", f"/v2/refs/model/manifests/{saved.digest.replace(':', '-')}", body=index,
                     headers={"Content-Type": "application/vnd.oci.image.index.v1+json"})
        assert conn.getresponse().status == 201
        conn.close()
    result = api.copy_model(ref, f"{registry.host}/refs/copied:v1", referrers=True, settings=settings)
    assert result.referrers == (sha(signature),)
    conn = http.client.HTTPConnection(registry.host)
    conn.request("HEAD", f"/v2/refs/copied/manifests/{sha(signature)}",
                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert conn.getresponse().status == 200
    assert model_manifest.digest == saved.digest


def test_large_layers_are_uploaded_in_chunks_automatically(tmp_path: Path, registry: Any) -> None:
    proxy = FaultProxy(registry.port)
    try:
        settings = _home(tmp_path, "home")
        src = make_model(tmp_path / "m", {"big.bin": os.urandom(3 * MiB), "small.bin": b"s"})
        ref = f"{proxy.host}/chunks/m:v1"
        api.save(src, ref, settings=settings, artifact_format="modelpack")
        start = len(proxy.requests)
        api.push(ref, settings=settings, options=TransportOptions(chunked_above=MiB))
        patches = [n for m, p, n, _ in proxy.requests[start:] if m == "PATCH"]
        assert sum(patches) == 3 * MiB  # only the big layer, in PATCH requests
        other = _home(tmp_path, "other")
        api.pull(ref, settings=other)
    finally:
        proxy.stop()


def test_the_catalog_page_shows_a_modelpack_model(tmp_path: Path) -> None:
    from registries import EmbeddedRegistry

    registry = EmbeddedRegistry(tmp_path / "registry")
    try:
        settings = _home(tmp_path, "home")
        src = make_model(tmp_path / "m", {"llm.gguf": b"GGUF" + os.urandom(3000), "README.md": b"# llm"},
                         ormbfile="format: GGUF\nauthor: Ada\ndescription: a tiny llm\n")
        ref = f"{registry.host}/catalog/llm:v1"
        api.save(src, ref, settings=settings, artifact_format="modelpack")
        api.push(ref, settings=settings)
        conn = http.client.HTTPConnection(registry.host)
        conn.request("GET", "/model?name=catalog/llm&ref=v1")
        page = conn.getresponse().read().decode()
        for expected in ("llm.gguf", "2.9 KiB", "README.md", "Ada", "a tiny llm", "gguf",
                         "application/vnd.cncf.model.config.v1+json", f"ormb pull localhost:{registry.port}/catalog/llm:v1", "<h1>llm</h1>"):
            assert expected in page, expected
    finally:
        registry.stop()


def test_partial_pull_of_a_file_identical_to_a_left_out_one(tmp_path: Path, registry: Any) -> None:
    """F6: a.bin and b.bin are the same bytes (one blob); 'pull --include a.bin' left it out for b.bin's sake."""
    trainer, server = _home(tmp_path, "trainer"), _home(tmp_path, "server")
    same = os.urandom(5000)
    ref = f"{registry.host}/partial/same:v1"
    api.save(make_model(tmp_path / "m", {"a.bin": same, "b.bin": same}), ref, settings=trainer,
             artifact_format="modelpack")
    api.push(ref, settings=trainer)
    result = api.pull(ref, include=("a.bin",), settings=server)
    assert result.left_out == ()
    api.export(ref, tmp_path / "a", include=("a.bin",), settings=server)
    assert (tmp_path / "a" / "a.bin").read_bytes() == same
