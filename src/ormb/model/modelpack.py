"""CNCF ModelPack v1 (https://github.com/modelpack/model-spec): one layer per file.

Writing: every file becomes a raw layer (no tar, no compression) whose media type says what
it is (see :mod:`ormb.model.classify`), weights first (Docker Model Runner takes the first
weight layer as the model), annotated with its path, its file metadata (normalised: the same
files give the same digests) and ``org.opencontainers.image.title`` (the ORAS CLI skips
untitled layers).  The config is the spec's ``descriptor``/``config``/``modelfs``, filled from
ormbfile.yaml's fields and its ``modelpack:`` block; ``descriptor.version`` comes from that
block, never from the tag, so one directory saved under two tags is one artifact.  ormb's
own metadata (signature, metrics, ...) rides in a manifest annotation, because the schema
allows no other fields.

Names: ``cncf`` (model-spec v0.0.7 on: ``application/vnd.cncf.model.*``, ``org.cncf.model.*``)
by default; ``cnai`` writes the pre-v0.0.7 names (``application/vnd.cnai.model.*``,
``org.cnai.model.*``), as modctl's compatibility release does, for the registries whose
model view only knows them: every released Harbor up to 2.15.  Harbor 2.13 reads a README or
LICENSE only from a ``doc.v1.tar`` layer, so in ``cnai`` mode the top-level ``README``,
``README.md``, ``LICENSE`` and ``LICENSE.txt`` are packed as one-file tar layers (which every
later Harbor, modctl and ormb read too).

Reading: ModelPack artifacts by any tool, with either names and tar, tar+gzip and tar+zstd
layers, KitOps ModelKits and Docker Model Runner artifacts (see :mod:`ormb.model.foreign`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from ormb.content.stamps import StampStore
from ormb.content.target import Fetcher, FileIngester, Pusher, push_bytes
from ormb.content.writer import open_blob_writer
from ormb.errors import InvalidArtifactError, UnsafeArchiveError
from ormb.model import classify as kinds
from ormb.model import foreign
from ormb.model.files import FileListing, ModelFile
from ormb.model.formats import format_files
from ormb.model.jobs import run_at_once
from ormb.model.ormbfile import (
    MODELPACK_CONFIG_KEYS,
    MODELPACK_DESCRIPTOR_KEYS,
    Metadata,
    lenient_metadata,
    metadata_from_config,
    rfc3339,
)
from ormb.model.packing import PackedModel, copy_file, stream_file
from ormb.model.staging import Parts, StagingTree
from ormb.model.tarstream import write_tar
from ormb.model.unpack import FileHashes, RawJob, extract_tar, prepare_raw
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest, canonical_json, json_object
from ormb.progress import NoProgress, ProgressListener

ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_ORMB_METADATA = "io.ormb.model.metadata+json"  # ormb's ormbfile.yaml, which the config cannot hold


@dataclass(frozen=True)
class Names:
    """One generation of the spec's identifiers."""

    vendor: str  # cncf or cnai
    artifact_type: str
    config: str
    filepath: str
    file_metadata: str
    untested: str | None  # the "media type untested" annotation (v0.0.7 on)

    def layer(self, kind: str, packing: str = "raw") -> str:
        return f"application/vnd.{self.vendor}.model.{kind}.v1.{packing}"


CNCF = Names("cncf", "application/vnd.cncf.model.manifest.v1+json", "application/vnd.cncf.model.config.v1+json",
             "org.cncf.model.filepath", "org.cncf.model.file.metadata+json", "org.cncf.model.file.mediatype.untested")
CNAI = Names("cnai", "application/vnd.cnai.model.manifest.v1+json", "application/vnd.cnai.model.config.v1+json",
             "org.cnai.model.filepath", "org.cnai.model.file.metadata+json", None)
NAMES = {"cncf": CNCF, "cnai": CNAI}

ARTIFACT_TYPE, CONFIG = CNCF.artifact_type, CNCF.config
OLD_ARTIFACT_TYPE, OLD_CONFIG = CNAI.artifact_type, CNAI.config
ANNOTATION_FILEPATH, ANNOTATION_FILE_METADATA = CNCF.filepath, CNCF.file_metadata
OLD_ANNOTATION_FILEPATH, OLD_ANNOTATION_FILE_METADATA = CNAI.filepath, CNAI.file_metadata
KITOPS_CONFIG = foreign.KITOPS_CONFIG
MODELPACK_CONFIGS = frozenset({CONFIG, OLD_CONFIG})

