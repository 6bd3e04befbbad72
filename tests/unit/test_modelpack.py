"""ModelPack packing and reading, in the cache (no network)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from modelpack_schema import check_config

from conftest import make_model
from ormb import api
from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.content.target import fetch_bytes, push_bytes
from ormb.errors import NotFoundError, UnsafeArchiveError
from ormb.model import classify, modelpack
from ormb.oci.descriptor import Descriptor, Manifest

FILES = {"model.safetensors": b"\x02\x00\x00\x00\x00\x00\x00\x00{}" + os.urandom(5000), "config.json": b"{}",
         "tokenizer.json": b"{}", "README.md": b"# m", "train.py": b"print()", "data/train.csv": b"a,b"}


def _manifest(settings: Settings, ref: str) -> tuple[Manifest, dict[str, Any]]:
    cache = OCILayout(settings.cache_dir)
    manifest = Manifest.from_bytes(fetch_bytes(cache, cache.resolve(ref)))
    return manifest, json.loads(fetch_bytes(cache, manifest.config))


def test_the_schema_check_is_real() -> None:
    """The validator the tests use refuses what the schema refuses, formats included."""
    good = {"descriptor": {"name": "m", "createdAt": "2024-01-01T00:00:00Z"}, "config": {},
            "modelfs": {"type": "layers", "diffIds": ["sha256:" + "0" * 64]}}
    check_config(good)
    for bad in ({**good, "extra": 1}, {**good, "descriptor": {"name": "m", "createdAt": "yesterday"}},
                {**good, "descriptor": {"name": ""}}, {**good, "config": {"capabilities": {"languages": ["eng"]}}},
                {**good, "modelfs": {"type": "layers", "diffIds": []}}):
        with pytest.raises(jsonschema.ValidationError):
            check_config(bad)


def test_save_writes_a_valid_modelpack_artifact(tmp_path: Path, settings: Settings) -> None:
    src = make_model(tmp_path / "m", FILES, ormbfile="format: SafeTensors\nauthor: Ada\nframework: PyTorch\n"
                     "description: tiny\ncreated: 2024-05-01T10:00:00+02:00\nartifactFormat: modelpack\n")
    api.save(src, "team/tiny:v1", settings=settings)
    manifest, config = _manifest(settings, "localhost:5000/team/tiny:v1")
    assert manifest.artifact_type == "application/vnd.cncf.model.manifest.v1+json"
    assert manifest.config.media_type == "application/vnd.cncf.model.config.v1+json"
    check_config(config)
    # no version: the tag is not the model's version (two tags, one artifact)
    assert config["descriptor"] == {"name": "tiny", "authors": ["Ada"], "description": "tiny",
                                    "createdAt": "2024-05-01T08:00:00Z"}
    assert config["config"] == {"format": "safetensors"}
    kinds = [(layer.annotations["org.cncf.model.filepath"], layer.media_type.rsplit(".model.", 1)[1])
             for layer in manifest.layers]
    assert kinds == [  # weights first (Docker Model Runner takes the first weight layer), then by kind and path
        ("model.safetensors", "weight.v1.raw"), ("config.json", "weight.config.v1.raw"),
        ("tokenizer.json", "weight.config.v1.raw"), ("train.py", "code.v1.raw"), ("README.md", "doc.v1.raw"),
        ("data/train.csv", "doc.v1.raw"),
    ]
    for layer in manifest.layers:
        assert layer.annotations["org.opencontainers.image.title"] == layer.annotations["org.cncf.model.filepath"]
        assert "org.cncf.model.file.mediatype.untested" not in layer.annotations  # every kind here is known
    assert config["modelfs"]["diffIds"] == [layer.digest for layer in manifest.layers]
    weights = manifest.layers[0]
    blob = fetch_bytes(OCILayout(settings.cache_dir), weights, limit=1 << 20)
    assert blob == FILES["model.safetensors"]  # raw: no tar, no compression
    file_meta = json.loads(weights.annotations["org.cncf.model.file.metadata+json"])
    assert file_meta == {"name": "model.safetensors", "mode": 0o644, "uid": 0, "gid": 0, "size": len(blob),
                         "mtime": "1970-01-01T00:00:00Z", "typeflag": 48}
    ormb_meta = json.loads(manifest.annotations["io.ormb.model.metadata+json"])
    assert ormb_meta["framework"] == "PyTorch"  # what the schema has no field for travels with the manifest
    assert "artifactFormat" not in ormb_meta
    details = api.inspect("team/tiny:v1", settings=settings)
    assert details.metadata.framework == "PyTorch"
    assert details.created == datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)  # the model's own date


def test_same_directory_under_two_tags_is_one_artifact(tmp_path: Path, settings: Settings) -> None:
    src = make_model(tmp_path / "m", FILES, ormbfile="format: SafeTensors\nartifactFormat: modelpack\n")
    first = api.save(src, "team/m:v1", settings=settings)
    second = api.save(src, "team/m:latest", settings=settings)
    assert first.digest == second.digest
    third = api.save(src, "team/m:cnai", settings=settings, modelpack_names="cnai")
    assert third.digest != first.digest


def test_modelpack_block_fills_the_config_harbor_and_model_runner_read(tmp_path: Path, settings: Settings) -> None:
    ormbfile = """\
