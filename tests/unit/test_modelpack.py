"""ModelPack packing and reading, in the cache (no network)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path, PurePosixPath

import pytest

from conftest import make_model
from ormb import api
from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.content.target import fetch_bytes, push_bytes
from ormb.errors import NotFoundError, UnsafeArchiveError
from ormb.model import modelpack
from ormb.oci.descriptor import Descriptor, Manifest

FILES = {"model.safetensors": b"\x02\x00\x00\x00\x00\x00\x00\x00{}" + os.urandom(5000), "config.json": b"{}",
         "tokenizer.json": b"{}", "README.md": b"# m", "train.py": b"print()", "data/train.csv": b"a,b"}


def _manifest(settings: Settings, ref: str) -> tuple[Manifest, dict[str, object]]:
    cache = OCILayout(settings.cache_dir)
    manifest = Manifest.from_bytes(fetch_bytes(cache, cache.resolve(ref)))
    return manifest, json.loads(fetch_bytes(cache, manifest.config))


def _check_config_schema(config: dict[str, object]) -> None:
    """The rules of the spec's config schema (schema/config-schema.json): required parts, no extra keys."""
    assert set(config) == {"descriptor", "config", "modelfs"}
    descriptor, settings, modelfs = config["descriptor"], config["config"], config["modelfs"]
    assert isinstance(descriptor, dict) and isinstance(settings, dict) and isinstance(modelfs, dict)
    assert set(descriptor) <= {"createdAt", "authors", "family", "name", "docURL", "sourceURL", "datasetsURL",
                               "version", "revision", "vendor", "licenses", "title", "description"}
    assert isinstance(descriptor.get("name"), str) and descriptor["name"]
    assert set(settings) <= {"architecture", "format", "paramSize", "precision", "quantization",
                             "transformerConfig", "capabilities"}
    assert set(modelfs) == {"type", "diffIds"} and modelfs["type"] == "layers"
    assert isinstance(modelfs["diffIds"], list) and len(modelfs["diffIds"]) >= 1


def test_save_writes_a_valid_modelpack_artifact(tmp_path: Path, settings: Settings) -> None:
    src = make_model(tmp_path / "m", FILES, ormbfile="format: SafeTensors\nauthor: Ada\nframework: PyTorch\n"
                     "description: tiny\nartifactFormat: modelpack\n")
    api.save(src, "team/tiny:v1", settings=settings)
    manifest, config = _manifest(settings, "localhost:5000/team/tiny:v1")
    assert manifest.artifact_type == "application/vnd.cncf.model.manifest.v1+json"
    assert manifest.config.media_type == "application/vnd.cncf.model.config.v1+json"
    _check_config_schema(config)
    assert config["descriptor"] == {"name": "tiny", "version": "v1", "authors": ["Ada"], "description": "tiny"}
    assert config["config"] == {"format": "safetensors"}
    by_path = {layer.annotations["org.cncf.model.filepath"]: layer for layer in manifest.layers}
    assert {p: d.media_type.rsplit(".model.", 1)[1] for p, d in by_path.items()} == {
        "README.md": "doc.v1.raw", "config.json": "weight.config.v1.raw", "data/train.csv": "dataset.v1.raw",
        "model.safetensors": "weight.v1.raw", "tokenizer.json": "weight.config.v1.raw", "train.py": "code.v1.raw",
    }
    assert config["modelfs"]["diffIds"] == [layer.digest for layer in manifest.layers]  # type: ignore[index]
    blob = fetch_bytes(OCILayout(settings.cache_dir), by_path["model.safetensors"], limit=1 << 20)
    assert blob == FILES["model.safetensors"]  # raw: no tar, no compression
    file_meta = json.loads(by_path["model.safetensors"].annotations["org.cncf.model.file.metadata+json"])
    assert file_meta == {"name": "model.safetensors", "mode": 0o644, "uid": 0, "gid": 0, "size": len(blob),
                         "mtime": "1970-01-01T00:00:00Z", "typeflag": 48}
    ormb_meta = json.loads(manifest.annotations["io.ormb.model.metadata+json"])
    assert ormb_meta["framework"] == "PyTorch"  # what the schema has no field for travels with the manifest
    assert api.inspect("team/tiny:v1", settings=settings).metadata.framework == "PyTorch"


