"""CNCF ModelPack v1 (https://github.com/modelpack/model-spec): one layer per file.

Writing: every file of ``model/`` becomes a raw layer (no tar, no compression) whose media
type says what it is (weight, weight config, doc, code, dataset), annotated with its path
and file metadata.  The config is the spec's ``descriptor``/``config``/``modelfs``; ormb's
own metadata (signature, metrics, ...) rides in a manifest annotation, because the schema
allows no other fields.  Same files, same digests: the file metadata is normalised.

Reading: ModelPack artifacts by any tool, including the pre-v0.0.7 ``vnd.cnai`` names, tar
and tar+gzip/zstd layer variants, and KitOps ModelKits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ormb.content.target import Fetcher, Pusher, push_bytes
from ormb.content.writer import open_blob_writer
from ormb.errors import InvalidArtifactError, UnsafeArchiveError
from ormb.model.files import FileListing, ModelFile
from ormb.model.ormbfile import Metadata
from ormb.model.packing import PackedModel, stream_file
from ormb.model.staging import Parts, StagingTree
from ormb.model.unpack import extract_tar, write_raw
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest, canonical_json
from ormb.progress import NoProgress, ProgressListener

ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG = "application/vnd.cncf.model.config.v1+json"
OLD_ARTIFACT_TYPE = "application/vnd.cnai.model.manifest.v1+json"
OLD_CONFIG = "application/vnd.cnai.model.config.v1+json"
KITOPS_CONFIG = "application/vnd.kitops.modelkit.config.v1+json"
ANNOTATION_FILEPATH = "org.cncf.model.filepath"
ANNOTATION_FILE_METADATA = "org.cncf.model.file.metadata+json"
OLD_ANNOTATION_FILEPATH = "org.cnai.model.filepath"
OLD_ANNOTATION_FILE_METADATA = "org.cnai.model.file.metadata+json"
ANNOTATION_ORMB_METADATA = "io.ormb.model.metadata+json"  # ormb's ormbfile.yaml, which the config cannot hold
MODELPACK_CONFIGS = frozenset({CONFIG, OLD_CONFIG})

# <vendor>.model.<kind>.v1.<raw|tar|tar+gzip|tar+zstd>
_LAYER_RE = re.compile(r"^application/vnd\.(cncf|cnai)\.model\.(weight\.config|weight|doc|code|dataset)\.v1\.(raw|tar|tar\+gzip|tar\+zstd)$")
_KITOPS_RE = re.compile(r"^application/vnd\.kitops\.modelkit\.(model|modelpart|code|dataset|docs|prompts)\.v1\.(tar|tar\+gzip)$")


def layer_type(kind: str, packing: str = "raw") -> str:
    return f"application/vnd.cncf.model.{kind}.v1.{packing}"


def parse_layer_type(media_type: str) -> tuple[str, str] | None:
    """(kind, packing) of a ModelPack or KitOps layer media type, else None."""
    match = _LAYER_RE.match(media_type)
    if match:
        return match.group(2), match.group(3)
    match = _KITOPS_RE.match(media_type)
    if match:
        kind = {"model": "weight", "modelpart": "weight", "docs": "doc", "prompts": "doc"}.get(match.group(1), match.group(1))
        return kind, match.group(2)
    return None


_WEIGHT_CONFIG_NAMES = {
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.json", "vocab.txt", "merges.txt", "preprocessor_config.json", "added_tokens.json", "chat_template.json",
    "model-settings.json", "config.pbtxt", "mlmodel",
}
_DOC_SUFFIXES = {".md", ".rst", ".pdf", ".html"}
_CODE_SUFFIXES = {".py", ".sh", ".ipynb", ".js", ".ts", ".go", ".rs", ".c", ".cc", ".cpp", ".h", ".java"}
_DATASET_SUFFIXES = {".csv", ".tsv", ".parquet", ".jsonl", ".arrow", ".tfrecord"}


def classify(path: PurePosixPath) -> str:
    """The ModelPack kind of a file: weight, weight.config, doc, code or dataset."""
    name = path.name.lower()
    if name in _WEIGHT_CONFIG_NAMES or name.endswith((".tokenizer.json", "tokenizer.model")) or \
            (name.endswith(".json") and "config" in name):
        return "weight.config"
    if name.startswith(("readme", "license", "licence", "notice", "model_card", "modelcard")) or path.suffix.lower() in _DOC_SUFFIXES:
        return "doc"
    if path.suffix.lower() in _CODE_SUFFIXES:
        return "code"
    if path.suffix.lower() in _DATASET_SUFFIXES or (path.parts and path.parts[0] in ("data", "dataset", "datasets")):
        return "dataset"
    return "weight"


def file_metadata(entry: ModelFile) -> str:
    """The spec's file metadata, normalised (owner 0, mtime 0) so the same file gives the same bytes."""
    return json.dumps({"name": entry.relative.name, "mode": entry.mode, "uid": 0, "gid": 0, "size": entry.size,
                       "mtime": "1970-01-01T00:00:00Z", "typeflag": 48}, separators=(",", ":"))


