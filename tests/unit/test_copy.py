"""copy() with test doubles, as oras-go tests its Copy: a tracking store that counts every call
(storageTracker), stores that fail on purpose (badFetcher, badPusher), a store that mounts.

Properties held: children before parents, what the destination has is skipped, a blob is
fetched at most once per copy, indexes (nested, recorded as application/json) and subjects are
followed through the one successors function, the include filter runs per manifest, the depth
is bounded, and a failed copy moves no tag and leaves no root behind.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ormb.content.memory import MemoryStore
from ormb.content.target import Readable, ReadOnlyTarget, Target
from ormb.errors import InvalidArtifactError, NetworkError
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.oci.grammar import MAX_GRAPH_DEPTH
from ormb.transfer import copy


class Tracker(MemoryStore):
    """A MemoryStore that counts what is asked of it (oras-go's storageTracker)."""

    def __init__(self) -> None:
        super().__init__()
        self.fetched: Counter[str] = Counter()
        self.pushed: list[str] = []
        self.resolved: list[str] = []
        self.tagged: list[tuple[str, str]] = []

    @contextmanager
    def fetch(self, desc: Descriptor) -> Iterator[Readable]:
        self.fetched[desc.digest] += 1
        with super().fetch(desc) as stream:
            yield stream

    def push(self, desc: Descriptor, content: Readable) -> None:
        super().push(desc, content)
        self.pushed.append(desc.digest)

    def resolve(self, reference: str) -> Descriptor:
        self.resolved.append(reference)
        return super().resolve(reference)

    def tag(self, desc: Descriptor, reference: str) -> None:
        super().tag(desc, reference)
        self.tagged.append((reference, desc.digest))


class BadFetcher(Tracker):
    """Fails to fetch the blobs named in ``bad`` (a registry that drops the connection)."""

    def __init__(self, bad: set[str]) -> None:
        super().__init__()
        self.bad = bad

    @contextmanager
    def fetch(self, desc: Descriptor) -> Iterator[Readable]:
        if desc.digest in self.bad:
            raise NetworkError(f"cannot fetch {desc.digest}")
        with super().fetch(desc) as stream:
            yield stream


class Mounting(Tracker):
    """A destination that can mount the blobs of ``other`` (another repository of its registry)."""

    def __init__(self, other: dict[str, bytes]) -> None:
        super().__init__()
        self.other = other
        self.mounts: list[tuple[str, str]] = []

    def mount(self, desc: Descriptor, source_repository: str) -> bool:
        self.mounts.append((desc.digest, source_repository))
        if desc.digest not in self.other:
            return False
        self.blobs[desc.digest] = self.other[desc.digest]
        return True


class ReferenceFetching(Tracker):
    """A source that answers a reference with the manifest's bytes in one call, like a registry."""

    def __init__(self) -> None:
        super().__init__()
        self.reference_fetches: list[str] = []

    def fetch_reference(self, reference: str) -> tuple[Descriptor, bytes]:
        self.reference_fetches.append(reference)
        desc = MemoryStore.resolve(self, reference)
        return desc, self.blobs[desc.digest]


def _blob(store: MemoryStore, data: bytes, media_type: str = mediatypes.ORMB_LAYER) -> Descriptor:
    desc = Descriptor.of_bytes(media_type, data)
    store.blobs[desc.digest] = data
    return desc


def _manifest(store: MemoryStore, *layers: bytes, config: bytes = b'{"format":"Others"}',
              subject: Descriptor | None = None, annotations: dict[str, str] | None = None) -> Descriptor:
    manifest = Manifest(_blob(store, config, mediatypes.ORMB_CONFIG), tuple(_blob(store, data) for data in layers),
                        subject=subject, annotations=annotations or {})
    return _blob(store, manifest.to_bytes(), mediatypes.OCI_MANIFEST)


def _index(store: MemoryStore, *children: Descriptor) -> Descriptor:
    data = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX,
                       "manifests": [c.to_dict() for c in children]}).encode()
    return _blob(store, data, mediatypes.OCI_INDEX)


def _reach(store: MemoryStore, desc: Descriptor) -> set[str]:
    """Every digest under ``desc``, read by hand from the JSON (independent of the code under test)."""
    raw = json.loads(store.blobs[desc.digest])
    found = {desc.digest}
    for child in raw.get("manifests", []) + ([raw["subject"]] if "subject" in raw else []):
        found |= _reach(store, Descriptor.from_dict(child))
    if "config" in raw:
        found |= {raw["config"]["digest"], *(layer["digest"] for layer in raw["layers"])}
    return found


def test_a_manifest_is_copied_children_first_and_tagged_last() -> None:
    src, dst = Tracker(), Tracker()
    root = _manifest(src, b"layer one", b"layer two")
    src.tag(root, "v1")
    stats = copy(src, "v1", dst, "v1")
    assert set(dst.blobs) == _reach(src, root)
    assert dst.pushed[-1] == root.digest and dst.tagged == [("v1", root.digest)]
    assert {d.digest for d in stats.copied} == _reach(src, root) - {root.digest}
    assert stats.layers == 2


