"""``copy``: every transfer is a copy of a manifest graph from a ReadOnlyTarget to a Target.

Children before parents, skipping what the destination has, a bounded number of blob
transfers at once, every byte verified by the destination's ``push``, progress reported
per blob.  The graph is read with :mod:`ormb.oci.graph` (the one successors function:
subject, config and layers of a manifest, the manifests of an index), nested at most
``MAX_GRAPH_DEPTH`` deep.  Each blob is fetched at most once per copy.  The root manifest is
pushed and tagged last, so a failed copy never moves a tag.

The root's bytes come from the source in one request when it can (a
:class:`~ormb.content.target.ReferenceFetcher`: a registry's ``GET /manifests/<tag>``), and
are handed down explicitly: no Target keeps hidden state between ``resolve`` and ``fetch``.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from ormb.content.target import (
    ExistenceChecker,
    Mounter,
    Readable,
    ReadOnlyTarget,
    ReferenceFetcher,
    ReferencePusher,
    ReferrerLister,
    Target,
    fetch_bytes,
    rewindable,
)
from ormb.errors import InvalidArtifactError
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.oci.grammar import MAX_GRAPH_DEPTH, MAX_MANIFEST
from ormb.oci.graph import NODE_TYPES, Node, parse_node
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
    """Reports what passes through; seekable exactly when the stream under it is."""

    def __init__(self, raw: Readable, progress: ProgressListener, task: str) -> None:
        self._raw = raw
        self._rewind = rewindable(raw)
        self._progress = progress
        self._task = task

    def read(self, n: int = -1, /) -> bytes:
        data = self._raw.read(n)
        self._progress.advance(self._task, len(data))
        return data

    def seekable(self) -> bool:
        return self._rewind is not None

    def seek(self, offset: int, whence: int = 0, /) -> int:
        if self._rewind is None:
            raise io.UnsupportedOperation("the source stream cannot seek")
        return self._rewind.seek(offset, whence)

    def tell(self) -> int:
        return self._rewind.tell() if self._rewind is not None else 0

    def fileno(self) -> int:
        """The file under it, for a push that hands it to the kernel (sendfile) instead of reading it."""
        fileno = getattr(self._raw, "fileno", None)
        if fileno is None:
            raise io.UnsupportedOperation("the source stream is not a file")
        return int(fileno())

    def sent(self, n: int) -> None:
        """``n`` bytes of the file went without being read here (sendfile): report them."""
        self._progress.advance(self._task, n)


def resolve_with_bytes(src: ReadOnlyTarget, reference: str) -> tuple[Descriptor, bytes]:
    """The manifest ``reference`` names and its verified bytes: one request where the source allows it."""
    if isinstance(src, ReferenceFetcher):
        return src.fetch_reference(reference)
    desc = src.resolve(reference)
    return desc, fetch_bytes(src, desc, MAX_MANIFEST)


def copy(
    src: ReadOnlyTarget,
    src_ref: str,
    dst: Target,
    dst_ref: str,
    *,
    concurrency: int = 4,
    progress: ProgressListener | None = None,
    include: LayerFilter | None = None,
    mount_from: MountSources | None = None,
    complete_existing: bool = False,
    root: tuple[Descriptor, bytes] | None = None,
    before_root: Callable[[], None] | None = None,
) -> CopyStats:
    """Copy what ``src_ref`` names in ``src`` to ``dst`` under ``dst_ref``; return what moved.

    ``include`` leaves out the layers it refuses (a partial pull); ``mount_from`` names other
    repositories on the destination's registry to mount a blob from before sending it.  A node
    (manifest or index) the destination has is not walked again, as in oras-go, unless
    ``complete_existing`` (a destination that may hold partial graphs: the cache after a partial
    pull).  ``root`` is the root manifest and its bytes when the caller has them already.
    ``before_root`` runs once everything below the root is in ``dst`` and before the root is pushed
    and named: what it raises leaves no reference (a signature check of files only ``dst`` can read).
    """
    progress = progress or NoProgress()
    root_desc, root_bytes = root if root is not None else resolve_with_bytes(src, src_ref)
    stats = CopyStats(root_desc)
    plan = _Plan(src, dst, stats, concurrency, progress, include, mount_from, complete_existing)
    node = _parse(root_desc, root_bytes)
    _copy_successors(plan, node, 0)
    # left out: what no manifest of the graph wanted (one manifest's refusal, another's layer, is copied)
    stats.left_out = list({d.digest: d for d in stats.left_out if not plan.moved_as_blob(d)}.values())
    if before_root is not None:
        before_root()
    pushed = Descriptor(node.media_type, root_desc.digest, root_desc.size, root_desc.annotations,
                        root_desc.artifact_type)
    if isinstance(dst, ReferencePusher):
        dst.push_reference(pushed, io.BytesIO(root_bytes), dst_ref)
    else:
        if not dst.exists(pushed):
            dst.push(pushed, io.BytesIO(root_bytes))
        dst.tag(pushed, dst_ref)
    return stats


@dataclass
class _Plan:
    src: ReadOnlyTarget
    dst: Target
    stats: CopyStats
    concurrency: int
    progress: ProgressListener
    include: LayerFilter | None
    mount_from: MountSources | None
    complete_existing: bool
    handled: set[tuple[str, bool]] = field(default_factory=set)  # (digest, as a node) already met in this copy
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self, desc: Descriptor, as_node: bool) -> bool:
        """True the first time a digest is met in this copy in this role: each blob is moved at most once, and
        each node walked at most once, even one that was moved as a blob before (a layer of another manifest)."""
        with self.lock:
            if (desc.digest, as_node) in self.handled:
                return False
            self.handled.add((desc.digest, as_node))
            return True

    def moved_as_blob(self, desc: Descriptor) -> bool:
        """True when this copy moved (or found) ``desc`` as a blob: that says nothing of its children."""
        with self.lock:
            return (desc.digest, False) in self.handled


def _parse(desc: Descriptor, data: bytes) -> Node:
    try:
        return parse_node(data, desc.media_type)
    except InvalidArtifactError as exc:
        raise InvalidArtifactError(f"{desc.digest}: {exc.message}", exc.hint) from None


def _wanted_children(plan: _Plan, node: Node) -> tuple[list[Descriptor], list[Descriptor]]:
    """(nodes, blobs) among the successors of ``node``: the entries of an index and a subject are
    nodes whatever their media type says; the include filter runs here, once per manifest."""
    children = node.children()
    nodes, blobs = list(children.nodes), list(children.blobs)
    if node.kind == "manifest":
        manifest = node.to_manifest()
        left_out: set[str] = set()
        if plan.include is not None:  # a digest two files share (one wanted, one not) is wanted
            include = plan.include
            wanted = {layer.digest for layer in manifest.layers if include(manifest, layer)}
            refused = {layer.digest: layer for layer in manifest.layers if layer.digest not in wanted}
            with plan.stats._lock:
                plan.stats.left_out.extend(refused.values())
            left_out = set(refused)
            blobs = [b for b in blobs if b.digest not in left_out or b == manifest.config]
        with plan.stats._lock:
            plan.stats.layers_seen.update((layer.digest, layer) for layer in manifest.layers
                                          if layer.digest not in left_out)
    return nodes, blobs


def _copy_successors(plan: _Plan, node: Node, depth: int) -> None:
    """Copy everything below ``node`` (not ``node`` itself), children before parents."""
    if depth >= MAX_GRAPH_DEPTH:
        raise InvalidArtifactError(f"the manifest graph is nested more than {MAX_GRAPH_DEPTH} levels deep",
                                   "ormb follows indexes of indexes only this far; the artifact is malformed or hostile")
    nodes, blobs = _wanted_children(plan, node)
    for child in nodes:
        _copy_node(plan, child, depth + 1)
    unique = [b for b in {b.digest: b for b in blobs}.values() if plan.claim(b, as_node=False)]
    if not unique:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(plan.concurrency, len(unique)))) as pool:
        futures = [pool.submit(_copy_blob, plan, blob) for blob in unique]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            error = future.exception() if future in done else None
            if error is not None:
                for other in futures:
                    other.cancel()
                raise error
        for future in futures:
            future.result()


def _copy_node(plan: _Plan, child: Descriptor, depth: int) -> None:
    """A manifest or index below the root: its own graph first, then itself."""
    if not plan.claim(child, as_node=True):
        return
    src, dst, stats = plan.src, plan.dst, plan.stats
    exists = isinstance(dst, ExistenceChecker) and dst.exists(child)
    if exists and not plan.complete_existing and not plan.moved_as_blob(child):
        stats.skipped.append(child)
        return
    data = fetch_bytes(src, child, MAX_MANIFEST)
    node = _parse(child, data)
    _copy_successors(plan, node, depth)
    if exists:
        stats.skipped.append(child)
        return
    # pushed under its effective media type: a registry must see a manifest, not an application/json blob
    dst.push(Descriptor(node.media_type, child.digest, child.size, child.annotations, child.artifact_type),
             io.BytesIO(data))
    stats.copied.append(child)


def _copy_blob(plan: _Plan, blob: Descriptor) -> None:
    src, dst, stats, progress = plan.src, plan.dst, plan.stats, plan.progress
    if dst.exists(blob):
        _done(stats.skipped, stats, blob, progress, "exists")
        return
    if plan.mount_from is not None and isinstance(dst, Mounter):
        for repository in plan.mount_from(blob):
            if dst.mount(blob, repository):
                _done(stats.mounted, stats, blob, progress, f"mounted from {repository}")
                return
    progress.start(blob.digest, _label(blob, ""), blob.size)
    with src.fetch(blob) as stream:
        dst.push(blob, _ProgressReader(stream, progress, blob.digest))
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


ReferrerFilter = Callable[[Descriptor, Node], bool]


def copy_referrers(src: ReadOnlyTarget, dst: Target, subject: str, *, accept: ReferrerFilter | None = None,
                   limit: int | None = None, artifact_type: str | None = None, concurrency: int = 4,
                   progress: ProgressListener | None = None,
                   mount_from: MountSources | None = None) -> list[Descriptor]:
    """Copy the referrers of the manifest ``subject`` (a digest) from ``src`` to ``dst``, each recorded
    there by its digest (a registry: pushed by digest, listed by the referrers API or the fallback tag;
    the cache: an index.json entry without a name).  Returns the referrers copied.

    Only referrers of ``artifact_type`` are asked for, if given (and the listing is filtered again: a
    registry may ignore the question).  A referrer is read before it is copied: one whose ``subject``
    is not ``subject`` (a registry that lists what it should not) is left out, so is one ``accept``
    refuses; at most ``limit`` are read, whatever each turns out to be.  ``src`` must list referrers
    (:class:`~ormb.content.target.ReferrerLister`).
    """
    if not isinstance(src, ReferrerLister):
        raise InvalidArtifactError("the source cannot list referrers")
    copied: list[Descriptor] = []
    listed = [e for e in src.referrers(subject, artifact_type) if artifact_type is None or e.artifact_type == artifact_type]
    for entry in listed[:limit] if limit is not None else listed:
        desc = Descriptor(entry.media_type if entry.media_type in NODE_TYPES else mediatypes.OCI_MANIFEST,
                          entry.digest, entry.size, entry.annotations, entry.artifact_type)
        data = fetch_bytes(src, desc, MAX_MANIFEST)
        node = _parse(desc, data)
        if node.subject is None or node.subject.digest != subject or (accept is not None and not accept(desc, node)):
            continue
        rooted = Descriptor(node.media_type, desc.digest, desc.size, desc.annotations, desc.artifact_type)
        copy(src, desc.digest, dst, desc.digest, concurrency=concurrency, progress=progress, mount_from=mount_from,
             root=(rooted, data))
        copied.append(rooted)
    return copied
