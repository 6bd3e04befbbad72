import io
import json
import multiprocessing
from pathlib import Path

import pytest

from ormb.content.layout import OCILayout
from ormb.content.memory import MemoryStore
from ormb.content.target import Ingester, TagLister, Target, Untagger, fetch_bytes, push_bytes
from ormb.errors import IntegrityError, NotFoundError
from ormb.oci.descriptor import Descriptor, Manifest

BLOB = b"hello model"


def _manifest() -> tuple[Descriptor, bytes, Descriptor]:
    config = Descriptor.of_bytes("application/vnd.caicloud.model.config.v1alpha1+json", b"{}")
    layer = Descriptor.of_bytes("application/tar+gzip", BLOB)
    data = Manifest(config, (layer,)).to_bytes()
    return Descriptor.of_bytes("application/vnd.oci.image.manifest.v1+json", data), data, config


@pytest.fixture(params=["layout", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    return OCILayout(tmp_path / "layout") if request.param == "layout" else MemoryStore()


def test_both_stores_are_targets_with_the_optional_abilities(store: Target) -> None:
    assert isinstance(store, Target)
    assert isinstance(store, Ingester) and isinstance(store, Untagger) and isinstance(store, TagLister)


def test_push_fetch_tag_resolve_untag(store: Target) -> None:
    desc = Descriptor.of_bytes("application/octet-stream", BLOB)
    assert not store.exists(desc)
    store.push(desc, io.BytesIO(BLOB))
    assert store.exists(desc)
    assert fetch_bytes(store, desc) == BLOB
    manifest_desc, data, _ = _manifest()
    push_bytes(store, manifest_desc, data)
    store.tag(manifest_desc, "localhost:5000/m:v1")
    assert store.resolve("localhost:5000/m:v1").digest == manifest_desc.digest
    assert isinstance(store, Untagger)
    assert store.untag("localhost:5000/m:v1").digest == manifest_desc.digest
    with pytest.raises(NotFoundError):
        store.resolve("localhost:5000/m:v1")


def test_push_refuses_wrong_bytes_and_keeps_nothing(store: Target) -> None:
    desc = Descriptor.of_bytes("application/octet-stream", BLOB)
    with pytest.raises(IntegrityError):
        store.push(desc, io.BytesIO(b"evil model"))
    assert not store.exists(desc)
    with pytest.raises(IntegrityError):
        store.push(desc, io.BytesIO(BLOB + b"extra"))
    assert not store.exists(desc)


def test_ingest_commits_under_the_computed_digest(store: Target) -> None:
    assert isinstance(store, Ingester)
    with store.ingest() as writer:
        writer.write(b"abc")
        writer.write(memoryview(b"def"))
        desc = writer.commit("application/octet-stream")
    assert desc == Descriptor.of_bytes("application/octet-stream", b"abcdef")
    assert fetch_bytes(store, desc) == b"abcdef"


def test_interrupted_write_leaves_nothing_visible(tmp_path: Path) -> None:
    layout = OCILayout(tmp_path)
    with pytest.raises(RuntimeError):
        with layout.ingest() as writer:
            writer.write(b"half a model")
            raise RuntimeError("killed")
    assert list(layout.blob_digests()) == []
    assert list((tmp_path / ".ingest").iterdir()) == []


def test_layout_files_follow_the_oci_spec(tmp_path: Path) -> None:
    layout = OCILayout(tmp_path)
    manifest_desc, data, _ = _manifest()
    push_bytes(layout, manifest_desc, data)
    layout.tag(manifest_desc, "localhost:5000/m:v1")
    assert json.loads((tmp_path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["schemaVersion"] == 2
    entry = index["manifests"][0]
    assert entry["digest"] == manifest_desc.digest
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "localhost:5000/m:v1"
    assert (tmp_path / "blobs" / "sha256" / manifest_desc.digest.split(":")[1]).read_bytes() == data


def test_retagging_replaces_the_entry(tmp_path: Path) -> None:
    layout = OCILayout(tmp_path)
    manifest_desc, data, config = _manifest()
    push_bytes(layout, manifest_desc, data)
    layout.tag(manifest_desc, "r/m:v1")
    layout.tag(manifest_desc, "r/m:v1")
    assert [name for name, _ in layout.references()] == ["r/m:v1"]


def test_resolve_by_digest(tmp_path: Path) -> None:
    layout = OCILayout(tmp_path)
    manifest_desc, data, _ = _manifest()
    push_bytes(layout, manifest_desc, data)
    assert layout.resolve(f"r/m@{manifest_desc.digest}").media_type == manifest_desc.media_type


def _tag_many(root: str, worker: int) -> None:
    layout = OCILayout(Path(root))
    manifest_desc, data, _ = _manifest()
    push_bytes(layout, manifest_desc, data)
    for i in range(20):
        layout.tag(manifest_desc, f"r/m:w{worker}-{i}")


def test_concurrent_processes_lose_no_tag(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_tag_many, args=(str(tmp_path), w)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join()
        assert p.exitcode == 0
    names = {name for name, _ in OCILayout(tmp_path).references()}
    assert names == {f"r/m:w{w}-{i}" for w in range(4) for i in range(20)}
