"""OCI descriptors and manifests as small immutable values with canonical JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ormb.errors import InvalidArtifactError
from ormb.oci import mediatypes
from ormb.oci.digest import digest_bytes, is_digest
from ormb.oci.grammar import MAX_DESCRIPTOR_SIZE, MAX_JSON_DEPTH, MAX_MANIFEST, MAX_METADATA_BLOB


def load_json(data: bytes, what: str = "manifest", *, limit: int = MAX_MANIFEST) -> Any:
    """``json.loads`` that turns every way of failing (bad UTF-8, bad JSON, nesting too deep, more than
    ``limit`` bytes) into :class:`InvalidArtifactError`.  The one JSON reader for what comes from outside."""
    if len(data) > limit:
        raise InvalidArtifactError(f"the {what} is {len(data)} bytes; at most {limit} are allowed")
    try:
        return json.loads(data)
    except RecursionError:
        raise InvalidArtifactError(f"the {what} is nested too deeply to be read") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArtifactError(f"the {what} is not valid JSON: {exc}") from None


def json_object(data: bytes | str, what: str = "document", *, limit: int = MAX_METADATA_BLOB) -> dict[str, Any]:
    """A JSON object another tool wrote (a config, a Kitfile, an annotation), read and never trusted:
    ``{}`` when it is not one, or is nested deeper than ``MAX_JSON_DEPTH`` (what reads it may recurse)."""
    try:
        value = load_json(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data, what,
                          limit=limit)
    except InvalidArtifactError:
        return {}
    if not isinstance(value, dict) or _deeper_than(value, MAX_JSON_DEPTH):
        return {}
    scrubbed: dict[str, Any] = _scrubbed(value)
    return scrubbed


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _scrubbed(value: Any) -> Any:
    """``value`` with every lone surrogate (``"\\ud800"`` is valid JSON, not valid UTF-8) replaced by U+FFFD,
    so that what is read can be written again.  Recursive: called on documents no deeper than MAX_JSON_DEPTH."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_scrubbed(k): _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(item) for item in value]
    return value


def _deeper_than(value: Any, depth: int) -> bool:
    """True when lists and objects in ``value`` nest more than ``depth`` levels (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > depth:
            return True
        if isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values() if isinstance(child, (dict, list)))
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item if isinstance(child, (dict, list)))
    return False


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    artifact_type: str | None = field(default=None, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "descriptor") -> Descriptor:
        if not isinstance(data, dict):
            raise InvalidArtifactError(f"{where} is not a JSON object")
        media_type, digest, size = data.get("mediaType"), data.get("digest"), data.get("size")
        if not isinstance(media_type, str) or not isinstance(digest, str) or not is_digest(digest):
            raise InvalidArtifactError(f"{where} has no valid mediaType and digest")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_DESCRIPTOR_SIZE:
            raise InvalidArtifactError(f"{where} has no valid size (an int64 of at least 0)")
        annotations = data.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise InvalidArtifactError(f"{where} has annotations that are not strings")
        artifact_type = data.get("artifactType")
        return cls(media_type, digest, size, dict(annotations), artifact_type if isinstance(artifact_type, str) else None)

    @classmethod
    def of_bytes(cls, media_type: str, data: bytes, annotations: dict[str, str] | None = None) -> Descriptor:
        return cls(media_type, digest_bytes(data), len(data), annotations or {})


def layers_size(layers: Iterable[Descriptor]) -> int:
    """A model's size as ormb shows it everywhere (save, push, ``models``, ``inspect``, the catalog's
    pages): its layers' sizes as the manifest declares them, added up (the config is not counted; a
    layer listed twice counts twice)."""
    return sum(layer.size for layer in layers)


def canonical_json(obj: Any) -> bytes:
    """Compact JSON with the key order given: the same value always gives the same bytes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Manifest:
    """An OCI image manifest (or the Docker v2 schema 2 manifest of the same shape)."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = mediatypes.OCI_MANIFEST
    artifact_type: str | None = None
    subject: Descriptor | None = None
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def layers_size(self) -> int:
        """:func:`layers_size` of this manifest's layers."""
        return layers_size(self.layers)

    def to_bytes(self) -> bytes:
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out["config"] = self.config.to_dict()
        out["layers"] = [layer.to_dict() for layer in self.layers]
        if self.subject:
            out["subject"] = self.subject.to_dict()
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        return canonical_json(out)

    @classmethod
    def from_bytes(cls, data: bytes, declared_type: str = "") -> Manifest:
        """Parse strictly, the one way every walk of the graph does (:func:`ormb.oci.graph.parse_manifest`)."""
        from ormb.oci.graph import parse_manifest  # graph builds on this module: import at call time

        return parse_manifest(data, declared_type)

    def descriptor(self, annotations: dict[str, str] | None = None) -> Descriptor:
        data = self.to_bytes()
        return Descriptor(self.media_type, digest_bytes(data), len(data), annotations or {}, self.artifact_type)