def test_modelpack_is_reproducible_and_deduplicated_per_file(tmp_path: Path, settings: Settings) -> None:
    a = make_model(tmp_path / "a", FILES, ormbfile="format: SafeTensors\n")
    b = make_model(tmp_path / "elsewhere" / "b", FILES, ormbfile="format: SafeTensors\n")
    for path in (b / "model").rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    first = api.save(a, "team/m:v1", settings=settings, artifact_format="modelpack")
    second = api.save(b, "team/m:v1", settings=settings, artifact_format="modelpack")
    assert first.digest == second.digest
    blobs_before = len(list((settings.cache_dir / "blobs" / "sha256").iterdir()))
    (b / "model" / "README.md").write_bytes(b"# changed")
    api.save(b, "team/m:v2", settings=settings, artifact_format="modelpack")
    # one new file blob, a new config (diffIds changed) and a new manifest; the weights are shared
    assert len(list((settings.cache_dir / "blobs" / "sha256").iterdir())) == blobs_before + 3


def test_export_lays_out_the_files_and_include_selects(tmp_path: Path, settings: Settings) -> None:
    src = make_model(tmp_path / "m", FILES)
    api.save(src, "team/m:v1", settings=settings, artifact_format="modelpack")
    api.export("team/m:v1", tmp_path / "all", settings=settings)
    for name, data in FILES.items():
        assert (tmp_path / "all" / name).read_bytes() == data
    only = api.export("team/m:v1", tmp_path / "only", include=("*.safetensors", "config.json"), settings=settings)
    assert sorted(only.files) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "only").iterdir()) == ["config.json", "model.safetensors", "ormbfile.yaml"]
    with pytest.raises(NotFoundError, match="no file"):
        api.export("team/m:v1", tmp_path / "none", include=("*.gguf",), settings=settings)
    assert not (tmp_path / "none").exists()


def _hostile(settings: Settings, ref: str, layers: list[tuple[bytes, dict[str, str]]]) -> None:
    cache = OCILayout(settings.cache_dir)
    config = b'{"descriptor":{"name":"x"},"config":{},"modelfs":{"type":"layers","diffIds":["sha256:0"]}}'
    config_desc = Descriptor.of_bytes(modelpack.CONFIG, config)
    push_bytes(cache, config_desc, config)
    descs = []
    for data, layer_annotations in layers:
        desc = Descriptor.of_bytes(modelpack.layer_type("weight"), data, layer_annotations)
        cache.push(desc, io.BytesIO(data))
        descs.append(desc)
    manifest = Manifest(config_desc, tuple(descs), artifact_type=modelpack.ARTIFACT_TYPE)
    data = manifest.to_bytes()
    desc = Descriptor.of_bytes("application/vnd.oci.image.manifest.v1+json", data)
    push_bytes(cache, desc, data)
    cache.tag(desc, ref)


@pytest.mark.parametrize(("case", "layers", "message"), [
    ("absolute", [(b"x", {"org.cncf.model.filepath": "/etc/passwd"})], "absolute"),
    ("dot-dot", [(b"x", {"org.cncf.model.filepath": "a/../../evil"})], "'..'"),
    ("duplicate", [(b"x", {"org.cncf.model.filepath": "w.bin"}), (b"y", {"org.cncf.model.filepath": "w.bin"})],
     "two layers"),
    ("missing annotation", [(b"x", {})], "has no org.cncf.model.filepath"),
    ("old names, dot-dot", [(b"x", {"org.cnai.model.filepath": "../x"})], "'..'"),
])
def test_hostile_modelpack_layers_are_refused_and_nothing_is_written(
    tmp_path: Path, settings: Settings, case: str, layers: list[tuple[bytes, dict[str, str]]], message: str,
) -> None:
    _hostile(settings, "localhost:5000/evil/mp:v1", [(b"good", {"org.cncf.model.filepath": "good.bin"}), *layers])
    with pytest.raises(UnsafeArchiveError, match=message):
        api.export("evil/mp:v1", tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "evil").exists()


def test_classification() -> None:
    kinds = {name: modelpack.classify(PurePosixPath(name)) for name in (
        "weights.gguf", "model-00001-of-00002.safetensors", "generation_config.json", "tokenizer.model", "LICENSE",
        "docs/guide.md", "infer.py", "data/eval.jsonl", "merges.txt")}
    assert kinds == {"weights.gguf": "weight", "model-00001-of-00002.safetensors": "weight",
                     "generation_config.json": "weight.config", "tokenizer.model": "weight.config",
                     "LICENSE": "doc", "docs/guide.md": "doc", "infer.py": "code", "data/eval.jsonl": "dataset",
                     "merges.txt": "weight.config"}
