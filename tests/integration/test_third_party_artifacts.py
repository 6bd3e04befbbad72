"""Artifacts other tools push, built byte for byte from their documented media types, pulled, inspected and
exported through both registries (CNCF distribution and ``ormb registry serve``).

- KitOps ModelKits: ``application/vnd.kitops.modelkit.(model|modelpart|code|dataset|docs).v1.(tar|raw)
  (+gzip|+zstd)?``, prompts as code layers with ``ml.kitops.modelkit.layer-subtype: prompt``, the Kitfile as the
  config (or, with ``--use-model-pack``, a ModelPack config and the Kitfile in a manifest annotation).
- Docker Model Runner (docker/model-runner pkg/distribution): config ``application/vnd.docker.ai.model.config.
  v0.1+json`` (a layer per kind, no path annotations: unpacked as model.gguf, model-0000N-of-0000M.gguf,
  model.mmproj, template.jinja) and ``v0.2+json`` (a layer per file with ``org.cncf.model.filepath``, ``dir.tar``).
- modctl before model-spec v0.0.7 (and its v0.2.1-cnai compatibility release): ``vnd.cnai`` / ``org.cnai`` names.
- A Hugging Face cache snapshot (symlinks into ../../blobs), saved, pushed and pulled elsewhere.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml
import zstandard
from hf_layouts import FILES, hf_cache_snapshot
from test_modelpack_registry import push_raw, sha, tar_of

from ormb import api
from ormb.config import Settings

pytestmark = pytest.mark.integration


def _home(tmp_path: Path, name: str) -> Settings:
    return Settings(home=tmp_path / name, default_registry="localhost:5000")


def _meta(name: str, data: bytes, mode: int = 0o644) -> str:
    return json.dumps({"name": name.rsplit("/", 1)[-1], "mode": mode, "uid": 0, "gid": 0, "size": len(data),
                       "mtime": "2025-03-01T12:00:00Z", "typeflag": 0})


def _pull_inspect_export(tmp_path: Path, ref: str) -> tuple[api.ModelDetails, Path]:
    settings = _home(tmp_path, "home")
    remote = api.inspect_remote(ref, settings=settings)
    api.pull(ref, settings=settings)
    local = api.inspect(ref, settings=settings)
    assert local.files == remote.files and local.model_info == remote.model_info
    assert local.cached is not None and remote.cached is None
    out = tmp_path / "out"
    api.export(ref, out, settings=settings)
    return local, out


def test_kitops_raw_and_zstd_layers_prompts_and_kitfile(tmp_path: Path, registry: Any) -> None:
    weights, adapter, prompt = b"GGUF" + os.urandom(3000), os.urandom(500), b"You are a helpful model."
    docs, data = b"# Kit model\n", b"q,a\n1,2\n"
    kitfile = {"manifestVersion": "1.0.0",
               "package": {"name": "kit-llm", "version": "1.2.0", "description": "a ModelKit", "license": "Apache-2.0",
                           "authors": ["Kit Author", "Other Author"]},
               "model": {"name": "kit-llm", "path": "models/llm.gguf", "framework": "llama.cpp", "format": "GGUF",
                         "license": "MIT", "parameters": {"temperature": 0.7, "top_k": 40, "nested": {"x": 1}},
                         "parts": [{"path": "adapters/lora.bin", "type": "lora", "license": "MIT"}]},
               "code": [{"path": "prompts/system.txt"}],
               "datasets": [{"name": "eval", "path": "data/eval.csv", "license": "CC-BY-4.0"}],
               "docs": [{"path": "README.md"}]}
    zstd = zstandard.ZstdCompressor()
    push_raw(registry.host, "kit/llm", "v1", ("application/vnd.kitops.modelkit.config.v1+json",
                                              json.dumps(kitfile).encode()), [
        ("application/vnd.kitops.modelkit.model.v1.raw", weights,
         {"org.cncf.model.filepath": "models/llm.gguf", "org.cncf.model.file.metadata+json": _meta("llm.gguf", weights)}),
        ("application/vnd.kitops.modelkit.modelpart.v1.raw+zstd", zstd.compress(adapter),
         {"org.cncf.model.filepath": "adapters/lora.bin"}),
        ("application/vnd.kitops.modelkit.code.v1.raw+gzip", gzip.compress(prompt, mtime=0),
         {"org.cncf.model.filepath": "prompts/system.txt", "ml.kitops.modelkit.layer-subtype": "prompt"}),
        ("application/vnd.kitops.modelkit.dataset.v1.tar+zstd", zstd.compress(tar_of({"data/eval.csv": data})), {}),
        ("application/vnd.kitops.modelkit.docs.v1.tar", tar_of({"README.md": docs}), {}),
    ], artifact_type="application/vnd.kitops.modelkit.manifest.v1+json")
    details, out = _pull_inspect_export(tmp_path, f"{registry.host}/kit/llm:v1")
    meta = details.metadata
    assert (meta.author, meta.description, meta.framework, meta.format) == (
        "Kit Author, Other Author", "a ModelKit", "llama.cpp", "GGUF")
    assert meta.modelpack is not None
    assert (meta.modelpack.name, meta.modelpack.version) == ("kit-llm", "1.2.0")
    assert meta.modelpack.licenses == ["Apache-2.0", "CC-BY-4.0", "MIT"]
    assert [(h.name, h.value) for h in meta.hyper_parameters or []] == [("temperature", 0.7), ("top_k", 40)]
    assert details.model_info["kitfile"] == kitfile
    assert details.files[:3] == ("models/llm.gguf", "adapters/lora.bin", "prompts/system.txt")
    assert (out / "models" / "llm.gguf").read_bytes() == weights
    assert (out / "adapters" / "lora.bin").read_bytes() == adapter
    assert (out / "prompts" / "system.txt").read_bytes() == prompt
    assert (out / "data" / "eval.csv").read_bytes() == data
    assert (out / "README.md").read_bytes() == docs
    exported = yaml.safe_load((out / "ormbfile.yaml").read_text())
    assert exported["modelpack"]["licenses"] == ["Apache-2.0", "CC-BY-4.0", "MIT"]


def test_kitops_with_use_model_pack(tmp_path: Path, registry: Any) -> None:
    weights = os.urandom(2000)
    config = {"descriptor": {"name": "kit-mp", "version": "2.0", "createdAt": "2025-04-01T08:30:00Z",
                             "authors": ["Kit"], "licenses": ["MIT"], "title": "kit-mp"},
              "config": {"format": "safetensors"}, "modelfs": {"type": "layers", "diffIds": [sha(weights)]}}
    kitfile = {"manifestVersion": "1.0.0", "package": {"name": "kit-mp"}, "model": {"framework": "transformers"}}
    push_raw(registry.host, "kit/mp", "v1", ("application/vnd.cncf.model.config.v1+json", json.dumps(config).encode()), [
        ("application/vnd.cncf.model.weight.v1.raw", weights, {"org.cncf.model.filepath": "model.safetensors"}),
    ], artifact_type="application/vnd.cncf.model.manifest.v1+json")
    # the Kitfile annotation sits on the manifest; push_raw has no manifest annotations, so push it again with one
    _push_with_manifest_annotation(registry.host, "kit/mp", "v2", config, weights,
                                   {"ml.kitops.modelkit.kitfile": json.dumps(kitfile)})
    details, out = _pull_inspect_export(tmp_path, f"{registry.host}/kit/mp:v2")
    assert details.metadata.framework == "transformers" and details.metadata.format == "SafeTensors"
    assert details.created is not None and details.created.isoformat() == "2025-04-01T08:30:00+00:00"
    assert details.model_info["descriptor"]["licenses"] == ["MIT"]  # type: ignore[index]
    assert (out / "model.safetensors").read_bytes() == weights


def _push_with_manifest_annotation(host: str, repo: str, tag: str, config: dict[str, Any], weights: bytes,
                                   annotations: dict[str, str]) -> None:
    import http.client

    data = push_raw(host, repo, f"{tag}-plain", ("application/vnd.cncf.model.config.v1+json",
                                                 json.dumps(config).encode()),
                    [("application/vnd.cncf.model.weight.v1.raw", weights, {"org.cncf.model.filepath": "model.safetensors"})],
                    artifact_type="application/vnd.cncf.model.manifest.v1+json")
    manifest = json.loads(data)
    manifest["annotations"] = annotations
    conn = http.client.HTTPConnection(host)
    conn.request("PUT", f"/v2/{repo}/manifests/{tag}", body=json.dumps(manifest).encode(),
                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert conn.getresponse().status == 201
    conn.close()


def test_docker_model_runner_v0_1(tmp_path: Path, registry: Any) -> None:
    shard1, shard2 = b"GGUF\x03\x00\x00\x00" + os.urandom(2000), os.urandom(1500)
    license_, template, mmproj = b"Llama license text", b"{{ messages }}", b"GGUF" + os.urandom(300)
    config = {"config": {"format": "gguf", "quantization": "Q4_K_M", "parameters": "8.03 B", "architecture": "llama",
                         "size": "4.58 GiB", "gguf": {"llama.context_length": "131072"}},
              "descriptor": {"created": "2025-02-14T09:00:00Z"},
              "rootfs": {"type": "rootfs", "diff_ids": [sha(d) for d in (shard1, shard2, license_, template, mmproj)]}}
    push_raw(registry.host, "ai/llama", "v0.1", ("application/vnd.docker.ai.model.config.v0.1+json",
                                                 json.dumps(config).encode()), [
        ("application/vnd.docker.ai.gguf.v3", shard1, {}),
        ("application/vnd.docker.ai.gguf.v3", shard2, {}),
        ("application/vnd.docker.ai.license", license_, {}),
        ("application/vnd.docker.ai.chat.template.jinja", template, {}),
        ("application/vnd.docker.ai.mmproj", mmproj, {}),
    ])
    details, out = _pull_inspect_export(tmp_path, f"{registry.host}/ai/llama:v0.1")
    assert details.artifact_format == "modelpack"  # per-file layers
    assert details.metadata.format == "GGUF"
    assert details.created is not None and details.created.isoformat() == "2025-02-14T09:00:00+00:00"
    block = details.metadata.modelpack
    assert block is not None and (block.architecture, block.param_size, block.quantization) == (
        "llama", "8.03 B", "Q4_K_M")
    assert details.model_info["config"]["size"] == "4.58 GiB"  # type: ignore[index]
    expected = {"model-00001-of-00002.gguf": shard1, "model-00002-of-00002.gguf": shard2, "LICENSE": license_,
                "template.jinja": template, "model.mmproj": mmproj}
    assert sorted(details.files) == sorted(expected)
    for name, data in expected.items():
        assert (out / name).read_bytes() == data


def test_docker_model_runner_v0_2_layer_per_file_and_dir_tar(tmp_path: Path, registry: Any) -> None:
    weights = struct.pack("<Q", 2) + b"{}" + os.urandom(2000)
    config_json, license_, template = b'{"model_type": "t5"}', b"Apache-2.0", b"{{ bos_token }}"
    assets = {"assets/images/example.png": b"\x89PNG", "assets/notes.txt": b"notes"}
    layers = [
        ("application/vnd.docker.ai.safetensors", weights, {"org.cncf.model.filepath": "text_encoder/model.safetensors",
         "org.cncf.model.file.metadata+json": _meta("model.safetensors", weights),
         "org.cncf.model.file.mediatype.untested": "false"}),
        ("application/vnd.docker.ai.model.file", config_json, {"org.cncf.model.filepath": "text_encoder/config.json"}),
        ("application/vnd.docker.ai.license", license_, {"org.cncf.model.filepath": "LICENSE"}),
        ("application/vnd.docker.ai.chat.template.jinja", template, {"org.cncf.model.filepath": "chat_template.jinja"}),
        ("application/vnd.docker.ai.dir.tar", tar_of(assets), {}),
    ]
    config = {"config": {"format": "safetensors", "architecture": "T5EncoderModel", "parameters": "110M"},
              "descriptor": {"created": "2025-06-01T00:00:00Z"},
              "rootfs": {"type": "rootfs", "diff_ids": [sha(data) for _, data, _ in layers]}}
    push_raw(registry.host, "ai/t5", "v0.2", ("application/vnd.docker.ai.model.config.v0.2+json",
                                              json.dumps(config).encode()), layers)
    details, out = _pull_inspect_export(tmp_path, f"{registry.host}/ai/t5:v0.2")
    assert details.metadata.format == "SafeTensors"
    assert details.files[0] == "text_encoder/model.safetensors"
    assert (out / "text_encoder" / "model.safetensors").read_bytes() == weights
    assert (out / "text_encoder" / "config.json").read_bytes() == config_json
    assert (out / "LICENSE").read_bytes() == license_
    assert (out / "chat_template.jinja").read_bytes() == template
    for name, data in assets.items():
        assert (out / name).read_bytes() == data


def test_modctl_with_cnai_names(tmp_path: Path, registry: Any) -> None:
    weights, tokenizer, readme = os.urandom(4000), b'{"v": 1}', b"# model card"
    config = {"descriptor": {"name": "qwen", "family": "qwen2", "createdAt": "2025-01-20T10:11:12.123456789Z",
                             "licenses": ["Apache-2.0"], "sourceURL": "https://huggingface.co/Qwen/Qwen2",
                             "revision": "abc123", "authors": ["Qwen"]},
              "config": {"architecture": "transformer", "format": "safetensors", "paramSize": "0.5B",
                         "precision": "bfloat16", "quantization": ""},
              "modelfs": {"type": "layers", "diffIds": [sha(weights), sha(tokenizer), sha(tar_of({"README.md": readme}))]}}
    push_raw(registry.host, "modctl/qwen", "v1", ("application/vnd.cnai.model.config.v1+json",
                                                  json.dumps(config).encode()), [
        ("application/vnd.cnai.model.weight.v1.raw", weights, {"org.cnai.model.filepath": "model.safetensors",
         "org.cnai.model.file.metadata+json": _meta("model.safetensors", weights)}),
        ("application/vnd.cnai.model.weight.config.v1.raw", tokenizer, {"org.cnai.model.filepath": "tokenizer.json"}),
        ("application/vnd.cnai.model.doc.v1.tar", tar_of({"README.md": readme}), {"org.cnai.model.filepath": "README.md"}),
    ], artifact_type="application/vnd.cnai.model.manifest.v1+json")
    details, out = _pull_inspect_export(tmp_path, f"{registry.host}/modctl/qwen:v1")
    meta = details.metadata
    assert meta.format == "SafeTensors" and meta.author == "Qwen"
    assert details.created is not None and details.created.year == 2025  # nanoseconds are no obstacle
    assert meta.modelpack is not None and meta.modelpack.licenses == ["Apache-2.0"]
    assert (meta.modelpack.family, meta.modelpack.param_size, meta.modelpack.precision) == ("qwen2", "0.5B", "bfloat16")
    assert details.files == ("model.safetensors", "tokenizer.json", "README.md")
    assert (out / "README.md").read_bytes() == readme and (out / "model.safetensors").read_bytes() == weights
    # saved again as it was exported: ModelPack with the same (cnai) names
    exported = yaml.safe_load((out / "ormbfile.yaml").read_text())
    assert (exported["artifactFormat"], exported["modelpackNames"]) == ("modelpack", "cnai")


def test_hugging_face_cache_snapshot_through_a_registry(tmp_path: Path, registry: Any) -> None:
    snapshot = hf_cache_snapshot(tmp_path / "hf")
    trainer = _home(tmp_path, "trainer")
    ref = f"{registry.host}/hf/tiny:main"
    api.save(snapshot, ref, settings=trainer, artifact_format="modelpack")
    api.push(ref, settings=trainer)
    details, out = _pull_inspect_export(tmp_path, ref)
    assert sorted(details.files) == sorted(FILES)
    for name, data in FILES.items():
        assert not (out / name).is_symlink() and (out / name).read_bytes() == data