_FORMAT_NAMES = {"SafeTensors": "safetensors", "GGUF": "gguf", "ONNX": "onnx", "TorchScript": "pytorch",
                 "SavedModel": "tensorflow", "H5": "keras", "TFLite": "tflite", "SKLearn": "joblib", "PMML": "pmml"}


def config_json(metadata: Metadata, name: str, version: str | None, diff_ids: list[str]) -> bytes:
    descriptor: dict[str, Any] = {"name": name}
    if version:
        descriptor["version"] = version
    if metadata.author:
        descriptor["authors"] = [metadata.author]
    if metadata.description:
        descriptor["description"] = metadata.description
    if metadata.created:
        descriptor["createdAt"] = metadata.to_json_dict()["created"]
    config: dict[str, Any] = {}
    if metadata.format:
        config["format"] = _FORMAT_NAMES.get(metadata.format, metadata.format.lower())
    return canonical_json({"descriptor": descriptor, "config": config,
                           "modelfs": {"type": "layers", "diffIds": diff_ids}})


def pack(
    listing: FileListing,
    metadata: Metadata,
    target: Pusher,
    *,
    name: str,
    version: str | None,
    progress: ProgressListener | None = None,
) -> PackedModel:
    """One raw layer per file, in path order; a blob the target has is not written again."""
    progress = progress or NoProgress()
    metadata = metadata.model_copy(update={"directory_structure": [str(f.relative) for f in listing.files]})
    progress.start("pack", "packing model/", listing.total_size)
    layers = []
    for entry in listing.files:
        layers.append(_pack_file(entry, target, progress))
    progress.finish("pack")
    config_bytes = config_json(metadata, name, version, [layer.digest for layer in layers])
    config = Descriptor.of_bytes(CONFIG, config_bytes)
    push_bytes(target, config, config_bytes)
    annotations = {ANNOTATION_ORMB_METADATA: metadata.to_config_bytes().decode("utf-8")}
    manifest = Manifest(config=config, layers=tuple(layers), artifact_type=ARTIFACT_TYPE, annotations=annotations)
    data = manifest.to_bytes()
    desc = Descriptor(mediatypes.OCI_MANIFEST, Descriptor.of_bytes("", data).digest, len(data), {}, ARTIFACT_TYPE)
    push_bytes(target, desc, data)
    return PackedModel(desc, config, tuple(layers), metadata)


def _pack_file(entry: ModelFile, target: Pusher, progress: ProgressListener) -> Descriptor:
    annotations = {ANNOTATION_FILEPATH: str(entry.relative), ANNOTATION_FILE_METADATA: file_metadata(entry)}
    media_type = layer_type(classify(entry.relative))
    with open_blob_writer(target) as writer:
        stream_file(entry, writer, progress, "pack")
        return writer.commit(media_type, annotations)


# -- reading -----------------------------------------------------------------------------------


def is_modelpack(manifest: Manifest) -> bool:
    return manifest.artifact_type in (ARTIFACT_TYPE, OLD_ARTIFACT_TYPE) or \
        manifest.config.media_type in MODELPACK_CONFIGS | {KITOPS_CONFIG}


@dataclass(frozen=True)
class LayerFile:
    """A layer of a per-file artifact: where its content goes, and how it is packed."""

    descriptor: Descriptor
    path: PurePosixPath | None  # None for tar layers: the paths are inside
    kind: str
    packing: str  # raw, tar, tar+gzip, tar+zstd


