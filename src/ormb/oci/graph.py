"""The manifest graph: what a manifest or an index points at, read one way for everyone.

``successors(desc, data)`` is oras-go's ``content.Successors``: the children of a node are
its ``subject`` (if any), then the config and layers of a manifest, or the manifests of an
index.  ``copy``, ``prune``, model listing, the registry's manifest checks and its catalog
all walk the graph through this module; a walk that differs from copy's is how data gets
lost, so there is no second one.

Which successors are nodes is decided by their position (:meth:`Node.children`): an index's
entries and a ``subject`` are nodes whatever their descriptor's media type says, a config or a
layer only when its media type is a manifest or index type.  The kind of a node (manifest or
index) is decided by :func:`parse_node` from its bytes: a registry that sends no ``mediaType``
(a manifest recorded as ``application/json``) is still read as what its fields say it is.

``copy`` walks with :meth:`Node.children`; garbage collection with :func:`reachable`, the same
split on the safe side.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from ormb.errors import InvalidArtifactError
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest, load_json
from ormb.oci.grammar import MAX_MANIFEST

# Media types under which a node may be recorded: the four manifest/index types, and the
# generic ones that registries and older tools use when they do not say.
GENERIC_TYPES = frozenset({"application/json", "application/octet-stream", "text/plain", ""})
NODE_TYPES = mediatypes.MANIFEST_TYPES | mediatypes.INDEX_TYPES

_DIGEST_IN_TEXT = re.compile(rb"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})(?![a-f0-9])")


@dataclass(frozen=True)
class Children:
    """A node's successors: ``nodes`` are read and parsed as manifests or indexes, ``blobs`` moved as bytes."""

    nodes: tuple[Descriptor, ...]
    blobs: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Node:
    """A parsed manifest or index.  ``media_type`` is the effective one (never generic)."""

    kind: Literal["manifest", "index"]
    media_type: str
    config: Descriptor | None = None  # manifests only
    layers: tuple[Descriptor, ...] = ()  # manifests only
    manifests: tuple[Descriptor, ...] = ()  # indexes only
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def successors(self) -> tuple[Descriptor, ...]:
        """Subject first, then config and layers (manifest) or manifests (index), as oras-go orders them."""
        head = (self.subject,) if self.subject is not None else ()
        if self.kind == "index":
            return (*head, *self.manifests)
        assert self.config is not None
        return (*head, self.config, *self.layers)

    def children(self) -> Children:
        """The successors split the way every walk reads them: the ones to read as nodes, the ones to move as bytes.

        An index's entries and the subject are nodes whatever their descriptor's media type says (a
        registry or another tool may record them as ``application/json`` or a type of its own); a
        config or a layer is a node only when its media type is a manifest or index type.
        """
        nodes: list[Descriptor] = [self.subject] if self.subject is not None else []
        if self.kind == "index":
            return Children((*nodes, *self.manifests), ())
        assert self.config is not None
        blobs: list[Descriptor] = []
        for desc in (self.config, *self.layers):
            (nodes if desc.media_type in NODE_TYPES else blobs).append(desc)
        return Children(tuple(nodes), tuple(blobs))

    def to_manifest(self) -> Manifest:
        """The manifest this node is; an index raises :class:`InvalidArtifactError` naming its size."""
        if self.kind == "index":
            raise InvalidArtifactError(f"the reference points to an index of {len(self.manifests)} manifests, "
                                       "not one manifest")
        assert self.config is not None
        return Manifest(self.config, self.layers, self.media_type, self.artifact_type, self.subject,
                        dict(self.annotations))


def may_be_node(media_type: str) -> bool:
    """True when a blob with this media type may be a manifest or index (and must be read to know)."""
    return media_type in NODE_TYPES or media_type in GENERIC_TYPES


def is_index_type(media_type: str) -> bool:
    return media_type in mediatypes.INDEX_TYPES


def _node_type(raw: dict[str, Any], declared: str) -> str:
    """The effective media type: the document's own ``mediaType``, else the descriptor's, else its shape."""
    own = raw.get("mediaType")
    if own is not None and not isinstance(own, str):
        raise InvalidArtifactError("the manifest's mediaType is not a string")
    if own:
        if own not in NODE_TYPES:
            raise InvalidArtifactError(f"unsupported manifest media type {own!r}")
        return own
    if declared in NODE_TYPES:
        return declared
    if "manifests" in raw and "layers" not in raw:
        return mediatypes.OCI_INDEX
    if "config" in raw or "layers" in raw:
        return mediatypes.OCI_MANIFEST
    raise InvalidArtifactError("the document is neither a manifest nor an index")


def _descriptors(raw: Any, where: str) -> tuple[Descriptor, ...]:
    if not isinstance(raw, list):
        raise InvalidArtifactError(f"the {where} list is missing or not a list")
    return tuple(Descriptor.from_dict(item, f"{where}[{i}]") for i, item in enumerate(raw))


