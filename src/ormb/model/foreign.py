"""What other tools write, read as ormb's per-file layers and metadata: KitOps ModelKits and
Docker Model Runner (model-distribution) artifacts.

- **KitOps** (``kit pack``): config ``application/vnd.kitops.modelkit.config.v1+json`` (the
  Kitfile as JSON), layers ``application/vnd.kitops.modelkit.<type>.v1.<tar|raw>[+gzip|+zstd]``
  with ``<type>`` one of ``model``, ``modelpart``, ``code``, ``dataset``, ``docs``.  A tar layer
  holds its files at their paths; a raw layer is one file at its ``org.cncf.model.filepath``,
  compressed when the type says so.  Prompts are ``code`` layers annotated
  ``ml.kitops.modelkit.layer-subtype: prompt``.  ``kit pack --use-model-pack`` writes a
  ModelPack artifact instead and puts the Kitfile in the manifest annotation
  ``ml.kitops.modelkit.kitfile``.
- **Docker Model Runner**: config ``application/vnd.docker.ai.model.config.v0.1+json`` (a layer per
  kind: ``gguf.v3``, ``safetensors``, ``mmproj``, ``license``, ``chat.template.jinja``,
  ``vllm.config.tar``, ``dir.tar``) or ``v0.2+json`` (a layer per file, each annotated with
  ``org.cncf.model.filepath``).  Layers without a path annotation get the names Model Runner
  itself unpacks them to (``model.gguf``, ``model-00001-of-00002.gguf``, ``model.mmproj``,
  ``template.jinja``); ``dir.tar`` and ``vllm.config.tar`` are plain tars of files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ormb.model.classify import CODE, DATASET, DOC, WEIGHT, WEIGHT_CONFIG

KITOPS_CONFIG = "application/vnd.kitops.modelkit.config.v1+json"
KITOPS_ARTIFACT_TYPE = "application/vnd.kitops.modelkit.manifest.v1+json"
KITOPS_KITFILE_ANNOTATION = "ml.kitops.modelkit.kitfile"
KITOPS_SUBTYPE_ANNOTATION = "ml.kitops.modelkit.layer-subtype"

DMR_CONFIG_PREFIX = "application/vnd.docker.ai.model.config."
DMR_CONFIG_V01 = "application/vnd.docker.ai.model.config.v0.1+json"
DMR_CONFIG_V02 = "application/vnd.docker.ai.model.config.v0.2+json"

_KITOPS_LAYER = re.compile(
    r"^application/vnd\.kitops\.modelkit\.(model|modelpart|code|dataset|docs)\.v1\.(tar|raw)(?:\+(gzip|zstd))?\Z",
    re.ASCII,
)
_KITOPS_KINDS = {"model": WEIGHT, "modelpart": WEIGHT, "code": CODE, "dataset": DATASET, "docs": DOC}


def kitops_layer(media_type: str) -> tuple[str, str] | None:
    """(kind, packing) of a KitOps layer media type; packing is raw, raw+gzip, raw+zstd, tar, tar+gzip, tar+zstd."""
    match = _KITOPS_LAYER.match(media_type)
    if not match:
        return None
    base, layout, compression = match.groups()
    return _KITOPS_KINDS[base], layout + (f"+{compression}" if compression else "")


# Docker Model Runner layer media types: (kind, packing, the name Model Runner gives an unannotated layer)
DMR_LAYERS: dict[str, tuple[str, str, str | None]] = {
    "application/vnd.docker.ai.gguf.v3": (WEIGHT, "raw", "model.gguf"),
    "application/vnd.docker.ai.safetensors": (WEIGHT, "raw", "model.safetensors"),
    "application/vnd.docker.ai.dduf": (WEIGHT, "raw", "model.dduf"),
    "application/vnd.docker.ai.mmproj": (WEIGHT, "raw", "model.mmproj"),
    "application/vnd.docker.ai.license": (DOC, "raw", "LICENSE"),
    "application/vnd.docker.ai.chat.template.jinja": (WEIGHT_CONFIG, "raw", "template.jinja"),
    "application/vnd.docker.ai.model.file": (WEIGHT_CONFIG, "raw", None),
    "application/vnd.docker.ai.vllm.config.tar": (WEIGHT_CONFIG, "tar", None),
    "application/vnd.docker.ai.dir.tar": (WEIGHT_CONFIG, "tar", None),
}
_SHARDED = {"application/vnd.docker.ai.gguf.v3": "gguf", "application/vnd.docker.ai.safetensors": "safetensors"}


def dmr_default_names(media_types: list[str]) -> list[str | None]:
    """The file name Model Runner unpacks each unannotated layer to: shards numbered, licenses counted."""
    counts = {mt: media_types.count(mt) for mt in set(media_types)}
    seen: dict[str, int] = {}
    names: list[str | None] = []
    for mt in media_types:
        seen[mt] = seen.get(mt, 0) + 1
        base = DMR_LAYERS.get(mt, (None, None, None))[2]
        if base is None:
            names.append(None)
        elif counts[mt] > 1 and mt in _SHARDED:
            names.append(f"model-{seen[mt]:05d}-of-{counts[mt]:05d}.{_SHARDED[mt]}")
        elif counts[mt] > 1:
            names.append(base if seen[mt] == 1 else f"{base}-{seen[mt]}")
        else:
            names.append(base)
    return names


def section(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``data[key]`` if it is a JSON object, else empty: other tools' configs are read, never trusted."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def texts(value: Any) -> list[str]:
    """The non-empty strings of a list; [] for anything that is not a list (an int, a bool, a map)."""
    return [v for v in value if isinstance(v, str) and v] if isinstance(value, list) else []


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def kitfile_metadata(kitfile: Mapping[str, Any]) -> dict[str, Any]:
    """ormbfile.yaml keys for what a Kitfile says: authors, description, framework, format,
    parameters (as hyper-parameters), and name, version and licenses in the modelpack: block."""
    package, model = section(kitfile, "package"), section(kitfile, "model")
    out: dict[str, Any] = {}
    if authors := texts(package.get("authors")):
        out["author"] = ", ".join(authors)
    if description := _text(package.get("description")) or _text(model.get("description")):
        out["description"] = description
    if framework := _text(model.get("framework")):
        out["framework"] = framework
    if fmt := _text(model.get("format")):
        out["format"] = fmt
    parameters = model.get("parameters")
    if isinstance(parameters, dict):
        hyper = [{"name": str(k), "value": v} for k, v in sorted(parameters.items()) if _scalar(v)]
        if hyper:
            out["hyperParameters"] = hyper
    licenses: list[str] = []
    for holder in [package, model, *(_dicts(model.get("parts"))), *_dicts(kitfile.get("datasets")),
                   *_dicts(kitfile.get("code"))]:
        if (license_ := _text(holder.get("license"))) and license_ not in licenses:
            licenses.append(license_)
    block: dict[str, Any] = {}
    if name := _text(package.get("name")) or _text(model.get("name")):
        block["name"] = name
    if version := _text(package.get("version")) or _text(model.get("version")):
        block["version"] = version
    if licenses:
        block["licenses"] = sorted(licenses)
    if block:
        out["modelpack"] = block
    return out


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def dmr_metadata(config: Mapping[str, Any]) -> dict[str, Any]:
    """ormbfile.yaml keys for a Docker Model Runner config: format, creation time, and architecture,
    parameter count and quantization in the modelpack: block."""
    settings, descriptor = section(config, "config"), section(config, "descriptor")
    out: dict[str, Any] = {}
    if fmt := _text(settings.get("format")):
        out["format"] = fmt
    if created := _text(descriptor.get("created")):
        out["created"] = created
    block = {key: value for key, value in (("architecture", _text(settings.get("architecture"))),
                                           ("paramSize", _text(settings.get("parameters"))),
                                           ("quantization", _text(settings.get("quantization")))) if value}
    if block:
        out["modelpack"] = block
    return out
