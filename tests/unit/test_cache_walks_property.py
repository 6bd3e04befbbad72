"""Generated caches: prune never deletes what a reference may reach, and copy never reaches what prune
would delete.

Hypothesis builds graphs of manifests, indexes (nested), subjects, broken nodes (truncated or
mistyped JSON that still names digests), unnamed index.json entries (an unnamed manifest with a
subject is a referrer, such as a signature: kept while its subject is) and garbage blobs.  Where a
node is referenced (an index entry, a subject, an index.json entry) its descriptor may say any
media type: its own, ``application/json``, another node type, or a vendor type copy does not know
(copy still reads it as a node: review finding F4).  A node's bytes may start with a UTF-8 BOM or
whitespace (JSON allows both; F4 again).  The oracle is written here from the JSON by hand: a node
that parses gives its children, one that does not gives every digest written in it.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from ormb import api
from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.content.memory import MemoryStore
from ormb.content.target import push_bytes
from ormb.errors import InvalidArtifactError
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor
from ormb.oci.graph import NODE_TYPES
from ormb.transfer import copy

DIGEST = re.compile(rb"sha256:[a-f0-9]{64}")

vendor_types = st.from_regex(r"application/vnd\.[a-z]{1,8}\.[a-z0-9.]{1,12}(\+json)?\Z", fullmatch=True)
recorded_as = st.one_of(  # the mediaType of the descriptors that point at a node ("" keeps its own)
    st.just(""), st.sampled_from(["application/json", "application/octet-stream", "text/plain", *sorted(NODE_TYPES),
                                  mediatypes.ORMB_LAYER, mediatypes.ORMB_CONFIG]), vendor_types)
leading = st.sampled_from([b"", b"\xef\xbb\xbf", b" " * 100, b"\r\n\t " * 30, b"\xef\xbb\xbf" + b"\n" * 70])
node_spec = st.tuples(
    st.sampled_from(["manifest", "index", "broken"]),
    st.lists(st.integers(0, 40), max_size=4),  # children: indexes into what exists so far
    recorded_as,
    st.booleans(),  # a manifest with a subject
    leading,  # bytes before the JSON document
)


@given(layers=st.integers(1, 6), nodes=st.lists(node_spec, min_size=1, max_size=8),
       named=st.lists(st.integers(0, 40), max_size=4), unnamed=st.lists(st.integers(0, 40), max_size=2),
       garbage=st.integers(0, 3))
# found by this test: a manifest with a subject that is both named and an unnamed entry is a root (a
# signature someone tagged), not a referrer waiting for its subject
@example(layers=1, nodes=[("manifest", [], "", False, b""), ("manifest", [], "", False, b""),
                          ("manifest", [], "", True, b"")], named=[14], unnamed=[14], garbage=0)
def test_prune_keeps_every_reachable_blob_and_copy_reaches_nothing_else(
        layers: int, nodes: list[tuple[str, list[int], str, bool, bytes]], named: list[int], unnamed: list[int],
        garbage: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        settings = Settings(home=Path(directory), default_registry="localhost:5000")
        layout = OCILayout(settings.cache_dir)

        def put(media_type: str, data: bytes) -> Descriptor:
            desc = Descriptor.of_bytes(media_type, data)
            push_bytes(layout, desc, data)
            return desc

        config = put(mediatypes.ORMB_CONFIG, b'{"format":"Others"}')
        blobs = [put(mediatypes.ORMB_LAYER, f"layer {i}".encode()) for i in range(layers)]
        made: list[Descriptor] = []
        for i, (kind, picks, recorded, with_subject, prefix) in enumerate(nodes):
            children = [made[p % len(made)] for p in picks] if made else []
            if kind == "manifest":
                doc: dict[str, object] = {
                    "schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST, "config": config.to_dict(),
                    "layers": [blobs[p % layers].to_dict() for p in picks] or [blobs[0].to_dict()]}
                if with_subject and made:
                    doc["subject"] = made[-1].to_dict()
                desc = put(mediatypes.OCI_MANIFEST, prefix + json.dumps(doc).encode())
            elif kind == "index":
                doc = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": [
                    c.to_dict() for c in children]}
                desc = put(mediatypes.OCI_INDEX, prefix + json.dumps(doc).encode())
            else:  # names digests, but is not a valid node: a size that is a string, then cut short
                names = [c.digest for c in children] + [blobs[p % layers].digest for p in picks]
                text = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": [
                    {"mediaType": mediatypes.OCI_MANIFEST, "digest": d, "size": "?"} for d in names]})
                desc = put(mediatypes.OCI_INDEX, prefix + text.encode()[: len(text) - 2] + f" #{i}".encode())
            made.append(Descriptor(recorded, desc.digest, desc.size) if recorded else desc)
        for g in range(garbage):
            put(mediatypes.ORMB_LAYER, f"garbage {g}".encode())
        names = sorted({n % len(made) for n in named})
        for n in names:
            layout.tag(made[n], f"localhost:5000/gen/m:t{n}")
        if unnamed:
            index = json.loads((settings.cache_dir / "index.json").read_text())
            index["manifests"] += [made[u % len(made)].to_dict() for u in unnamed]
            (settings.cache_dir / "index.json").write_text(json.dumps(index))
        roots = [made[n] for n in names]
        referrers: dict[str, str] = {}  # an unnamed entry whose manifest has a subject: kept while its subject is
        for u in unnamed:
            subject = _subject(layout.blob_path(made[u % len(made)].digest).read_bytes())
            if subject is not None and made[u % len(made)].digest not in {d.digest for d in roots}:
                referrers[made[u % len(made)].digest] = subject
            else:
                roots.append(made[u % len(made)])

        expected = _oracle(layout, roots)
        while ready := [d for d, s in referrers.items() if s in expected and d not in expected]:
            expected |= _oracle(layout, [Descriptor("", d, 0) for d in ready])
            referrers = {d: s for d, s in referrers.items() if d not in ready}
        copied: set[str] = set()
        for n in names:
            target = MemoryStore()
            try:
                copy(layout, f"localhost:5000/gen/m:t{n}", target, "x")
            except InvalidArtifactError:
                continue  # a broken node below: copy refuses, which is fine
            copied |= set(target.blobs)
        assert copied <= expected, "copy reached a blob the oracle does not"

        api.prune(settings=settings)
        left = set(layout.blob_digests())
        assert expected <= left, f"prune deleted {sorted(expected - left)}"
        orphans = set(referrers) - expected
        assert not orphans & left, "prune kept a referrer whose subject nothing else reaches"
        assert not any(f"garbage {g}".encode() in layout.blob_path(d).read_bytes()
                       for d in left for g in range(garbage)), "garbage was kept"


def _oracle(layout: OCILayout, roots: list[Descriptor]) -> set[str]:
    """Every digest the roots may reach: children of what parses, every digest named in what does not."""
    seen: set[str] = set()
    stack = [r.digest for r in roots]
    while stack:
        digest = stack.pop()
        if digest in seen:
            continue
        seen.add(digest)
        data = layout.blob_path(digest).read_bytes()
        try:  # json.loads takes bytes with a BOM and surrounding whitespace, as copy does
            doc = json.loads(data)
            children = [m["digest"] for m in doc.get("manifests", [])]
            if "config" in doc:
                children += [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]
            if "subject" in doc:
                children.append(doc["subject"]["digest"])
            if any(not isinstance(m.get("size"), int) for m in doc.get("manifests", [])):
                raise ValueError("broken")
        except (ValueError, AttributeError, KeyError, TypeError):  # not JSON, or not a node: what it names
            children = [m.decode() for m in DIGEST.findall(data)]
        stack.extend(children)
    return seen


def _subject(data: bytes) -> str | None:
    """The subject digest of a manifest (a referrer when an unnamed entry names it), else None."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    subject = doc.get("subject") if isinstance(doc, dict) and "config" in doc else None
    return subject["digest"] if isinstance(subject, dict) else None
