"""``copy``: every transfer is a copy of a manifest graph between two Targets.

Children before parents, skipping what the destination has, a bounded number of blob
transfers at once, every byte verified by the destination's ``push``, progress reported
per blob.  The root manifest is pushed and tagged last, so a failed copy never moves a tag.
"""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import BinaryIO

from ormb.content.target import (
    ExistenceChecker,
    Fetcher,
    Pusher,
    ReferencePusher,
    Tagger,
    Target,
    fetch_bytes,
)
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.progress import NoProgress, ProgressListener


@dataclass
class CopyStats:
    root: Descriptor
    copied: list[Descriptor] = field(default_factory=list)
    skipped: list[Descriptor] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def copied_bytes(self) -> int:
        return sum(d.size for d in self.copied)

    @property
    def layers(self) -> int:
        return sum(1 for d in self.copied + self.skipped if d.media_type not in _METADATA_TYPES)

    @property
    def layer_bytes(self) -> int:
        return sum(d.size for d in self.copied + self.skipped if d.media_type not in _METADATA_TYPES)


_METADATA_TYPES = mediatypes.MANIFEST_TYPES | mediatypes.INDEX_TYPES | {mediatypes.ORMB_CONFIG, mediatypes.OCI_EMPTY}


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


def _children(data: bytes, desc: Descriptor) -> list[Descriptor]:
    if desc.media_type in mediatypes.INDEX_TYPES:
        manifests = json.loads(data).get("manifests") or []
        return [Descriptor.from_dict(m, "index entry") for m in manifests]
    manifest = Manifest.from_bytes(data)
    return [manifest.config, *manifest.layers]


def copy(
    src: Target,
    src_ref: str,
    dst: Pusher,
    dst_ref: str,
    *,
    concurrency: int = 4,
    progress: ProgressListener | None = None,
) -> CopyStats:
    """Copy what ``src_ref`` names in ``src`` to ``dst`` under ``dst_ref``; return what moved."""
    progress = progress or NoProgress()
    root = src.resolve(src_ref)
    root_bytes = fetch_bytes(src, root)
    stats = CopyStats(root)
    _copy_children(src, dst, root, root_bytes, stats, concurrency, progress)
    if isinstance(dst, ReferencePusher):
        dst.push_reference(root, io.BytesIO(root_bytes), dst_ref)
    else:
        if not (isinstance(dst, ExistenceChecker) and dst.exists(root)):
            dst.push(root, io.BytesIO(root_bytes))
        assert isinstance(dst, Tagger)
        dst.tag(root, dst_ref)
    return stats


def _copy_children(src: Fetcher, dst: Pusher, desc: Descriptor, data: bytes, stats: CopyStats,
                   concurrency: int, progress: ProgressListener) -> None:
    children = _children(data, desc)
    manifests = [c for c in children if c.media_type in mediatypes.MANIFEST_TYPES | mediatypes.INDEX_TYPES]
    blobs = [c for c in children if c not in manifests]
    for child in manifests:  # an index: each child manifest's own graph first
        if isinstance(dst, ExistenceChecker) and dst.exists(child):
            stats.skipped.append(child)
            continue
        child_bytes = fetch_bytes(src, child)
        _copy_children(src, dst, child, child_bytes, stats, concurrency, progress)
        dst.push(child, io.BytesIO(child_bytes))
        stats.copied.append(child)
    unique = list({b.digest: b for b in blobs}.values())
    if not unique:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(unique)))) as pool:
        futures = [pool.submit(_copy_blob, src, dst, blob, stats, progress) for blob in unique]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future in done and future.exception() is not None:
                for other in futures:
                    other.cancel()
                raise future.exception()  # type: ignore[misc]
        for future in futures:
            future.result()


def _copy_blob(src: Fetcher, dst: Pusher, blob: Descriptor, stats: CopyStats, progress: ProgressListener) -> None:
    if isinstance(dst, ExistenceChecker) and dst.exists(blob):
        with stats._lock:
            stats.skipped.append(blob)
        progress.start(blob.digest, _label(blob, "exists"), blob.size)
        progress.advance(blob.digest, blob.size)
        progress.finish(blob.digest)
        return
    progress.start(blob.digest, _label(blob, ""), blob.size)
    with src.fetch(blob) as stream:
        dst.push(blob, _ProgressReader(stream, progress, blob.digest))  # type: ignore[arg-type]
    progress.finish(blob.digest)
    with stats._lock:
        stats.copied.append(blob)


def _label(blob: Descriptor, note: str) -> str:
    short = blob.digest.partition(":")[2][:12]
    return f"{short} {note}".rstrip()
