"""A model read from any Target: its manifest and its metadata (ormb config, or ModelPack's).

Used by ``ormb inspect``/``models``/``export`` on the cache and on remote registries, and by the
embedded registry's catalog pages, so a model reads the same everywhere.  (It lived in
``ormb.cache``, which re-exports it; the server layer may not import the cache.)
"""

from __future__ import annotations

from dataclasses import dataclass

from ormb.content.target import Fetcher, fetch_bytes
from ormb.errors import InvalidArtifactError
from ormb.model import modelpack
from ormb.model.ormbfile import Metadata, metadata_from_config
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.oci.grammar import MAX_MANIFEST
from ormb.oci.graph import Node, parse_node
from ormb.oci.reference import Reference


@dataclass(frozen=True)
class LoadedModel:
    """A manifest with its config read: enough to list, inspect or export a model."""

    manifest_desc: Descriptor
    manifest: Manifest
    metadata: Metadata
    config: bytes = b""  # the config blob as stored, verified

    @property
    def size(self) -> int:
        """Bytes of the layers, as save and push report them (:func:`ormb.oci.descriptor.layers_size`)."""
        return self.manifest.layers_size

    @property
    def format(self) -> str:
        return self.metadata.format or "-"

    @property
    def is_modelpack(self) -> bool:
        return modelpack.is_modelpack(self.manifest)

    @property
    def is_model(self) -> bool:
        """An ormb model, a ModelPack or a KitOps ModelKit (not, say, a container image)."""
        return self.manifest.config.media_type == mediatypes.ORMB_CONFIG or self.is_modelpack

    def files(self) -> list[tuple[str, int | None]]:
        """(path, size) of the model's files: per layer for ModelPack, from the metadata for ormb."""
        if self.is_modelpack:
            return [(str(f.path) if f.path else f"<{f.packing} layer {f.descriptor.digest[7:19]}>",
                     f.descriptor.size) for f in modelpack.layer_files(self.manifest)]
        return [(name, None) for name in self.metadata.directory_structure or ()]


def index_error(node: Node, ref: Reference | None) -> InvalidArtifactError:
    """What to say when a reference names an index: it is not one model, its members are (by digest)."""
    where = f"{ref} is" if ref else "the reference points to"
    members = [f"{ref.name}@{d.digest}" if ref else d.digest for d in node.manifests[:3]]
    more = ", ..." if len(node.manifests) > 3 else ""
    return InvalidArtifactError(
        f"{where} an index of {len(node.manifests)} manifests, not one model",
        f"inspect or export one of them by digest: {', '.join(members)}{more}" if members else "the index is empty",
    )


def load_model(target: Fetcher, manifest_desc: Descriptor, data: bytes | None = None,
               ref: Reference | None = None) -> LoadedModel:
    """Read the manifest (``data`` when the caller has its bytes already, verified) and its config.

    ``ref`` is what the user named, for messages.  An index raises :class:`InvalidArtifactError`
    naming its members.
    """
    if data is None:
        data = fetch_bytes(target, manifest_desc, MAX_MANIFEST)
    node = parse_node(data, manifest_desc.media_type)
    if node.kind == "index":
        raise index_error(node, ref)
    manifest = node.to_manifest()
    config = fetch_bytes(target, manifest.config)
    if manifest.config.media_type == mediatypes.ORMB_CONFIG:
        metadata = metadata_from_config(config)
    elif modelpack.is_modelpack(manifest):
        metadata = modelpack.metadata_of(manifest, config)
    else:
        metadata = Metadata()
    return LoadedModel(manifest_desc, manifest, metadata, config)