def test_what_the_destination_has_is_skipped_not_fetched() -> None:
    src, dst = Tracker(), Tracker()
    root = _manifest(src, b"shared weights", b"new weights")
    src.tag(root, "v1")
    shared = Descriptor.of_bytes(mediatypes.ORMB_LAYER, b"shared weights")
    dst.blobs[shared.digest] = b"shared weights"
    stats = copy(src, "v1", dst, "v1")
    assert src.fetched[shared.digest] == 0
    assert [d.digest for d in stats.skipped] == [shared.digest]


def test_blobs_another_repository_has_are_mounted_not_fetched() -> None:
    src = Tracker()
    root = _manifest(src, b"mountable", b"must be sent")
    src.tag(root, "v1")
    mountable = Descriptor.of_bytes(mediatypes.ORMB_LAYER, b"mountable")
    dst = Mounting({mountable.digest: b"mountable"})
    stats = copy(src, "v1", dst, "v1", mount_from=lambda blob: ["team/other"])
    assert [d.digest for d in stats.mounted] == [mountable.digest]
    assert src.fetched[mountable.digest] == 0
    assert (mountable.digest, "team/other") in dst.mounts


def test_an_index_graph_is_copied_whole_and_each_blob_fetched_once() -> None:
    src, dst = Tracker(), Tracker()
    amd = _manifest(src, b"common layer", b"amd64 layer")
    arm = _manifest(src, b"common layer", b"arm64 layer")  # shares a layer and the config
    inner = _index(src, arm)
    root = _index(src, amd, inner)  # an index that holds an index
    src.tag(root, "multi")
    stats = copy(src, "multi", dst, "multi")
    assert set(dst.blobs) == _reach(src, root)
    assert max(src.fetched.values()) == 1
    order = dst.pushed
    for parent, child in [(root, amd), (root, inner), (inner, arm)]:
        assert order.index(child.digest) < order.index(parent.digest), "children before parents"
    assert stats.layers == 3


def test_an_index_entry_recorded_as_plain_json_is_followed_and_pushed_as_a_manifest() -> None:
    src, dst = Tracker(), Tracker()
    member = _manifest(src, b"member layer")
    root = _index(src, Descriptor("application/json", member.digest, member.size))
    src.tag(root, "v1")
    copy(src, "v1", dst, "v1")
    assert set(dst.blobs) == _reach(src, root)


def test_a_subject_is_followed() -> None:
    src, dst = Tracker(), Tracker()
    model = _manifest(src, b"the model")
    signature = _manifest(src, b"a signature", config=b"{}", subject=model)
    src.tag(signature, "sig")
    copy(src, "sig", dst, "sig")
    assert _reach(src, model) <= set(dst.blobs)


def test_the_include_filter_leaves_layers_out_and_keeps_the_config() -> None:
    src, dst = Tracker(), Tracker()
    root = _manifest(src, b"wanted", b"not wanted")
    src.tag(root, "v1")
    unwanted = Descriptor.of_bytes(mediatypes.ORMB_LAYER, b"not wanted")
    stats = copy(src, "v1", dst, "v1", include=lambda manifest, layer: layer.digest != unwanted.digest)
    assert [d.digest for d in stats.left_out] == [unwanted.digest]
    assert unwanted.digest not in dst.blobs and src.fetched[unwanted.digest] == 0
    assert Manifest.from_bytes(dst.blobs[root.digest]).config.digest in dst.blobs


@pytest.mark.parametrize("bad", ["layer", "child manifest"])
def test_a_failed_copy_moves_no_tag_and_leaves_no_root(bad: str) -> None:
    dst = Tracker()
    src = BadFetcher(set())
    old = _manifest(src, b"old weights")
    src.tag(old, "v1")
    copy(src, "v1", dst, "v1")
    child = _manifest(src, b"new weights", b"more new weights")
    root = _index(src, child)
    src.tag(root, "v1")
    src.bad = {Descriptor.of_bytes(mediatypes.ORMB_LAYER, b"more new weights").digest if bad == "layer"
               else child.digest}
    with pytest.raises(NetworkError):
        copy(src, "v1", dst, "v1", concurrency=4)
    assert dst.resolve("v1").digest == old.digest
    assert root.digest not in dst.blobs and child.digest not in dst.blobs


def test_the_root_comes_in_one_request_from_a_reference_fetcher() -> None:
    src, dst = ReferenceFetching(), Tracker()
    root = _manifest(src, b"weights")
    src.tag(root, "v1")
    copy(src, "v1", dst, "v1")
    assert src.reference_fetches == ["v1"] and src.resolved == [] and src.fetched[root.digest] == 0