def safe_path(value: str, where: str) -> PurePosixPath:
    if "\0" in value:
        raise UnsafeArchiveError(f"{where} has a NUL character in its file path {value!r}; refusing")
    if not value or value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
        raise UnsafeArchiveError(f"{where} has the absolute or empty file path {value!r}; refusing")
    parts = value.replace("\\", "/").split("/")
    if ".." in parts:
        raise UnsafeArchiveError(f"{where} has the file path {value!r}, which climbs out with '..'; refusing")
    clean = [p for p in parts if p not in ("", ".")]
    if not clean:
        raise UnsafeArchiveError(f"{where} has the file path {value!r}, which names no file; refusing")
    return PurePosixPath(*clean)


def layer_files(manifest: Manifest) -> list[LayerFile]:
    """The per-file layers of a ModelPack or KitOps artifact, checked: paths safe and unique."""
    out: list[LayerFile] = []
    seen: set[str] = set()
    for i, desc in enumerate(manifest.layers):
        parsed = parse_layer_type(desc.media_type)
        if parsed is None:
            raise InvalidArtifactError(f"layer {i} has the media type {desc.media_type!r}, which ormb cannot read")
        kind, packing = parsed
        raw_path = desc.annotations.get(ANNOTATION_FILEPATH) or desc.annotations.get(OLD_ANNOTATION_FILEPATH)
        if packing == "raw":
            if raw_path is None:
                raise UnsafeArchiveError(f"raw layer {desc.digest} has no {ANNOTATION_FILEPATH} annotation, "
                                         "so ormb does not know where it goes; refusing")
            path: PurePosixPath | None = safe_path(raw_path, f"layer {desc.digest}")
            key = str(path)
            if key in seen:
                raise UnsafeArchiveError(f"two layers claim the file path {key!r}; refusing")
            seen.add(key)
        else:
            path = safe_path(raw_path, f"layer {desc.digest}") if raw_path else None
        out.append(LayerFile(desc, path if packing == "raw" else None, kind, packing))
    return out


def metadata_of(manifest: Manifest, config: bytes) -> Metadata:
    """ormb's metadata from the manifest annotation, else what the ModelPack/KitOps config says."""
    from ormb.model.ormbfile import metadata_from_config

    stored = manifest.annotations.get(ANNOTATION_ORMB_METADATA)
    if stored:
        return metadata_from_config(stored.encode("utf-8"))
    try:
        data = json.loads(config)
    except ValueError:
        return Metadata()
    if not isinstance(data, dict):
        return Metadata()
    if manifest.config.media_type == KITOPS_CONFIG:
        package = data.get("package") or {}
        authors = package.get("authors") or []
        model = data.get("model") or {}
        return Metadata(author=", ".join(map(str, authors)) or None, description=package.get("description"),
                        framework=model.get("framework"))
    descriptor, settings = data.get("descriptor") or {}, data.get("config") or {}
    authors = descriptor.get("authors") or []
    return Metadata(author=", ".join(map(str, authors)) or None, description=descriptor.get("description"),
                    format=_known_format(settings.get("format")))


def _known_format(value: object) -> str | None:
    from ormb.model.formats import canonical_format_name

    if not isinstance(value, str):
        return None
    reverse = {v: k for k, v in _FORMAT_NAMES.items()}
    try:
        return canonical_format_name(reverse.get(value.lower(), value))
    except ValueError:
        return None


def write_files(
    source: Fetcher,
    files: Sequence[LayerFile],
    tree: StagingTree,
    *,
    base: Parts = (),
    local_copy: Callable[[Descriptor], Path] | None = None,
    max_expand: int | None = None,
    progress: ProgressListener | None = None,
) -> list[str]:
    """Write the layers of a per-file artifact into ``tree`` below ``base`` (see :mod:`ormb.model.staging`),
    verifying each; ``local_copy`` names a verified local file of a blob to clone instead of copying."""
    written: list[str] = []
    for item in files:
        with source.fetch(item.descriptor) as blob:
            if item.packing == "raw" and item.path is not None:
                clone_from = local_copy(item.descriptor) if local_copy else None
                write_raw(blob, item.descriptor, tree, base + item.path.parts, clone_from=clone_from,
                          progress=progress)
                written.append(str(item.path))
            else:
                compression = {"tar": None, "tar+gzip": "gzip", "tar+zstd": "zstd"}[item.packing]
                written += extract_tar(blob, item.descriptor, tree, base=base, compression=compression,
                                       max_expand=max_expand, progress=progress)
    return list(dict.fromkeys(written))