# The files Harbor's model view shows (its README and LICENSE tabs), by their exact top-level paths.
HARBOR_DOC_PATHS = frozenset({"README", "README.md", "LICENSE", "LICENSE.txt"})

# <vendor>.model.<kind>.v1.<raw|tar|tar+gzip|tar+zstd>; Docker Model Runner also wrote weight.v1.gguf/.safetensors
_LAYER_RE = re.compile(
    r"^application/vnd\.(cncf|cnai)\.model\.(weight\.config|weight|doc|code|dataset)\.v1\."
    r"(raw|tar|tar\+gzip|tar\+zstd|gguf|safetensors)\Z", re.ASCII)


def layer_type(kind: str, packing: str = "raw") -> str:
    return CNCF.layer(kind, packing)


def parse_layer_type(media_type: str) -> tuple[str, str] | None:
    """(kind, packing) of a ModelPack, KitOps or Docker Model Runner layer media type, else None."""
    match = _LAYER_RE.match(media_type)
    if match:
        packing = match.group(3)
        return match.group(2), "raw" if packing in ("gguf", "safetensors") else packing
    kit = foreign.kitops_layer(media_type)
    if kit:
        return kit
    dmr = foreign.DMR_LAYERS.get(media_type)
    return (dmr[0], dmr[1]) if dmr else None


def classify(path: PurePosixPath, size: int = 0) -> str:
    """The ModelPack kind of a file (no declared format): weight, weight.config, code or doc."""
    return kinds.classify(path, size).kind


def file_metadata(entry: ModelFile) -> str:
    """The spec's file metadata, normalised (owner 0, mtime 0) so the same file gives the same bytes."""
    return json.dumps({"name": entry.relative.name, "mode": entry.mode, "uid": 0, "gid": 0, "size": entry.size,
                       "mtime": "1970-01-01T00:00:00Z", "typeflag": 48}, separators=(",", ":"))


# ormb format -> the ModelPack config's ``format`` (lower case, as modctl, KitOps and Model Runner write it)
_FORMAT_NAMES = {"SafeTensors": "safetensors", "GGUF": "gguf", "ONNX": "onnx", "TorchScript": "torchscript",
                 "SavedModel": "tensorflow", "H5": "keras", "TFLite": "tflite", "SKLearn": "joblib", "PMML": "pmml",
                 "MLlib": "mllib", "Pickle": "pickle"}
# config ``format`` -> ormb format, only where the name is unambiguous ("pytorch" may be a pickled state
# dict or TorchScript, "tensorflow" a SavedModel or a GraphDef: those stay unmapped, shown as written)
_FORMATS_READ = {"safetensors": "SafeTensors", "gguf": "GGUF", "onnx": "ONNX", "torchscript": "TorchScript",
                 "tflite": "TFLite", "pmml": "PMML", "mllib": "MLlib", "pickle": "Pickle", "dduf": None}


def config_json(metadata: Metadata, name: str, diff_ids: list[str]) -> bytes:
    """The ModelPack config: ormbfile.yaml's fields, then its ``modelpack:`` block (which wins)."""
    block = metadata.modelpack.to_json_dict() if metadata.modelpack else {}
    descriptor: dict[str, Any] = {"name": block.get("name") or name}
    if metadata.author:
        descriptor["authors"] = [metadata.author]
    if metadata.description:
        descriptor["description"] = metadata.description
    if metadata.created:
        descriptor["createdAt"] = rfc3339(metadata.created)
    descriptor.update({key: block[key] for key in MODELPACK_DESCRIPTOR_KEYS if key in block})
    config: dict[str, Any] = {}
    if metadata.format and metadata.format != "Others":
        config["format"] = _FORMAT_NAMES.get(metadata.format, metadata.format.lower())
    config.update({key: block[key] for key in MODELPACK_CONFIG_KEYS if key in block})
    return canonical_json({"descriptor": descriptor, "config": config,
                           "modelfs": {"type": "layers", "diffIds": diff_ids}})


@dataclass(frozen=True)
class _Planned:
    entry: ModelFile
    kind: kinds.Kind
    packing: str  # raw, or tar for Harbor 2.13's README/LICENSE