format: SafeTensors
author: Qwen Team
artifactFormat: modelpack
modelpack:
  name: qwen3-0.6b
  version: "3.0"
  family: qwen3
  title: Qwen3 0.6B
  vendor: Alibaba
  licenses: [Apache-2.0]
  sourceURL: https://huggingface.co/Qwen/Qwen3-0.6B
  revision: c1899de
  docURL: https://qwenlm.github.io
  architecture: transformer
  paramSize: 0.6B
  precision: bf16
  quantization: none
  capabilities:
    inputTypes: [text]
    outputTypes: [text]
    reasoning: true
    toolUsage: true
    languages: [en, zh]
    knowledgeCutoff: 2024-12-01
"""
    src = make_model(tmp_path / "m", FILES, ormbfile=ormbfile)
    api.save(src, "team/any-name:v9", settings=settings)
    _, config = _manifest(settings, "localhost:5000/team/any-name:v9")
    check_config(config)
    assert config["descriptor"] == {
        "name": "qwen3-0.6b", "version": "3.0", "family": "qwen3", "title": "Qwen3 0.6B", "vendor": "Alibaba",
        "licenses": ["Apache-2.0"], "sourceURL": "https://huggingface.co/Qwen/Qwen3-0.6B", "revision": "c1899de",
        "docURL": "https://qwenlm.github.io", "authors": ["Qwen Team"]}
    assert config["config"] == {
        "format": "safetensors", "architecture": "transformer", "paramSize": "0.6B", "precision": "bf16",
        "quantization": "none", "capabilities": {"inputTypes": ["text"], "outputTypes": ["text"], "reasoning": True,
                                                 "toolUsage": True, "languages": ["en", "zh"],
                                                 "knowledgeCutoff": "2024-12-01T00:00:00Z"}}
    # and back: inspect shows the block, export writes it into ormbfile.yaml
    block = api.inspect("team/any-name:v9", settings=settings).metadata.modelpack
    assert block is not None and block.family == "qwen3" and block.capabilities is not None
    api.export("team/any-name:v9", tmp_path / "out", settings=settings)
    exported = yaml.safe_load((tmp_path / "out" / "ormbfile.yaml").read_text())
    assert exported["modelpack"]["paramSize"] == "0.6B" and exported["artifactFormat"] == "modelpack"


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
_BLOCKS = st.fixed_dictionaries({}, optional={
    "name": _TEXT, "version": _TEXT, "family": _TEXT, "title": _TEXT, "vendor": _TEXT, "revision": _TEXT,
    "licenses": st.lists(_TEXT, max_size=3), "sourceURL": _TEXT, "docURL": _TEXT,
    "datasetsURL": st.lists(_TEXT, max_size=2), "architecture": _TEXT, "paramSize": _TEXT, "precision": _TEXT,
    "quantization": _TEXT,
    "capabilities": st.fixed_dictionaries({}, optional={
        "inputTypes": st.lists(st.sampled_from(["text", "image", "audio", "video", "embedding", "other"])),
        "outputTypes": st.lists(st.sampled_from(["text", "image"])),
        "knowledgeCutoff": st.datetimes(min_value=datetime(1970, 1, 2), timezones=st.just(timezone.utc)),
        "reasoning": st.booleans(), "toolUsage": st.booleans(), "reward": st.booleans(),
        "languages": st.lists(st.from_regex(r"[a-z]{2}", fullmatch=True), max_size=3)}),
})


@hsettings(max_examples=40)
@given(block=_BLOCKS, author=st.none() | _TEXT, description=st.none() | _TEXT,
       created=st.none() | st.datetimes(min_value=datetime(1970, 1, 2), timezones=st.just(timezone.utc)))
def test_every_valid_ormbfile_gives_a_config_the_schema_accepts(
    block: dict[str, Any], author: str | None, description: str | None, created: datetime | None,
) -> None:
    from ormb.model.ormbfile import parse_metadata_dict

    data: dict[str, Any] = {"format": "SafeTensors", "modelpack": block}
    data.update({k: v for k, v in (("author", author), ("description", description), ("created", created)) if v})
    config = json.loads(modelpack.config_json(parse_metadata_dict(data), "fallback", ["sha256:" + "a" * 64]))
    check_config(config)
    assert config["descriptor"]["name"] == block.get("name", "fallback")


def test_hidden_files_are_left_out_and_named(tmp_path: Path, settings: Settings) -> None:
    files = {**FILES, ".git/HEAD": b"ref: x", ".DS_Store": b"\0", "sub/.cache/huggingface/x.lock": b"",
             ".gitattributes": b"*"}
    src = make_model(tmp_path / "m", files, ormbfile="format: SafeTensors\n")
    for artifact in ("ormb", "modelpack"):
        result = api.save(src, f"team/h:{artifact}", settings=settings, artifact_format=artifact)
        assert result.hidden == (".DS_Store", ".git/", ".gitattributes", "sub/.cache/")
        assert sorted(api.inspect(f"team/h:{artifact}", settings=settings).files) == sorted(
            (f"model/{n}" if artifact == "ormb" else n) for n in FILES)
    kept = api.save(src, "team/h:all", settings=settings, artifact_format="modelpack", include_hidden=True)
    assert kept.hidden == () and kept.files == len(files)
    # an export of what was saved with hidden files saves again the same (includeHidden is written back)
    api.export("team/h:all", tmp_path / "out", settings=settings)
    assert api.save(tmp_path / "out", "team/h:again", settings=settings).digest == kept.digest


def test_cnai_names_as_modctl_compatibility_and_harbor_2_13_docs(tmp_path: Path, settings: Settings) -> None:
    files = {**FILES, "LICENSE": b"Apache-2.0", "docs/README.md": b"# nested"}
    src = make_model(tmp_path / "m", files, ormbfile="format: SafeTensors\nmodelpackNames: cnai\n")
    api.save(src, "team/old:v1", settings=settings, artifact_format="modelpack")
    manifest, config = _manifest(settings, "localhost:5000/team/old:v1")
    check_config(config)
    assert manifest.artifact_type == "application/vnd.cnai.model.manifest.v1+json"
    assert manifest.config.media_type == "application/vnd.cnai.model.config.v1+json"
    cache = OCILayout(settings.cache_dir)
    for layer in manifest.layers:
        assert layer.media_type.startswith("application/vnd.cnai.model.")
        assert not any(key.startswith("org.cncf.") for key in layer.annotations)
        path = layer.annotations["org.cnai.model.filepath"]
        assert layer.annotations["org.opencontainers.image.title"] == path
        assert json.loads(layer.annotations["org.cnai.model.file.metadata+json"])["name"] == path.rsplit("/")[-1]
        if path in ("README.md", "LICENSE"):  # Harbor 2.13 reads these only from a doc.v1.tar layer
            assert layer.media_type == "application/vnd.cnai.model.doc.v1.tar"
            with tarfile.open(fileobj=io.BytesIO(fetch_bytes(cache, layer))) as tar:
                (member,) = tar.getmembers()
                extracted = tar.extractfile(member)
                assert member.name == path and extracted is not None and extracted.read() == files[path]
        else:
            assert layer.media_type.endswith(".raw")
    assert "README.md" in api.inspect("team/old:v1", settings=settings).files
    # ormb reads them back, and an export saves again to the same digest with the same names
    api.export("team/old:v1", tmp_path / "out", settings=settings)
    assert (tmp_path / "out" / "LICENSE").read_bytes() == b"Apache-2.0"
    again = api.save(tmp_path / "out", "team/old:v2", settings=settings)
    assert again.digest == cache.resolve("localhost:5000/team/old:v1").digest


@pytest.mark.parametrize("artifact_format", ["ormb", "modelpack"])
def test_export_then_save_gives_the_same_digest(tmp_path: Path, settings: Settings, artifact_format: str) -> None:
    ormbfile = ("format: SafeTensors\nauthor: Ada\ncreated: 2024-01-02T03:04:05Z\nmetrics:\n  test:\n"
                "    - {name: acc, value: 0.9196}\nmodelpack: {family: tiny, capabilities: {reasoning: false}}\n")
    src = make_model(tmp_path / "m", {**FILES, "serve.sh": b"#!/bin/sh\nexec server\n"}, ormbfile=ormbfile)
    script = src / "model" / "serve.sh"
    script.chmod(0o755)  # an executable stays executable through export (the file metadata's mode)
    first = api.save(src, "team/rt:v1", settings=settings, artifact_format=artifact_format)
    api.export("team/rt:v1", tmp_path / "out", settings=settings)
    exported = tmp_path / "out" / ("model/serve.sh" if artifact_format == "ormb" else "serve.sh")
    assert exported.stat().st_mode & 0o777 == 0o755
    weights = next(p for p in exported.parent.iterdir() if p.suffix == ".safetensors")
    assert weights.stat().st_mode & 0o111 == 0
    second = api.save(tmp_path / "out", "other/name:v2", settings=settings)
    assert second.digest == first.digest
    metrics = api.inspect("other/name:v2", settings=settings).metadata.metrics
    assert metrics is not None and metrics["test"][0].value == 0.9196  # a number stays a number


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
    ("nul byte", [(b"x", {"org.cncf.model.filepath": "a\x00b"})], "NUL character"),
    ("file and directory", [(b"x", {"org.cncf.model.filepath": "w"}), (b"y", {"org.cncf.model.filepath": "w/x"})],
     "as if it were a directory"),
])
def test_hostile_modelpack_layers_are_refused_and_nothing_is_written(
    tmp_path: Path, settings: Settings, case: str, layers: list[tuple[bytes, dict[str, str]]], message: str,
) -> None:
    _hostile(settings, "localhost:5000/evil/mp:v1", [(b"good", {"org.cncf.model.filepath": "good.bin"}), *layers])
    with pytest.raises(UnsafeArchiveError, match=message):
        api.export("evil/mp:v1", tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "evil").exists()


def test_classification_follows_modctl() -> None:
    kinds = {name: modelpack.classify(PurePosixPath(name)) for name in (
        "weights.gguf", "model-00001-of-00002.safetensors", "generation_config.json", "tokenizer.model", "LICENSE",
        "docs/guide.md", "infer.py", "data/eval.jsonl", "merges.txt", "vocab.txt", "chat_template.jinja",
        "prompt.jinja", "params.yaml", "pytorch_model.bin", "model.onnx_data", "requirements.txt", "notes.txt",
        "Makefile", "train.csv", "variables/variables.data-00000-of-00001", "MLmodel", "spiece.model")}
    assert kinds == {
        "weights.gguf": "weight", "model-00001-of-00002.safetensors": "weight", "generation_config.json": "weight.config",
        "tokenizer.model": "weight.config", "LICENSE": "doc", "docs/guide.md": "doc", "infer.py": "code",
        "data/eval.jsonl": "weight.config", "merges.txt": "weight.config", "vocab.txt": "weight.config",
        "chat_template.jinja": "weight.config", "prompt.jinja": "weight.config", "params.yaml": "weight.config",
        "pytorch_model.bin": "weight", "model.onnx_data": "weight", "requirements.txt": "code", "notes.txt": "doc",
        "Makefile": "code", "train.csv": "doc", "variables/variables.data-00000-of-00001": "weight",
        "MLmodel": "code", "spiece.model": "weight.config",
    }


@given(st.text(st.characters(codec="ascii", exclude_characters="/\0"), min_size=1, max_size=12),
       st.integers(0, 1 << 40))
def test_an_unknown_small_file_is_never_a_weight(name: str, size: int) -> None:
    kind = classify.classify(PurePosixPath(name), size)
    if kind.guessed:
        assert kind.kind == ("weight" if size > classify.GUESS_WEIGHT_ABOVE else "code")
    if size <= classify.GUESS_WEIGHT_ABOVE and kind.kind == "weight":
        assert not kind.guessed  # a small weight is one only by a rule (its suffix), never by guess


def test_guessed_kinds_are_marked_untested_and_declared_formats_win(tmp_path: Path, settings: Settings) -> None:
    files = {"model.xyz": b"x" * 100, "symbol.json": b"{}", "net-0000.params": os.urandom(64), "notes": b"n"}
    src = make_model(tmp_path / "m", files, ormbfile="format: Others\n")
    api.save(src, "team/g:v1", settings=settings, artifact_format="modelpack")
    manifest, _ = _manifest(settings, "localhost:5000/team/g:v1")
    untested = {layer.annotations["org.cncf.model.filepath"]:
                layer.annotations.get("org.cncf.model.file.mediatype.untested") for layer in manifest.layers}
    assert untested == {"model.xyz": "true", "notes": "true", "symbol.json": None, "net-0000.params": None}
    # MXNet: its *.params are the weights, though modctl's rules call *.params configuration
    mx = make_model(tmp_path / "mx", {"net-symbol.json": b"{}", "net-0000.params": os.urandom(64)},
                    ormbfile="format: MXNetParams\n")
    api.save(mx, "team/mx:v1", settings=settings, artifact_format="modelpack")
    manifest, _ = _manifest(settings, "localhost:5000/team/mx:v1")
    assert {layer.annotations["org.cncf.model.filepath"]: layer.media_type.split(".model.")[1]
            for layer in manifest.layers} == {"net-0000.params": "weight.v1.raw", "net-symbol.json": "weight.v1.raw"}
