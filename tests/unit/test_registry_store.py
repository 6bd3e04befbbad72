"""The registry's store on its own: gc's grace and locks, check and repair, untrusted files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ormb.server.storage_api import ManifestRecord, UploadConflict
from ormb.server.store import Store


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload(store: Store, repo: str, data: bytes) -> str:
    session = store.new_session(repo)
    with store.open_session(repo, session) as writer:
        writer.append(iter([data]))
        assert writer.digest("sha256") == sha(data)
        writer.commit(repo, sha(data))
    return sha(data)


def age(store: Store, seconds: float) -> None:
    """Pretend every link and session was last touched ``seconds`` ago."""
    with store.transaction() as db:
        db.execute("UPDATE blob_links SET touched = touched - ?", (seconds,))
        db.execute("UPDATE uploads SET touched = touched - ?", (seconds,))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "registry")


def test_gc_keeps_referenced_and_recently_touched_links_and_frees_the_rest(store: Store) -> None:
    kept, loose, remounted = upload(store, "r/a", b"kept"), upload(store, "r/a", b"loose"), upload(store, "r/a", b"re")
    record = ManifestRecord("r/a", sha(b"manifest"), "application/vnd.oci.image.manifest.v1+json", None, 8, None, {}, 0)
    assert store.put_manifest(record, b"manifest", [], [kept], ["v1"]) == []
    age(store, 7200)
    assert store.link("r/b", remounted)  # a mount today: its grace starts now, not when the blob was stored
    result = store.gc(3600)
    assert store.linked("r/a", kept) == 4 and store.linked("r/b", remounted) == 2
    assert store.linked("r/a", loose) is None and not store.blob_path(loose).exists()
    assert (result.blobs, result.links) == (1, 2)  # 'loose' and r/a's link to 're' (r/b keeps the blob)


def test_gc_leaves_a_session_a_request_holds_and_drops_a_stale_one(store: Store) -> None:
    held, stale = store.new_session("r/s"), store.new_session("r/s")
    age(store, 7200)
    with store.open_session("r/s", held) as writer:
        writer.append(iter([b"partial"]))
        age(store, 7200)
        assert store.gc(3600).uploads == 1
    assert store.session_size("r/s", held) == 7 and store.session_size("r/s", stale) is None


def test_one_request_at_a_time_per_session(store: Store) -> None:
    session = store.new_session("r/lock")
    with store.open_session("r/lock", session), pytest.raises(UploadConflict):
        with store.open_session("r/lock", session):
            pass
    with pytest.raises(LookupError):
        with store.open_session("r/lock", "nonexistent"):
            pass


def test_a_failed_append_leaves_the_acknowledged_bytes(store: Store) -> None:
    session = store.new_session("r/cut")
    with store.open_session("r/cut", session) as writer:
        writer.append(iter([b"0123456789"]))

    def broken() -> object:
        yield b"more"
        raise OSError("connection reset")

    with store.open_session("r/cut", session) as writer, pytest.raises(OSError):
        writer.append(broken())  # type: ignore[arg-type]
    with store.open_session("r/cut", session) as writer:
        assert (writer.size, writer.digest("sha256"), writer.digest("sha512")) == \
            (10, sha(b"0123456789"), "sha512:" + hashlib.sha512(b"0123456789").hexdigest())


def test_a_planted_file_is_replaced_by_verified_bytes_and_gc_removes_files_without_rows(store: Store) -> None:
    planted = store.blob_path(sha(b"real"))
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(b"evil")
    stray = store.blob_path(sha(b"stray"))
    stray.write_bytes(b"stray")
    upload(store, "r/p", b"real")
    assert planted.read_bytes() == b"real"
    store.gc(3600)
    assert planted.exists() and not stray.exists()


def test_check_finds_missing_corrupt_and_stray_files_and_repair_forgets_them(store: Store) -> None:
    good, bad, gone = upload(store, "r/c", b"good"), upload(store, "r/c", b"bad"), upload(store, "r/c", b"gone")
    store.blob_path(bad).write_bytes(b"BAD")
    store.blob_path(gone).unlink()
    store.blob_path(sha(b"stray")).write_bytes(b"stray")
    result = store.check()
    assert (result.blobs, result.missing, result.corrupt, result.orphans) == (3, [gone], [bad], [sha(b"stray")])
    repaired = store.check(repair=True)
    assert repaired.repaired and store.check().missing == [] and store.check().corrupt == []
    assert store.linked("r/c", bad) is None and store.linked("r/c", good) == 4
    upload(store, "r/c", b"bad")  # pushed again, now whole
    assert store.blob_path(bad).read_bytes() == b"bad"


def test_blob_paths_only_for_digests_of_the_grammar(store: Store) -> None:
    for bad in ("sha256:../../etc/passwd", "sha256:" + "a" * 63, "md5:" + "a" * 32, "sha256:" + "a" * 64 + "\n"):
        with pytest.raises(ValueError):
            store.blob_path(bad)
        assert store.open_blob("r/x", bad) is None


def test_head_refreshes_an_old_link(store: Store) -> None:
    digest = upload(store, "r/h", b"seen")
    age(store, 7200)
    assert store.linked("r/h", digest) == 4  # a client saw "exists" and will reference it soon
    store.gc(3600)
    assert store.linked("r/h", digest) == 4


def test_gc_and_check_give_the_reserve_back(store: Store) -> None:
    """They release the reserve (space to work on a full disk) and keep it again afterwards."""
    assert (store.root / "reserve").stat().st_size > 0
    store.gc(0)
    store.check(repair=True)
    assert (store.root / "reserve").stat().st_size > 0


def test_gc_forgets_the_catalog_file_records_of_freed_layers(store: Store) -> None:
    """The catalog (serve --trust-key) keeps each signed layer's file digests under the store; a layer gc frees
    takes its record with it, a kept layer keeps its record, and a stray temporary file goes."""
    from ormb.model.unpack import FileHashes
    from ormb.oci.descriptor import Descriptor
    from ormb.signing import FileRecords

    kept, loose = upload(store, "r/a", b"kept layer"), upload(store, "r/a", b"loose layer")
    record = ManifestRecord("r/a", sha(b"manifest"), "application/vnd.oci.image.manifest.v1+json", None, 8, None, {}, 0)
    assert store.put_manifest(record, b"manifest", [], [kept], ["v1"]) == []
    records = FileRecords(store.file_records_dir)
    hashes = FileHashes()
    hashes.file("w.bin", "0" * 64, 1)
    for digest in (kept, loose):
        records.put(Descriptor("application/vnd.oci.image.layer.v1.tar", digest, 10), "", None, hashes)
    stray = store.file_records_dir / "sha256" / ".record-killed.tmp"
    stray.write_text("{}")
    age(store, 7200)
    store.gc(3600)
    left = {p.name.partition(".")[0] for p in (store.file_records_dir / "sha256").iterdir()}
    assert left == {kept.partition(":")[2]}