def plan(listing: FileListing, metadata: Metadata, names: Names = CNCF) -> list[_Planned]:
    """Each file's layer kind and packing, in manifest order: weights first, then by kind, then by path."""
    needed = frozenset(format_files(metadata.format or "Others", [f.relative for f in listing.files]))
    planned = []
    for entry in listing.files:
        kind = kinds.classify(entry.relative, entry.size, format_files=needed)
        packing = "tar" if names is CNAI and kind.kind == kinds.DOC and str(entry.relative) in HARBOR_DOC_PATHS else "raw"
        planned.append(_Planned(entry, kind, packing))
    order = {kind: i for i, kind in enumerate(kinds.KINDS)}
    planned.sort(key=lambda p: (order[p.kind.kind], str(p.entry.relative).encode("utf-8", "surrogateescape")))
    return planned


def pack(
    listing: FileListing,
    metadata: Metadata,
    target: Pusher,
    *,
    name: str,
    names: str = "cncf",
    progress: ProgressListener | None = None,
) -> PackedModel:
    """One layer per file; a blob the target has is not written again.  ``name`` is the descriptor's
    name unless the ``modelpack:`` block gives one; ``names`` is ``cncf`` or ``cnai``."""
    progress = progress or NoProgress()
    vendor = NAMES[names]
    metadata = metadata.model_copy(update={"directory_structure": [str(f.relative) for f in listing.files]})
    progress.start("pack", "packing model/", listing.total_size)
    layers = tuple(_pack_file(item, vendor, target, progress) for item in plan(listing, metadata, vendor))
    progress.finish("pack")
    config_bytes = config_json(metadata, name, [layer.digest for layer in layers])
    config = Descriptor.of_bytes(vendor.config, config_bytes)
    push_bytes(target, config, config_bytes)
    # the modelpack: block is in the config already; the rest of ormbfile.yaml rides in an annotation
    ormb_metadata = metadata.to_config_bytes(exclude=frozenset({"modelpack"})).decode("utf-8")
    manifest = Manifest(config=config, layers=layers, artifact_type=vendor.artifact_type,
                        annotations={ANNOTATION_ORMB_METADATA: ormb_metadata})
    data = manifest.to_bytes()
    desc = Descriptor(mediatypes.OCI_MANIFEST, Descriptor.of_bytes("", data).digest, len(data), {}, vendor.artifact_type)
    push_bytes(target, desc, data)
    return PackedModel(desc, config, layers, metadata)


def _pack_file(item: _Planned, names: Names, target: Pusher, progress: ProgressListener) -> Descriptor:
    entry = item.entry
    annotations = {names.filepath: str(entry.relative), names.file_metadata: file_metadata(entry),
                   ANNOTATION_TITLE: str(entry.relative)}
    if item.kind.guessed and names.untested:
        annotations[names.untested] = "true"
    if item.packing == "raw" and isinstance(target, FileIngester):  # the cache: copied by the kernel, hashed from the copy
        return copy_file(entry, target, names.layer(item.kind.kind, item.packing), annotations, progress, "pack")
    with open_blob_writer(target) as writer:
        if item.packing == "tar":
            write_tar([entry], writer, prefix="", progress=progress, task="pack")
        else:
            stream_file(entry, writer, progress, "pack")
        return writer.commit(names.layer(item.kind.kind, item.packing), annotations)


# -- reading -----------------------------------------------------------------------------------


def is_modelpack(manifest: Manifest) -> bool:
    """A per-file artifact: ModelPack (either names), a KitOps ModelKit or a Docker Model Runner model."""
    return manifest.artifact_type in (ARTIFACT_TYPE, OLD_ARTIFACT_TYPE, foreign.KITOPS_ARTIFACT_TYPE) or \
        manifest.config.media_type in MODELPACK_CONFIGS | {KITOPS_CONFIG} or \
        manifest.config.media_type.startswith(foreign.DMR_CONFIG_PREFIX)


def artifact_kind(manifest: Manifest) -> str:
    """What wrote an artifact, in words (the catalog shows it): ormb's format, ModelPack with either
    generation of names, a KitOps ModelKit, a Docker Model Runner model; '' for anything else."""
    config = manifest.config.media_type
    if config == mediatypes.ORMB_CONFIG:
        return "ormb v1alpha1 (the original ormb's format)"
    if config == KITOPS_CONFIG or manifest.artifact_type == foreign.KITOPS_ARTIFACT_TYPE:
        return "KitOps ModelKit"
    if config.startswith(foreign.DMR_CONFIG_PREFIX):
        version = {foreign.DMR_CONFIG_V01: " (v0.1)", foreign.DMR_CONFIG_V02: " (v0.2)"}.get(config, "")
        return f"Docker Model Runner{version}"
    by_kitops = " written by KitOps" if foreign.KITOPS_KITFILE_ANNOTATION in manifest.annotations else ""
    if config == OLD_CONFIG or manifest.artifact_type == OLD_ARTIFACT_TYPE:
        return f"CNCF ModelPack, pre-v0.0.7 names (cnai){by_kitops}"
    if is_modelpack(manifest):
        return f"CNCF ModelPack{by_kitops}"
    return ""