def test_nesting_deeper_than_the_limit_is_refused_and_nothing_tagged() -> None:
    src, dst = Tracker(), Tracker()
    node = _manifest(src, b"at the bottom")
    for _ in range(MAX_GRAPH_DEPTH):
        node = _index(src, node)
    src.tag(node, "deep")
    with pytest.raises(InvalidArtifactError, match="nested more than"):
        copy(src, "deep", dst, "deep")
    assert dst.tags == {}
    shallow = _index(src, _index(src, _manifest(src, b"two levels down")))
    src.tag(shallow, "ok")
    copy(src, "ok", dst, "ok")
    assert dst.resolve("ok").digest == shallow.digest


def test_complete_existing_fetches_what_a_partial_copy_left_out() -> None:
    src = Tracker()
    child = _manifest(src, b"kept", b"left out before")
    root = _index(src, child)
    src.tag(root, "v1")
    left_out = Descriptor.of_bytes(mediatypes.ORMB_LAYER, b"left out before").digest
    dst = Tracker()
    copy(src, "v1", dst, "v1", include=lambda m, layer: layer.digest != left_out)
    assert left_out not in dst.blobs and child.digest in dst.blobs
    copy(src, "v1", dst, "v1")  # oras-go: a node the destination has is not walked again
    assert left_out not in dst.blobs
    copy(src, "v1", dst, "v1", complete_existing=True)
    assert left_out in dst.blobs


def test_a_malformed_child_manifest_is_an_invalid_artifact_naming_it() -> None:
    src, dst = Tracker(), Tracker()
    broken = _blob(src, b'{"schemaVersion": 2, "config": "nope", "layers": []}', mediatypes.OCI_MANIFEST)
    src.tag(_index(src, broken), "v1")
    with pytest.raises(InvalidArtifactError, match=broken.digest):
        copy(src, "v1", dst, "v1")
    assert dst.tags == {}


def test_the_doubles_are_targets() -> None:
    for store in (Tracker(), BadFetcher(set()), Mounting({}), ReferenceFetching()):
        assert isinstance(store, Target) and isinstance(store, ReadOnlyTarget)


def test_a_stream_that_returns_short_reads_is_read_whole() -> None:
    class Trickle:
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def read(self, n: int = -1, /) -> bytes:
            return self._data.read(min(n, 3) if n >= 0 else 3)

    store = MemoryStore()
    desc = Descriptor.of_bytes("application/octet-stream", b"0123456789")
    store.push(desc, Trickle(b"0123456789"))
    assert store.blobs[desc.digest] == b"0123456789"


@pytest.mark.parametrize("complete_existing", [False, True])
@pytest.mark.parametrize("order", ["blob first", "node first"])
def test_a_digest_met_as_a_blob_and_as_a_node_is_walked_as_a_node(complete_existing: bool, order: str) -> None:
    """F5: B is a layer of A (moved as bytes) and an entry of the index (a node): the copy claimed B once, by
    digest, so B's own children were never fetched, and the tag pointed at an incomplete graph."""
    src, dst = Tracker(), Tracker()
    inner = _manifest(src, b"the layer only B reaches")
    as_blob = Descriptor("application/vnd.example.blob", inner.digest, inner.size)
    holder = Manifest(_blob(src, b'{"format":"Others"}', mediatypes.ORMB_CONFIG), (as_blob,)).to_bytes()
    outer = _blob(src, holder, mediatypes.OCI_MANIFEST)
    src.tag(_index(src, *((outer, inner) if order == "blob first" else (inner, outer))), "idx")
    copy(src, "idx", dst, "idx", complete_existing=complete_existing)
    assert _reach(src, inner) <= set(dst.blobs)
    assert Counter(dst.pushed)[inner.digest] <= 2 and max(src.fetched.values()) <= 2


@pytest.mark.parametrize("wanted_first", [True, False])
def test_a_wanted_layer_identical_to_a_left_out_one_is_copied(wanted_first: bool) -> None:
    """F6: a.bin and b.bin hold the same bytes (one digest); 'pull --include a.bin' left it out because b.bin
    was refused, and the export of a.bin then found it missing."""
    src, dst = Tracker(), Tracker()
    same = _blob(src, b"identical weights")
    a = Descriptor(same.media_type, same.digest, same.size, {"path": "a.bin"})
    b = Descriptor(same.media_type, same.digest, same.size, {"path": "b.bin"})
    config = _blob(src, b'{"format":"Others"}', mediatypes.ORMB_CONFIG)
    root = _blob(src, Manifest(config, (a, b) if wanted_first else (b, a)).to_bytes(), mediatypes.OCI_MANIFEST)
    src.tag(root, "v1")
    stats = copy(src, "v1", dst, "v1", include=lambda manifest, layer: layer.annotations.get("path") == "a.bin")
    assert same.digest in dst.blobs
    assert stats.left_out == []  # nothing the destination lacks
