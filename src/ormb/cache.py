"""The local model cache: an OCI layout under ``$ORMB_HOME/cache`` and what it holds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.content.target import fetch_bytes
from ormb.errors import InvalidArtifactError

# LoadedModel and load_model live in ormb.model.loaded (the registry's catalog uses them too); re-exported here
from ormb.model.loaded import LoadedModel as LoadedModel
from ormb.model.loaded import load_model as load_model
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.oci.reference import Reference, parse_reference


def open_cache(settings: Settings) -> OCILayout:
    return OCILayout(settings.cache_dir)


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
