"""Manifest validation for ``PUT /v2/<name>/manifests/<reference>``: a pure function of the bytes.

It parses with the shared :func:`ormb.oci.graph.parse_node` (the same reading the client's copy,
prune and inspect use) and names digests through the shared grammar; storage is not touched
here: the handler asks the store whether the referenced blobs and manifests exist.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ormb.errors import InvalidArtifactError
from ormb.oci import mediatypes
from ormb.oci.descriptor import layers_size
from ormb.oci.grammar import MAX_MANIFEST, is_digest
from ormb.oci.graph import NODE_TYPES, parse_node
from ormb.server.http import SpecError


@dataclass(frozen=True)
class CheckedManifest:
    digest: str
    media_type: str
    artifact_type: str | None
    subject: str | None
    annotations: dict[str, str]
    blobs: list[str]  # config and layers: must be blobs of the repository
    children: list[str]  # an index's entries: must be manifests of the repository
    layers_size: int | None = None  # a manifest's size as ormb shows it (oci.descriptor.layers_size); None: an index


def validate_manifest(data: bytes, reference: str, content_type: str) -> CheckedManifest:
    """Check ``data`` as a manifest or index pushed under ``reference``; raise :class:`SpecError`."""
    if len(data) > MAX_MANIFEST:
        raise SpecError(413, "SIZE_INVALID", f"manifests may be at most {MAX_MANIFEST} bytes")
    algorithm = reference.partition(":")[0] if is_digest(reference) else "sha256"
    digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    if is_digest(reference) and digest != reference:
        raise SpecError(400, "DIGEST_INVALID", f"the manifest's digest is {digest}, not {reference}")
    content_type = content_type.split(";")[0].strip()
    try:
        node = parse_node(data, content_type if content_type in NODE_TYPES else "")
    except InvalidArtifactError as exc:
        raise SpecError(400, "MANIFEST_INVALID", str(exc)) from None
    own_type = _own_media_type(data)
    if own_type is None and content_type not in NODE_TYPES:
        raise SpecError(400, "MANIFEST_INVALID", f"unsupported manifest media type {content_type!r}")
    if own_type and content_type and content_type != own_type:
        raise SpecError(400, "MANIFEST_INVALID", f"Content-Type {content_type} does not match {own_type}")
    artifact_type = node.artifact_type
    if node.kind == "manifest":
        assert node.config is not None
        if artifact_type is None and node.config.media_type != mediatypes.OCI_EMPTY:
            artifact_type = node.config.media_type
        external = _external_layers(data)
        blobs = [node.config.digest, *(layer.digest for i, layer in enumerate(node.layers) if i not in external)]
        children: list[str] = []
        size: int | None = layers_size(node.layers)
    else:
        blobs, children, size = [], [entry.digest for entry in node.manifests], None
    return CheckedManifest(digest, node.media_type, artifact_type, node.subject.digest if node.subject else None,
                           node.annotations, list(dict.fromkeys(blobs)), list(dict.fromkeys(children)), size)


def _external_layers(data: bytes) -> set[int]:
    """Indexes of layers with ``urls`` (non-distributable): the registry need not hold their blobs."""
    layers = json.loads(data).get("layers")
    return {i for i, layer in enumerate(layers) if isinstance(layer, dict) and isinstance(layer.get("urls"), list)
            and layer["urls"] and all(isinstance(u, str) for u in layer["urls"])}


def _own_media_type(data: bytes) -> str | None:
    """The document's own ``mediaType`` (parse_node has checked it is a node type when present)."""
    value = json.loads(data).get("mediaType")
    return value if isinstance(value, str) and value else None
