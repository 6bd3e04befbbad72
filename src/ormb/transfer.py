"""``copy``: every transfer is a copy of a manifest graph between two Targets.

Children before parents, skipping what the destination has, a bounded number of blob
transfers at once, every byte verified by the destination's ``push``, progress reported
per blob.  The root manifest is pushed and tagged last, so a failed copy never moves a tag.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import BinaryIO

from ormb.content.target import (
    ExistenceChecker,
    Fetcher,
    Mounter,
    Pusher,
    ReferencePusher,
    Tagger,
    Target,
    fetch_bytes,
)
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.progress import NoProgress, ProgressListener

LayerFilter = Callable[[Manifest, Descriptor], bool]
MountSources = Callable[[Descriptor], list[str]]


@dataclass
class CopyStats:
    root: Descriptor
    copied: list[Descriptor] = field(default_factory=list)
    skipped: list[Descriptor] = field(default_factory=list)  # the destination had them
    mounted: list[Descriptor] = field(default_factory=list)  # mounted from another repository, not sent
    left_out: list[Descriptor] = field(default_factory=list)  # not wanted (a partial pull)
    layers_seen: dict[str, Descriptor] = field(default_factory=dict)  # the manifests' layers that were wanted
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def copied_bytes(self) -> int:
        return sum(d.size for d in self.copied)

    @property
    def layers(self) -> int:
        return len(self.layers_seen)

    @property
    def layer_bytes(self) -> int:
        return sum(d.size for d in self.layers_seen.values())


class _ProgressReader:
    def __init__(self, raw: BinaryIO, progress: ProgressListener, task: str) -> None:
        self._raw = raw
        self._progress = progress
        self._task = task

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._progress.advance(self._task, len(data))
        return data

    def seekable(self) -> bool:
        return bool(getattr(self._raw, "seekable", lambda: False)())

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell() if self.seekable() else 0


def _children(data: bytes, desc: Descriptor, include: LayerFilter | None, stats: CopyStats) -> list[Descriptor]:
    if desc.media_type in mediatypes.INDEX_TYPES:
        manifests = json.loads(data).get("manifests") or []
        return [Descriptor.from_dict(m, "index entry") for m in manifests]
    manifest = Manifest.from_bytes(data)
    layers = []
    for layer in manifest.layers:
        if include is None or include(manifest, layer):
            layers.append(layer)
            stats.layers_seen[layer.digest] = layer
        else:
            stats.left_out.append(layer)
    return [manifest.config, *layers]


def copy(
    src: Target,
    src_ref: str,
    dst: Pusher,
    dst_ref: str,
    *,
    concurrency: int = 4,
    progress: ProgressListener | None = None,
    include: LayerFilter | None = None,
    mount_from: MountSources | None = None,
) -> CopyStats:
    """Copy what ``src_ref`` names in ``src`` to ``dst`` under ``dst_ref``; return what moved.

    ``include`` leaves out the layers it refuses (a partial pull); ``mount_from`` names other
    repositories on the destination's registry to mount a blob from before sending it.
    """
    progress = progress or NoProgress()
    root = src.resolve(src_ref)
    root_bytes = fetch_bytes(src, root)
    stats = CopyStats(root)
    plan = _Plan(src, dst, stats, concurrency, progress, include, mount_from)
    _copy_children(plan, root, root_bytes)
    if isinstance(dst, ReferencePusher):
        dst.push_reference(root, io.BytesIO(root_bytes), dst_ref)
    else:
        if not (isinstance(dst, ExistenceChecker) and dst.exists(root)):
            dst.push(root, io.BytesIO(root_bytes))
        assert isinstance(dst, Tagger)
        dst.tag(root, dst_ref)
    return stats


@dataclass
class _Plan:
    src: Fetcher
    dst: Pusher
    stats: CopyStats
    concurrency: int
    progress: ProgressListener
    include: LayerFilter | None
    mount_from: MountSources | None


def _copy_children(plan: _Plan, desc: Descriptor, data: bytes) -> None:
    src, dst, stats = plan.src, plan.dst, plan.stats
    children = _children(data, desc, plan.include, stats)
    manifests = [c for c in children if c.media_type in mediatypes.MANIFEST_TYPES | mediatypes.INDEX_TYPES]
    blobs = [c for c in children if c not in manifests]
    for child in manifests:  # an index: each child manifest's own graph first
        if isinstance(dst, ExistenceChecker) and dst.exists(child):
            stats.skipped.append(child)
            continue
        child_bytes = fetch_bytes(src, child)
        _copy_children(plan, child, child_bytes)
        dst.push(child, io.BytesIO(child_bytes))
        stats.copied.append(child)
    unique = list({b.digest: b for b in blobs}.values())
    if not unique:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(plan.concurrency, len(unique)))) as pool:
        futures = [pool.submit(_copy_blob, plan, blob) for blob in unique]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future in done and future.exception() is not None:
                for other in futures:
                    other.cancel()
                raise future.exception()  # type: ignore[misc]
        for future in futures:
            future.result()


def _copy_blob(plan: _Plan, blob: Descriptor) -> None:
    src, dst, stats, progress = plan.src, plan.dst, plan.stats, plan.progress
    if isinstance(dst, ExistenceChecker) and dst.exists(blob):
        _done(stats.skipped, stats, blob, progress, "exists")
        return
    if plan.mount_from is not None and isinstance(dst, Mounter):
        for repository in plan.mount_from(blob):
            if dst.mount(blob, repository):
                _done(stats.mounted, stats, blob, progress, f"mounted from {repository}")
                return
    progress.start(blob.digest, _label(blob, ""), blob.size)
    with src.fetch(blob) as stream:
        dst.push(blob, _ProgressReader(stream, progress, blob.digest))  # type: ignore[arg-type]
    progress.finish(blob.digest)
    with stats._lock:
        stats.copied.append(blob)


def _done(bucket: list[Descriptor], stats: CopyStats, blob: Descriptor, progress: ProgressListener,
          note: str) -> None:
    with stats._lock:
        bucket.append(blob)
    progress.start(blob.digest, _label(blob, note), blob.size)
    progress.advance(blob.digest, blob.size)
    progress.finish(blob.digest)


def _label(blob: Descriptor, note: str) -> str:
    short = blob.digest.partition(":")[2][:12]
    return f"{short} {note}".rstrip()
