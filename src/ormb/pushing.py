"""The push half of the API: upload a cached model (``ormb push``), and what pull and the rest of :mod:`ormb.api`
share with it (references, registries, the transfer result).

It imports the cache, the registry client and the copy, but not the model layer (pydantic, the ormbfile
schema, ModelPack, export) nor signing: ``ormb push`` needs none of them, and importing :mod:`ormb.api` whole cost
every push 0.18 s of CPU more (0.40 s against 0.22 s here), a sixth of the CPU of pushing 1 GiB (issue 15,
bench/README.md).  ``tests/unit/test_architecture.py`` keeps it so.  Use it through :mod:`ormb.api`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ormb.cache import cache_key, iter_references, open_cache, reachable
from ormb.config import Settings, load_settings
from ormb.content.layout import OCILayout
from ormb.errors import InvalidReferenceError, NotFoundError
from ormb.oci.descriptor import Descriptor
from ormb.oci.reference import Reference, parse_reference
from ormb.progress import ProgressListener
from ormb.registry.client import Registry
from ormb.registry.credentials import Credential, CredentialStore
from ormb.registry.remote import RemoteRepository
from ormb.registry.transport import TransportOptions
from ormb.transfer import CopyStats, copy, copy_referrers


def _ref(reference: str | Reference, settings: Settings, *, need_tag: bool = False) -> Reference:
    ref = reference if isinstance(reference, Reference) else parse_reference(reference, settings.default_registry)
    if need_tag and not ref.tag:
        raise InvalidReferenceError(f"{ref} has no tag", "give a tag, e.g. repository:v1")
    return ref



def _resolve_cached(cache: OCILayout, ref: Reference, *, pushing: bool = False) -> Descriptor:
    """The cached manifest of ``ref``, or a not-found error that says how to get it there."""
    try:
        return cache.resolve(cache_key(ref))
    except NotFoundError:
        hint = (f"'ormb models' lists the cache; to push a model saved under another name, name it first: "
                f"ormb tag SAVED-NAME {ref}") if pushing else \
            f"'ormb models' lists the cache; 'ormb pull {ref}' fetches it, 'ormb tag' names a cached model"
        raise NotFoundError(f"{ref} is not in the local cache", hint) from None



def _registry(host: str, settings: Settings, options: TransportOptions | None,
              credential: Credential | None = None) -> Registry:
    store = CredentialStore(settings.home / "config.json")
    return Registry(host, options or TransportOptions(), credential if credential is not None else store)


def _remote(ref: Reference, settings: Settings, options: TransportOptions | None, *,
            pushing: bool = False) -> RemoteRepository:
    return RemoteRepository(_registry(ref.registry, settings, options), ref.repository, pushing=pushing)



@dataclass(frozen=True)
class TransferResult:
    reference: Reference
    digest: str
    layers: int
    size: int  # bytes of the model's layers
    transferred: tuple[str, ...]  # digests of the blobs that moved
    transferred_bytes: int
    existing: tuple[str, ...]  # digests the destination already had
    updated: bool  # for pull: the cache's tag now points somewhere new
    mounted: tuple[str, ...] = ()  # digests mounted from another repository of the registry, not sent
    left_out: tuple[str, ...] = ()  # digests a partial pull did not fetch
    signatures: tuple[str, ...] = ()  # digests of the signature referrers that came along
    verified_by: str = ""  # pull with a verify key: the fingerprint of the key whose signature matched
    notes: tuple[str, ...] = ()  # what the user may want to know (e.g. why no signature came along)


def _result(ref: Reference, stats: CopyStats, updated: bool, signatures: list[Descriptor] | None = None,
            verified_by: str = "", notes: tuple[str, ...] = ()) -> TransferResult:
    return TransferResult(
        ref, stats.root.digest, stats.layers, stats.layer_bytes,
        tuple(d.digest for d in stats.copied), stats.copied_bytes, tuple(d.digest for d in stats.skipped), updated,
        tuple(d.digest for d in stats.mounted), tuple(d.digest for d in stats.left_out),
        tuple(d.digest for d in signatures or ()), verified_by, notes,
    )


def push(reference: str | Reference, *, settings: Settings | None = None, options: TransportOptions | None = None,
         progress: ProgressListener | None = None) -> TransferResult:
    """Upload a cached model to its registry; blobs the registry has are not sent again."""
    settings = settings or load_settings()
    ref = _ref(reference, settings, need_tag=True)
    cache = open_cache(settings)
    _resolve_cached(cache, ref, pushing=True)
    remote = _remote(ref, settings, options, pushing=True)
    concurrency = (options or TransportOptions()).concurrency
    mount_from = _mount_sources(cache, ref, settings)
    stats = copy(cache, cache_key(ref), remote, ref.tag or "", concurrency=concurrency, progress=progress,
                 mount_from=mount_from)
    # the model's referrers (signatures) follow it: by the referrers API, or the fallback tag sha256-<hex>
    carried = copy_referrers(cache, remote, stats.root.digest, concurrency=concurrency, progress=progress,
                             mount_from=mount_from)
    return _result(ref, stats, True, carried)


def _mount_sources(cache: OCILayout, ref: Reference, settings: Settings) -> Callable[[Descriptor], list[str]]:
    """Other repositories on ``ref``'s registry that, as far as the cache knows, hold a blob
    (anything their references reach, walked as prune walks: indexes and subjects too)."""
    holders: dict[str, list[str]] | None = None
    lock = threading.Lock()  # copy() asks from several threads: build the map once, whole

    def sources(blob: Descriptor) -> list[str]:
        with lock:
            return _holders().get(blob.digest, [])

    def _holders() -> dict[str, list[str]]:
        nonlocal holders
        if holders is None:
            holders = {}
            for other, desc in iter_references(cache, settings):
                if other.registry != ref.registry or other.repository == ref.repository:
                    continue
                for digest in sorted(reachable(cache, [desc])):
                    holders.setdefault(digest, [])
                    if other.repository not in holders[digest]:
                        holders[digest].append(other.repository)
        return holders

    return sources