def _annotations(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise InvalidArtifactError("the annotations are not a map of strings")
    return dict(raw)


def parse_node(data: bytes, declared_type: str = "") -> Node:
    """Parse a manifest or index strictly; raise :class:`InvalidArtifactError` on anything malformed.

    ``declared_type`` is the media type its descriptor (or the registry's Content-Type) gave.
    """
    raw = load_json(data)
    if not isinstance(raw, dict):
        raise InvalidArtifactError("the manifest is not a JSON object")
    if raw.get("schemaVersion") != 2 or isinstance(raw.get("schemaVersion"), bool):
        raise InvalidArtifactError("the manifest's schemaVersion is not 2")
    media_type = _node_type(raw, declared_type)
    artifact_type = raw.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise InvalidArtifactError("the manifest's artifactType is not a string")
    subject_raw = raw.get("subject")
    subject = Descriptor.from_dict(subject_raw, "subject") if subject_raw is not None else None
    annotations = _annotations(raw.get("annotations"))
    if media_type in mediatypes.INDEX_TYPES:
        return Node("index", media_type, manifests=_descriptors(raw.get("manifests"), "manifests"),
                    subject=subject, artifact_type=artifact_type, annotations=annotations)
    config = Descriptor.from_dict(raw.get("config"), "config")
    return Node("manifest", media_type, config=config, layers=_descriptors(raw.get("layers"), "layers"),
                subject=subject, artifact_type=artifact_type, annotations=annotations)


def parse_manifest(data: bytes, declared_type: str = "") -> Manifest:
    """Parse an image manifest (not an index) strictly: :func:`parse_node`, then :meth:`Node.to_manifest`."""
    return parse_node(data, declared_type).to_manifest()


def successors(desc: Descriptor, data: bytes) -> tuple[Descriptor, ...]:
    """The children of the node ``desc`` whose bytes are ``data``; () for a blob that is not a node.

    A blob recorded under a generic media type (``application/json``) that does not parse as a
    manifest or index is a leaf; one recorded as a manifest or index that does not parse is an
    error (:class:`InvalidArtifactError`): the caller decides what a broken node means.
    """
    if not may_be_node(desc.media_type):
        return ()
    if desc.media_type in NODE_TYPES:
        return parse_node(data, desc.media_type).successors()
    try:
        return parse_node(data, desc.media_type).successors()
    except InvalidArtifactError:
        return ()


def digests_mentioned(data: bytes) -> set[str]:
    """Every digest written anywhere in ``data``: what a node that cannot be parsed may still reach.

    Used by garbage collection to stay on the safe side: a blob a broken manifest names is kept.
    """
    return {m.decode("ascii") for m in _DIGEST_IN_TEXT.findall(data)}


Reader = Callable[[str, int], "bytes | None"]  # (digest, limit) -> at most limit bytes of the blob; None: missing
_JSON_SPACE = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"


def _may_be_json_object(head: bytes) -> bool:
    """True when a document starting with ``head`` may be a JSON object (a BOM and whitespace may come first)."""
    rest = head.removeprefix(_BOM).lstrip(_JSON_SPACE)
    return not rest or rest[:1] == b"{"


def reachable(roots: Iterable[Descriptor], read: Reader) -> set[str]:
    """Every digest the ``roots`` (nodes) may reach, on the safe side: what garbage collection keeps.

    Walked as ``copy`` walks (:meth:`Node.children`): a root, an index entry and a subject are read
    as nodes whatever their media type says or their bytes start with.  A node that does not parse
    keeps every digest it mentions (:func:`digests_mentioned`), each read as a node in turn.  A
    config or layer recorded under a type that may be a node (:func:`may_be_node`:
    ``application/json``, ``application/octet-stream``) and holding a JSON object is read as one
    too: copy moves it as bytes, garbage collection keeps what it may name.  A missing blob is a leaf.
    """
    seen: set[str] = set()
    read_as_node: set[str] = set()
    stack = [(desc, True) for desc in roots]
    while stack:
        desc, as_node = stack.pop()
        seen.add(desc.digest)
        if desc.digest in read_as_node:
            continue
        if not as_node:
            if may_be_node(desc.media_type):
                head = read(desc.digest, 64)
                if head is not None and _may_be_json_object(head):
                    stack.append((desc, True))
            continue
        read_as_node.add(desc.digest)
        data = read(desc.digest, MAX_MANIFEST + 1)
        if data is None:
            continue
        try:
            children = parse_node(data, desc.media_type).children()
        except InvalidArtifactError:
            stack.extend((Descriptor("", digest, 0), True) for digest in sorted(digests_mentioned(data)))
            continue
        stack.extend((child, True) for child in children.nodes)
        stack.extend((child, False) for child in children.blobs)
    return seen
