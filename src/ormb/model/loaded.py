"""A model read from any Target: its manifest and its metadata (ormb config, or ModelPack's).

Used by ``ormb inspect``/``models``/``export`` on the cache and on remote registries, and by the
embedded registry's catalog pages, so a model reads the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from ormb.content.target import Fetcher, fetch_bytes
from ormb.model import modelpack
from ormb.model.ormbfile import Metadata, metadata_from_config
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest


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
