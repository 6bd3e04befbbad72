"""The local model cache: an OCI layout under ``$ORMB_HOME/cache`` and what it holds.

Every walk of the cache's graph goes through :mod:`ormb.oci.graph`, as ``copy`` does:
``prune`` keeps what :func:`reachable_blobs` finds (:func:`ormb.oci.graph.reachable`: copy's
walk on the safe side; what it cannot parse it keeps, with every digest it mentions), ``models`` and ``inspect`` read a reference with
:func:`load_model`, which says what is wrong with a reference that is not one model.

Referrers (signatures) are index.json entries without a name whose manifest has a ``subject``:
``models`` does not list them, and ``prune`` keeps one exactly while its subject is reached from
another root (a referrer of a referrer likewise); an orphaned referrer goes, entry and blobs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.errors import InvalidArtifactError, InvalidReferenceError
from ormb.oci import graph, mediatypes
from ormb.oci.descriptor import Descriptor
from ormb.oci.graph import digests_mentioned
from ormb.oci.reference import Reference, parse_reference

# LoadedModel, load_model and index_error live in ormb.model.loaded (the registry's catalog uses them too);
# re-exported here for the callers that import them from the cache
if TYPE_CHECKING:
    from ormb.model.loaded import LoadedModel as LoadedModel
    from ormb.model.loaded import index_error as index_error
    from ormb.model.loaded import load_model as load_model

_FROM_LOADED = ("LoadedModel", "index_error", "load_model")


def __getattr__(name: str) -> Any:
    """The names re-exported from :mod:`ormb.model.loaded`, imported on first use: it brings pydantic and the
    model layer, which ``ormb push`` does not need (:mod:`ormb.pushing`)."""
    if name in _FROM_LOADED:
        from ormb.model import loaded

        return getattr(loaded, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_cache(settings: Settings) -> OCILayout:
    return OCILayout(settings.cache_dir, stamps=True)


def cache_key(ref: Reference) -> str:
    """How the cache names a reference in index.json: the full reference, as the original ormb did."""
    return str(ref)


@dataclass(frozen=True)
class CacheEntry:
    """One named entry of the cache's index.json, as far as it could be read."""

    name: str
    reference: Reference | None  # None when the name is not a reference ormb can parse
    descriptor: Descriptor | None  # None when the entry is not a valid descriptor
    problem: str = ""  # what is wrong with the name or the entry, if anything


def cache_entries(cache: OCILayout, settings: Settings) -> Iterator[CacheEntry]:
    """Every named entry, including those ormb cannot use (they come with a ``problem``)."""
    for i, entry in enumerate(cache.entries()):
        annotations = entry.get("annotations")
        name = annotations.get(mediatypes.ANNOTATION_REF_NAME) if isinstance(annotations, dict) else None
        if not isinstance(name, str) or not name:
            continue
        try:
            desc: Descriptor | None = Descriptor.from_dict(entry, f"its index.json entry ({i})")
            problem = ""
        except InvalidArtifactError as exc:
            desc, problem = None, exc.message
        try:
            ref: Reference | None = parse_reference(name, settings.default_registry, default_tag=False)
        except InvalidReferenceError:
            ref, problem = None, f"the name {name!r} is not a valid reference"
        yield CacheEntry(name, ref, desc, problem)


def iter_references(cache: OCILayout, settings: Settings) -> Iterator[tuple[Reference, Descriptor]]:
    """(reference, descriptor) of every usable named entry."""
    for entry in cache_entries(cache, settings):
        if entry.reference is not None and entry.descriptor is not None:
            yield entry.reference, entry.descriptor


def reachable(cache: OCILayout, roots: list[Descriptor]) -> set[str]:
    """Every digest the roots may reach in the cache: :func:`ormb.oci.graph.reachable`, the walk copy makes,
    on the safe side (a node that does not parse keeps every digest it mentions).  A missing blob is a leaf."""
    return graph.reachable(roots, cache.read_head)


def reachable_blobs(cache: OCILayout) -> set[str]:
    """Every digest some entry of the cache's index.json reaches: named or not, parseable or not
    (an entry that is not a valid descriptor keeps every digest written in it); a referrer's only
    while its subject is reached (see the module doc)."""
    return collectable(cache)[0]


def _ref_name(entry: dict[str, object]) -> str | None:
    annotations = entry.get("annotations")
    name = annotations.get(mediatypes.ANNOTATION_REF_NAME) if isinstance(annotations, dict) else None
    return name if isinstance(name, str) else None


def collectable(cache: OCILayout) -> tuple[set[str], set[str]]:
    """(every digest to keep, the referrer entries whose subject is gone: to drop from index.json)."""
    subjects = {desc.digest: node.subject.digest for desc, node in cache.unnamed_nodes() if node.subject is not None}
    roots: list[Descriptor] = []
    pending: dict[str, Descriptor] = {}  # unnamed referrers: roots only once their subject is kept
    for entry in cache.entries():
        try:
            desc = Descriptor.from_dict(entry)
        except InvalidArtifactError:
            roots.extend(Descriptor("", digest, 0) for digest in digests_mentioned(json.dumps(entry).encode()))
            continue
        if desc.digest in subjects and _ref_name(entry) is None:
            pending[desc.digest] = desc
        else:
            roots.append(desc)  # a named entry is a root whatever it is (a signature someone tagged, too)
    keep = reachable(cache, roots)
    while True:  # a referrer whose subject is kept is kept, with what it reaches, until nothing changes
        ready = [d for digest, d in pending.items() if subjects[digest] in keep]
        if not ready:
            break
        for desc in ready:
            del pending[desc.digest]
        keep |= reachable(cache, ready)
    return keep, set(pending) - keep


def blob_size(cache: OCILayout, digest: str) -> int:
    try:
        return Path(cache.blob_path(digest)).stat().st_size
    except OSError:
        return 0