@dataclass(frozen=True)
class LayerFile:
    """A layer of a per-file artifact: where its content goes, and how it is packed."""

    descriptor: Descriptor
    path: PurePosixPath | None  # None for tar layers: the paths are inside
    kind: str
    packing: str  # raw, tar, tar+gzip, tar+zstd; raw+gzip and raw+zstd (KitOps: one compressed file)
    title: str | None = None  # what to call a tar layer when listing files (its path annotation)
    mode: int | None = None  # permission bits a raw layer's file gets on export (from its file metadata)


def safe_path(value: str, where: str) -> PurePosixPath:
    """A file-path annotation as a path below the destination: relative, no ``..``, valid UTF-8."""
    if "\0" in value:
        raise UnsafeArchiveError(f"{where} has a NUL character in its file path {value!r}; refusing")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which JSON can carry as an escape ("\ud800")
        raise UnsafeArchiveError(f"{where} has the file path {value!r}, which is not valid UTF-8; refusing") from None
    if not value or value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
        raise UnsafeArchiveError(f"{where} has the absolute or empty file path {value!r}; refusing")
    parts = value.replace("\\", "/").split("/")
    if ".." in parts:
        raise UnsafeArchiveError(f"{where} has the file path {value!r}, which climbs out with '..'; refusing")
    clean = [p for p in parts if p not in ("", ".")]
    if not clean:
        raise UnsafeArchiveError(f"{where} has the file path {value!r}, which names no file; refusing")
    return PurePosixPath(*clean)


def _annotated_path(desc: Descriptor) -> str | None:
    return desc.annotations.get(ANNOTATION_FILEPATH) or desc.annotations.get(OLD_ANNOTATION_FILEPATH)


def _file_mode(desc: Descriptor) -> int | None:
    """The permission bits to give a raw layer's file, from ``org.cncf.model.file.metadata+json``'s ``mode``
    (as a tar entry's: owner read/write always, group/others at most read and execute); None when the
    annotation is missing or malformed (another tool's business: the file gets the default mode)."""
    text = desc.annotations.get(ANNOTATION_FILE_METADATA) or desc.annotations.get(OLD_ANNOTATION_FILE_METADATA)
    if not text:
        return None
    mode = json_object(text, "file metadata annotation").get("mode")
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
        return None
    return (mode & 0o755) | 0o600


def layer_files(manifest: Manifest) -> list[LayerFile]:
    """The per-file layers of a ModelPack, KitOps or Model Runner artifact, checked: paths safe and unique."""
    out: list[LayerFile] = []
    seen: set[str] = set()
    default_names = foreign.dmr_default_names([d.media_type for d in manifest.layers])
    for i, desc in enumerate(manifest.layers):
        parsed = parse_layer_type(desc.media_type)
        if parsed is None:
            raise InvalidArtifactError(f"layer {i} has the media type {desc.media_type!r}, which ormb cannot read")
        kind, packing = parsed
        raw_path = _annotated_path(desc)
        if packing.startswith("raw"):
            raw_path = raw_path or default_names[i]
            if raw_path is None:
                raise UnsafeArchiveError(f"raw layer {desc.digest} has no {ANNOTATION_FILEPATH} annotation, "
                                         "so ormb does not know where it goes; refusing")
            path = safe_path(raw_path, f"layer {desc.digest}")
            key = str(path)
            if key in seen:
                raise UnsafeArchiveError(f"two layers claim the file path {key!r}; refusing")
            seen.add(key)
            out.append(LayerFile(desc, path, kind, packing, key, _file_mode(desc)))
        else:
            title = str(safe_path(raw_path, f"layer {desc.digest}")) if raw_path else None
            out.append(LayerFile(desc, None, kind, packing, title))
    for item in out:  # a path cannot be a file and a directory ("a" and "a/b")
        for parent in item.path.parents if item.path else ():
            if str(parent) in seen:
                raise UnsafeArchiveError(f"one layer writes the file {str(parent)!r}, another writes {str(item.path)!r} "
                                         "inside it as if it were a directory; refusing")
    return out


