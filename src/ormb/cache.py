"""The local model cache: an OCI layout under ``$ORMB_HOME/cache`` and what it holds."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.content.target import Fetcher, fetch_bytes
from ormb.errors import InvalidArtifactError
from ormb.model import modelpack
from ormb.model.ormbfile import Metadata, metadata_from_config
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.oci.reference import Reference, parse_reference


def open_cache(settings: Settings) -> OCILayout:
    return OCILayout(settings.cache_dir)


@dataclass(frozen=True)
class LoadedModel:
    """A manifest with its config read: enough to list, inspect or export a model."""

    manifest_desc: Descriptor
    manifest: Manifest
    metadata: Metadata

    @property
    def size(self) -> int:
        """Bytes of the layers, as save and push report them."""
        return sum(layer.size for layer in self.manifest.layers)

    @property
    def format(self) -> str:
        return self.metadata.format or "-"

    @property
    def is_modelpack(self) -> bool:
        return modelpack.is_modelpack(self.manifest)

    def files(self) -> list[tuple[str, int | None]]:
        """(path, size) of the model's files: per layer for ModelPack, from the metadata for ormb."""
        if self.is_modelpack:
            return [(str(f.path) if f.path else f"<{f.packing} layer {f.descriptor.digest[7:19]}>",
                     f.descriptor.size) for f in modelpack.layer_files(self.manifest)]
        return [(name, None) for name in self.metadata.directory_structure or ()]


def load_model(target: Fetcher, manifest_desc: Descriptor) -> LoadedModel:
    manifest = Manifest.from_bytes(fetch_bytes(target, manifest_desc))
    config = fetch_bytes(target, manifest.config)
    if manifest.config.media_type == mediatypes.ORMB_CONFIG:
        metadata = metadata_from_config(config)
    elif modelpack.is_modelpack(manifest):
        metadata = modelpack.metadata_of(manifest, config)
    else:
        metadata = Metadata()
    return LoadedModel(manifest_desc, manifest, metadata)


def cache_key(ref: Reference) -> str:
    """How the cache names a reference in index.json: the full reference, as the original ormb did."""
    return str(ref)


def iter_references(cache: OCILayout, settings: Settings) -> Iterator[tuple[Reference, Descriptor]]:
    for name, desc in cache.references():
        yield parse_reference(name, settings.default_registry, default_tag=False), desc


def reachable_blobs(cache: OCILayout) -> set[str]:
    """Every digest some reference in the cache reaches (manifests, configs, layers, index children)."""
    seen: set[str] = set()
    stack = [desc for _, desc in cache.references()]
    while stack:
        desc = stack.pop()
        if desc.digest in seen:
            continue
        seen.add(desc.digest)
        if desc.media_type in mediatypes.MANIFEST_TYPES and cache.exists(desc):
            try:
                manifest = Manifest.from_bytes(fetch_bytes(cache, desc))
            except InvalidArtifactError:
                continue
            stack.append(manifest.config)
            stack.extend(manifest.layers)
    return seen


def blob_size(cache: OCILayout, digest: str) -> int:
    try:
        return Path(cache.blob_path(digest)).stat().st_size
    except OSError:
        return 0
