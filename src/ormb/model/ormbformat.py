"""The ormb v1alpha1 format: caicloud config + one ``application/tar+gzip`` layer of ``model/<path>``."""

from __future__ import annotations

from pathlib import Path

from ormb.content.target import Pusher, push_bytes
from ormb.content.writer import open_blob_writer
from ormb.errors import InvalidArtifactError
from ormb.model.files import FileListing
from ormb.model.gzipstream import gzip_writer
from ormb.model.ormbfile import Metadata
from ormb.model.packing import PackedModel
from ormb.model.tarstream import write_tar
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.progress import NoProgress, ProgressListener


def pack(
    listing: FileListing,
    metadata: Metadata,
    target: Pusher,
    *,
    compression: str = "stored",
    progress: ProgressListener | None = None,
    spool_dir: Path | None = None,
) -> PackedModel:
    """Pack the files and metadata into blobs and a manifest in ``target`` (not tagged)."""
    progress = progress or NoProgress()
    metadata = metadata.model_copy(
        update={"directory_structure": [f"model/{f.relative}" for f in listing.files]}
    )
    progress.start("pack", "packing model/", listing.total_size)
    with open_blob_writer(target, spool_dir) as writer:
        stream = gzip_writer(writer, compression)
        write_tar(listing.files, stream, progress=progress, task="pack")
        stream.close()
        layer = writer.commit(mediatypes.ORMB_LAYER)
    progress.finish("pack")
    config_bytes = metadata.to_config_bytes()
    config = Descriptor.of_bytes(mediatypes.ORMB_CONFIG, config_bytes)
    push_bytes(target, config, config_bytes)
    manifest = Manifest(config=config, layers=(layer,))
    manifest_bytes = manifest.to_bytes()
    manifest_desc = Descriptor.of_bytes(mediatypes.OCI_MANIFEST, manifest_bytes)
    push_bytes(target, manifest_desc, manifest_bytes)
    return PackedModel(manifest_desc, config, (layer,), metadata)


def model_layer(manifest: Manifest) -> Descriptor:
    """The single tar+gzip layer of an ormb v1alpha1 model."""
    layers = [d for d in manifest.layers if d.media_type in (mediatypes.ORMB_LAYER, "application/vnd.oci.image.layer.v1.tar+gzip")]
    if len(layers) != 1:
        raise InvalidArtifactError(
            f"expected exactly one {mediatypes.ORMB_LAYER} layer, found {len(layers)} "
            f"(layer types: {', '.join(d.media_type for d in manifest.layers) or 'none'})"
        )
    return layers[0]