def metadata_of(manifest: Manifest, config: bytes) -> Metadata:
    """ormb's metadata for a per-file artifact: the manifest annotation ormb writes (plus the
    ``modelpack:`` block from the config), else what the other tool's config says, mapped onto
    ormbfile.yaml's fields.  The save settings are set so an export saves again the same way."""
    data = _json_object(config)
    stored = manifest.annotations.get(ANNOTATION_ORMB_METADATA)
    if stored:
        meta = metadata_from_config(stored)
        block = _modelpack_metadata(data).get("modelpack")
        if block is not None and meta.modelpack is None:
            meta = meta.model_copy(update={"modelpack": block})
    else:
        if manifest.config.media_type == KITOPS_CONFIG:
            fields = foreign.kitfile_metadata(data)
        elif manifest.config.media_type.startswith(foreign.DMR_CONFIG_PREFIX):
            fields = foreign.dmr_metadata(data)
        else:
            fields = _modelpack_metadata(data)
            kitfile = _json_object(manifest.annotations.get(foreign.KITOPS_KITFILE_ANNOTATION, ""))
            for key, value in foreign.kitfile_metadata(kitfile).items():  # kit pack --use-model-pack
                fields.setdefault(key, value)
        if "format" in fields:
            fields["format"] = known_format(fields["format"])
        meta = lenient_metadata({k: v for k, v in fields.items() if v is not None})
    settings: dict[str, Any] = {}
    if manifest.artifact_type in (ARTIFACT_TYPE, OLD_ARTIFACT_TYPE) or manifest.config.media_type in MODELPACK_CONFIGS:
        settings["artifact_format"] = "modelpack"
        if manifest.config.media_type == OLD_CONFIG:
            settings["modelpack_names"] = "cnai"
    if any(part.startswith(".") for f in _quiet_layer_files(manifest) for part in str(f.path).split("/")):
        settings["include_hidden"] = True
    return meta.model_copy(update=settings)


def _quiet_layer_files(manifest: Manifest) -> list[LayerFile]:
    try:
        return [f for f in layer_files(manifest) if f.path is not None]
    except (InvalidArtifactError, UnsafeArchiveError):
        return []


def _json_object(data: bytes | str) -> dict[str, Any]:
    return json_object(data, "config")


def _modelpack_metadata(config: dict[str, Any]) -> dict[str, Any]:
    """ormbfile.yaml keys for a ModelPack config (another tool's, or the block of ormb's own)."""
    descriptor, settings = foreign.section(config, "descriptor"), foreign.section(config, "config")
    out: dict[str, Any] = {}
    authors = foreign.texts(descriptor.get("authors"))
    if authors:
        out["author"] = ", ".join(authors)
    for key, target in (("description", "description"), ("createdAt", "created"), ("format", "format")):
        source = settings if key == "format" else descriptor
        if isinstance(source.get(key), str) and source[key]:
            out[target] = source[key]
    block = {key: descriptor[key] for key in MODELPACK_DESCRIPTOR_KEYS if descriptor.get(key) not in (None, "", [])}
    block.update({key: settings[key] for key in MODELPACK_CONFIG_KEYS if settings.get(key) not in (None, "", [], {})})
    if block:
        valid = lenient_metadata({"modelpack": block}).modelpack
        if valid is None:  # keep what fits, field by field
            good = {k: v for k, v in block.items() if lenient_metadata({"modelpack": {k: v}}).modelpack is not None}
            valid = lenient_metadata({"modelpack": good}).modelpack
        if valid is not None:
            out["modelpack"] = valid
    return out


def known_format(value: object) -> str | None:
    """ormb's name for another tool's format string, where it is unambiguous; else None."""
    from ormb.model.formats import canonical_format_name

    if not isinstance(value, str):
        return None
    mapped = _FORMATS_READ.get(value.lower(), value)
    if mapped is None or value.lower() in ("pytorch", "pt", "tensorflow", "keras"):
        return None
    try:
        return canonical_format_name(mapped)
    except ValueError:
        return None


def model_info(manifest: Manifest, config: bytes) -> dict[str, Any]:
    """What another tool's config says, as written (for ``inspect``): a ModelPack config's descriptor and
    config, a Model Runner config's config and descriptor, a Kitfile.  Empty for ormb's own format."""
    data = _json_object(config)
    if manifest.config.media_type == mediatypes.ORMB_CONFIG or not is_modelpack(manifest):
        return {}
    if manifest.config.media_type == KITOPS_CONFIG:
        return {"kitfile": data} if data else {}
    info = {key: data[key] for key in ("descriptor", "config") if isinstance(data.get(key), dict) and data[key]}
    kitfile = _json_object(manifest.annotations.get(foreign.KITOPS_KITFILE_ANNOTATION, ""))
    if kitfile:
        info["kitfile"] = kitfile
    return info


RAW_BATCH = 64  # raw layers whose files are open at once, waiting for their bytes


def write_files(
    source: Fetcher,
    files: Sequence[LayerFile],
    tree: StagingTree,
    *,
    base: Parts = (),
    local_copy: Callable[[Descriptor], Path] | None = None,
    progress: ProgressListener | None = None,
    concurrency: int = 2,
    hashes: FileHashes | None = None,
    stamps: StampStore | None = None,
) -> list[str]:
    """Write the layers of a per-file artifact into ``tree`` below ``base`` (see :mod:`ormb.model.staging`),
    verifying each and charging ``tree.budget``; ``local_copy`` names the cache's copy of a blob, which the
    kernel copies (a reflink where it can) instead of it streaming through Python.  Two layers that write one
    path are refused, whichever kind they are.  ``hashes`` collects every file's SHA-256 by its path below
    ``base``.  ``stamps``: the cache's stamps, which may vouch for a cache copy instead of a hash.

    Uncompressed raw layers (weights) are written ``concurrency`` at a time: their files are made in the
    manifest's order, then their bytes arrive (and are hashed) in threads, so that a model of several
    weight files uses more than one core; the first that fails, or Ctrl-C, stops the others at their next chunk
    (:mod:`ormb.model.jobs`).  Tar and compressed layers, whose bytes the budget counts, are written one at a
    time, in order."""
    written: list[str] = []
    batch: list[RawJob] = []
    try:
        _write_in_order(source, files, tree, base, local_copy, progress, concurrency, hashes, written, batch, stamps)
    except BaseException:
        _close_jobs(batch)  # a later layer failed before these ran: their files are closed, the tree goes
        raise
    return list(dict.fromkeys(written))


def _write_in_order(source: Fetcher, files: Sequence[LayerFile], tree: StagingTree, base: Parts,
                    local_copy: Callable[[Descriptor], Path] | None, progress: ProgressListener | None,
                    concurrency: int, hashes: FileHashes | None, written: list[str], batch: list[RawJob],
                    stamps: StampStore | None = None) -> None:
    for item in files:
        local = local_copy(item.descriptor) if local_copy else None
        if item.packing.startswith("raw") and item.path is not None:
            compression = item.packing.partition("+")[2] or None
            job = prepare_raw(partial(source.fetch, item.descriptor), item.descriptor, tree, base + item.path.parts,
                              clone_from=local, compression=compression, mode=item.mode, progress=progress,
                              hashes=hashes, key=str(item.path), stamps=stamps)
            written.append(str(item.path))
            if compression is None:
                batch.append(job)
                if len(batch) >= RAW_BATCH:
                    _run_jobs(batch, concurrency)
            else:
                job.run()
        else:
            _run_jobs(batch, concurrency)
            compression = {"tar": None, "tar+gzip": "gzip", "tar+zstd": "zstd"}[item.packing]
            with source.fetch(item.descriptor) as blob:
                written += extract_tar(blob, item.descriptor, tree, base=base, compression=compression,
                                       progress=progress, local=local, hashes=hashes, stamps=stamps)
    _run_jobs(batch, concurrency)


def _run_jobs(jobs: list[RawJob], concurrency: int) -> None:
    """Run the jobs, ``concurrency`` at a time (:func:`ormb.model.jobs.run_at_once`: the first failure, or Ctrl-C,
    stops those under way at their next chunk and drops those not started, their files closed); ``jobs`` is
    emptied."""
    pending, jobs[:] = list(jobs), []
    if len(pending) <= 1 or concurrency <= 1:
        for i, job in enumerate(pending):
            try:
                job.run()
            except BaseException:
                _close_jobs(pending[i + 1:])
                raise
        return
    run_at_once(pending, concurrency)


def _close_jobs(jobs: list[RawJob]) -> None:
    for job in jobs:
        job.close()
    jobs.clear()
