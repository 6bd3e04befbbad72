"""Verified stamps (ormb.content.stamps): a cache blob verified when it entered the cache, and not written since,
is exported without hashing it again; every way of changing the blob after it was stamped still gets it refused.

The promise attacked here: export writes only bytes verified against their digest.  Who could break it with a
stamp in play: the same user writing into a stamped blob (in place, with mtime restored, truncated and
rewritten, replaced by rename, through a hard link), or planting a stamp (another blob's, garbage, huge, a
symbolic link).  ``test_without_the_ctime_and_inode_check_*`` shows that the attacks are real: a stamp that
records only size and mtime lets them through."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import make_model
from ormb import api
from ormb.cache import open_cache
from ormb.config import Settings
from ormb.content import stamps
from ormb.content.background import FileDigest
from ormb.errors import IntegrityError

SIZE = (1 << 20) + 333
FORMATS = ["ormb", "modelpack"]


class _Count:
    """How many cache blobs were hashed to be checked (FileDigest: the check thread), and how many bytes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hashed: list[int] = []
        count = self

        class Counting(FileDigest):
            def result(self) -> tuple[int, str]:
                read, digest = super().result()
                count.hashed.append(read)
                return read, digest

        monkeypatch.setattr(stamps, "FileDigest", Counting)


def _save(tmp_path: Path, settings: Settings, artifact_format: str, files: dict[str, bytes]) -> None:
    api.save(make_model(tmp_path / "m", files), "team/m:v1", settings=settings, artifact_format=artifact_format)


def _big_blobs(settings: Settings) -> list[Path]:
    """The cache's blobs that hold the weights (the model layer, or each raw weight layer)."""
    cache = open_cache(settings)
    layers = api.inspect("team/m:v1", settings=settings).layers
    return [cache.blob_path(str(layer["digest"])) for layer in layers if int(str(layer["size"])) >= SIZE - 1]


def _exported(tmp_path: Path, artifact_format: str, name: str = "w.bin") -> Path:
    return tmp_path / "out" / ("model" if artifact_format == "ormb" else "") / name


# -- stamping and skipping ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("artifact_format", FORMATS)
def test_save_stamps_every_blob_and_export_then_hashes_none(tmp_path: Path, settings: Settings,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           artifact_format: str) -> None:
    weights = os.urandom(SIZE)
    _save(tmp_path, settings, artifact_format, {"w.bin": weights})
    cache = open_cache(settings)
    assert cache.stamps is not None
    for digest in cache.blob_digests():
        assert cache.stamps.matches(digest, os.stat(cache.blob_path(digest))), digest
    counted = _Count(monkeypatch)
    api.export("team/m:v1", tmp_path / "out", settings=settings)
    assert _exported(tmp_path, artifact_format).read_bytes() == weights
    assert counted.hashed == []  # the stamp vouched: no byte of the blob was read to be hashed


@pytest.mark.parametrize("artifact_format", FORMATS)
def test_without_a_stamp_export_hashes_once_and_stamps_for_next_time(tmp_path: Path, settings: Settings,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     artifact_format: str) -> None:
    weights = os.urandom(SIZE)
    _save(tmp_path, settings, artifact_format, {"w.bin": weights})
    shutil.rmtree(settings.cache_dir / stamps.STAMP_DIR)
    monkeypatch.setattr(stamps, "RACY_NS", 0)  # the blob was written a moment ago (see the racy test below)
    counted = _Count(monkeypatch)
    api.export("team/m:v1", tmp_path / "out", settings=settings)
    (blob,) = _big_blobs(settings)
    assert counted.hashed == [blob.stat().st_size]
    shutil.rmtree(tmp_path / "out")
    api.export("team/m:v1", tmp_path / "out", settings=settings)
    assert counted.hashed == [blob.stat().st_size]  # the first export's hash left a stamp
    assert _exported(tmp_path, artifact_format).read_bytes() == weights


def test_a_blob_changed_within_the_racy_window_is_hashed_but_not_stamped(tmp_path: Path, settings: Settings,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """git's "racy" rule: a file whose ctime is less than RACY_NS old when its hash begins may still be written
    in the same clock tick without its ctime moving (coarse timestamps): it is not stamped; later it is."""
    _save(tmp_path, settings, "modelpack", {"w.bin": os.urandom(SIZE)})
    cache = open_cache(settings)
    assert cache.stamps is not None
    (blob,) = _big_blobs(settings)
    digest = f"sha256:{blob.name}"
    os.chmod(blob, blob.stat().st_mode)  # a change now: ctime is fresh, the ingest stamp no longer matches
    counted = _Count(monkeypatch)
    api.export("team/m:v1", tmp_path / "out", settings=settings)
    assert counted.hashed == [SIZE] and not cache.stamps.matches(digest, blob.stat())
    monkeypatch.setattr(stamps.time, "time_ns", lambda: blob.stat().st_ctime_ns + stamps.RACY_NS)  # a second on
    shutil.rmtree(tmp_path / "out")
    api.export("team/m:v1", tmp_path / "out", settings=settings)
    assert counted.hashed == [SIZE, SIZE] and cache.stamps.matches(digest, blob.stat())


def test_stamps_are_private_to_the_user(tmp_path: Path, settings: Settings) -> None:
    _save(tmp_path, settings, "modelpack", {"w.bin": os.urandom(100)})
    root = settings.cache_dir / stamps.STAMP_DIR
    assert (root.stat().st_mode & 0o777, (root / "sha256").stat().st_mode & 0o777) == (0o700, 0o700)
    assert {p.stat().st_mode & 0o777 for p in (root / "sha256").iterdir()} == {0o600}


def test_a_stamp_directory_that_is_a_link_gets_no_stamp_written_through_it(tmp_path: Path, settings: Settings) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o777)
    settings.cache_dir.mkdir(parents=True)
    os.symlink(elsewhere, settings.cache_dir / stamps.STAMP_DIR)
    _save(tmp_path, settings, "modelpack", {"w.bin": os.urandom(100)})  # saved all the same
    assert list(elsewhere.iterdir()) == []
    (elsewhere / "sha256").mkdir()
    (elsewhere / "sha256" / "keep").write_text("someone's file")
    api.prune(settings=settings)  # prune does not clear what the link points at
    assert (elsewhere / "sha256" / "keep").read_text() == "someone's file"


def test_a_signature_verified_export_trusts_no_stamp(tmp_path: Path, settings: Settings,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """export_model with a check (what --verify-key / --trust-dir pass) hashes the cache copy whatever its stamp."""
    from ormb.model.export import export_model
    from ormb.model.loaded import load_model

    weights = os.urandom(SIZE)
    _save(tmp_path, settings, "modelpack", {"w.bin": weights})
    cache = open_cache(settings)
    model = load_model(cache, cache.resolve("localhost:5000/team/m:v1"))
    counted = _Count(monkeypatch)
    seen: list[dict[str, str]] = []
    export_model(cache, model.manifest, tmp_path / "out", metadata=None, local_copy=lambda d: cache.blob_path(d.digest),
                 check=lambda hashes: seen.append(hashes.digests()), stamps=cache.stamps)
    assert counted.hashed == [SIZE] and seen == [{"w.bin": hashlib.sha256(weights).hexdigest()}]


# -- damage after stamping: refused, whatever the way -------------------------------------------------------------

def _flip(blob: Path) -> None:
    with open(blob, "r+b") as f:
        f.seek(SIZE // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))


def _damaged_bytes(blob: Path) -> bytes:
    data = bytearray(blob.read_bytes())
    data[SIZE // 2] ^= 0x40
    return bytes(data)


def overwrite_in_place(blob: Path) -> None:
    _flip(blob)


def overwrite_and_restore_mtime(blob: Path) -> None:
    before = blob.stat()
    _flip(blob)
    os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))


def truncate_and_rewrite(blob: Path) -> None:
    before = blob.stat()
    data = _damaged_bytes(blob)
    with open(blob, "r+b") as f:
        f.truncate(0)
        f.write(data)
    os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))


def replace_by_rename(blob: Path) -> None:
    before = blob.stat()
    other = blob.with_name("replacement")
    other.write_bytes(_damaged_bytes(blob))
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(other, blob)


def write_through_a_hard_link(blob: Path) -> None:
    before = blob.stat()
    link = blob.with_name("link")
    os.link(blob, link)
    _flip(link)
    os.unlink(link)
    os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))


DAMAGE = [overwrite_in_place, overwrite_and_restore_mtime, truncate_and_rewrite, replace_by_rename,
          write_through_a_hard_link]


@pytest.mark.parametrize("artifact_format", FORMATS)
@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_a_stamped_blob_changed_after_stamping_is_refused(tmp_path: Path, settings: Settings, artifact_format: str,
                                                          damage: Callable[[Path], None]) -> None:
    _save(tmp_path, settings, artifact_format, {"w.bin": os.urandom(SIZE)})
    (blob,) = _big_blobs(settings)
    damage(blob)
    with pytest.raises(IntegrityError, match="does not match its digest") as refused:
        api.export("team/m:v1", tmp_path / "out", settings=settings)
    assert refused.value.exit_code == 4
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("artifact_format", FORMATS)
@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_without_the_ctime_and_inode_check_the_damage_would_pass(tmp_path: Path, settings: Settings,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 artifact_format: str,
                                                                 damage: Callable[[Path], None]) -> None:
    """The attacks above are real: a stamp of (size, mtime) only, as a naive cache would keep, exports the
    damaged bytes.  Only the ctime and the inode number in the stamp stop them."""
    monkeypatch.setattr(stamps, "identity", lambda s: (s.st_dev, 0, s.st_size, s.st_mtime_ns, 0))  # no inode, ctime
    weights = os.urandom(SIZE)
    _save(tmp_path, settings, artifact_format, {"w.bin": weights})
    (blob,) = _big_blobs(settings)
    damage(blob)
    if damage is overwrite_in_place:  # its mtime moved: even the naive stamp sees it
        with pytest.raises(IntegrityError):
            api.export("team/m:v1", tmp_path / "out", settings=settings)
        return
    api.export("team/m:v1", tmp_path / "out", settings=settings)
    assert _exported(tmp_path, artifact_format).read_bytes() != weights  # damaged bytes written: what the check stops


def test_another_blobs_stamp_with_its_inode_does_not_vouch(tmp_path: Path, settings: Settings) -> None:
    """Blob B replaced by a hard link to blob A (same size) and A's stamp copied over B's: the file and the
    stamp agree exactly, but the stamp is of another digest."""
    _save(tmp_path, settings, "modelpack", {"a.bin": os.urandom(SIZE), "b.bin": os.urandom(SIZE)})
    cache = open_cache(settings)
    assert cache.stamps is not None
    a, b = _big_blobs(settings)
    a_digest, b_digest = f"sha256:{a.name}", f"sha256:{b.name}"
    os.unlink(b)
    os.link(a, b)
    shutil.copyfile(cache.stamps.path(a_digest), cache.stamps.path(b_digest))
    with pytest.raises(IntegrityError, match="does not match its digest"):
        api.export("team/m:v1", tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists()


def _forge(settings: Settings, blob: Path) -> dict[str, object]:
    """A stamp that would vouch for the blob as it is now (what an attacker needs)."""
    s = blob.stat()
    return {"digest": f"sha256:{blob.name}", "dev": s.st_dev, "ino": s.st_ino, "size": s.st_size,
            "mtime_ns": s.st_mtime_ns, "ctime_ns": s.st_ctime_ns}


def _garbage(path: Path, forged: dict[str, object], elsewhere: Path) -> None:
    path.write_bytes(b"\x00\xff not json {")


def _huge(path: Path, forged: dict[str, object], elsewhere: Path) -> None:
    path.write_bytes(json.dumps(forged).encode() + b" " * (1 << 20))  # valid JSON, too long to be read


def _symlink(path: Path, forged: dict[str, object], elsewhere: Path) -> None:
    elsewhere.write_text(json.dumps(forged))
    path.unlink(missing_ok=True)
    os.symlink(elsewhere, path)


def _directory(path: Path, forged: dict[str, object], elsewhere: Path) -> None:
    path.unlink(missing_ok=True)
    path.mkdir()


def _wrong_types(path: Path, forged: dict[str, object], elsewhere: Path) -> None:
    path.write_text(json.dumps({**forged, "ino": str(forged["ino"]), "size": float(str(forged["size"]))}))


def _fifo(path: Path, forged: dict[str, object], elsewhere: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


HOSTILE = [_garbage, _huge, _symlink, _directory, _wrong_types, _fifo]


@pytest.mark.parametrize("plant", HOSTILE, ids=lambda f: f.__name__.strip("_"))
def test_a_hostile_stamp_is_no_stamp(tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                     plant: Callable[[Path, dict[str, object], Path], None]) -> None:
    """A planted stamp never vouches for a damaged blob (a symbolic link to a forged stamp, one too large, ...),
    and never makes an export of a sound blob fail: it is hashed."""
    weights = os.urandom(SIZE)
    _save(tmp_path, settings, "modelpack", {"w.bin": weights})
    cache = open_cache(settings)
    assert cache.stamps is not None
    (blob,) = _big_blobs(settings)
    stamp = cache.stamps.path(f"sha256:{blob.name}")
    _flip(blob)
    plant(stamp, _forge(settings, blob), tmp_path / "forged.json")
    with pytest.raises(IntegrityError, match="does not match its digest"):
        api.export("team/m:v1", tmp_path / "out", settings=settings)
    _flip(blob)  # sound again: the hostile stamp is ignored, the blob hashed, the export done
    counted = _Count(monkeypatch)
    api.export("team/m:v1", tmp_path / "out", settings=settings)
    assert _exported(tmp_path, "modelpack").read_bytes() == weights and counted.hashed == [SIZE]


def test_the_check_command_finds_damage_behind_a_forged_stamp(tmp_path: Path, settings: Settings) -> None:
    """What a stamp cannot see (a bit flipped by the disk, a write by root that set ctime back) is modelled by
    forging a stamp that matches the damaged file: export trusts it, ``ormb check`` does not."""
    _save(tmp_path, settings, "modelpack", {"w.bin": os.urandom(SIZE)})
    cache = open_cache(settings)
    assert cache.stamps is not None
    (blob,) = _big_blobs(settings)
    digest = f"sha256:{blob.name}"
    total = api.check(settings=settings)
    _flip(blob)
    cache.stamps.record(digest, blob.stat())  # the forgery
    with pytest.raises(IntegrityError, match=f"1 of {total.blobs} cached blobs do not match.*{digest}") as found:
        api.check(settings=settings)
    assert found.value.exit_code == 4
    assert not cache.stamps.matches(digest, blob.stat())  # the check dropped the stamp: export hashes again
    with pytest.raises(IntegrityError, match="does not match its digest"):
        api.export("team/m:v1", tmp_path / "out", settings=settings)


def test_a_stamp_is_forgotten_with_its_blob(tmp_path: Path, settings: Settings) -> None:
    _save(tmp_path, settings, "modelpack", {"w.bin": os.urandom(SIZE)})
    cache = open_cache(settings)
    assert cache.stamps is not None
    digests = set(cache.blob_digests())
    stray = cache.stamps.directory / "sha256" / ("0" * 64)
    stray.write_text("{}")  # a stamp whose blob is gone (a crash between the two deletions)
    api.remove("team/m:v1", settings=settings)
    api.prune(settings=settings)
    assert list(cache.blob_digests()) == []
    assert list((cache.stamps.directory / "sha256").iterdir()) == []
    assert digests  # there were blobs and stamps to remove


# -- generated damage ---------------------------------------------------------------------------------------------

SMALL = 64 << 10


def _flip_at(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


OPS = ["flip", "flip_restore_mtime", "rewrite_same", "rename_damaged", "link_write", "chmod", "restamp",
       "garbage_stamp", "restore", "export"]


@given(st.lists(st.sampled_from(OPS), min_size=1, max_size=6), st.data())
def test_property_export_never_writes_bytes_that_differ_from_the_digest(ops: list[str], data: st.DataObject) -> None:
    """Whatever sequence of changes to a stamped blob and its stamp (except forging a stamp for damaged bytes,
    which only root's ctime or the disk can do), each export either writes exactly the verified bytes or
    refuses (IntegrityError) and writes nothing."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(home=root / "home", default_registry="localhost:5000")
        weights = bytes(data.draw(st.binary(min_size=1, max_size=64))) * (SMALL // 64 + 1)
        weights = weights[:SMALL]
        api.save(make_model(root / "m", {"w.bin": weights}), "team/m:v1", settings=settings,
                 artifact_format=data.draw(st.sampled_from(FORMATS), label="format"))
        cache = open_cache(settings)
        assert cache.stamps is not None
        layers = api.inspect("team/m:v1", settings=settings).layers
        digest = str(max(layers, key=lambda layer: int(str(layer["size"])))["digest"])
        blob = cache.blob_path(digest)
        original = blob.read_bytes()
        for n, op in enumerate([*ops, "export"]):
            if op == "flip":
                _flip_at(blob, data.draw(st.integers(0, len(original) - 1)))
            elif op == "flip_restore_mtime":
                before = blob.stat()
                _flip_at(blob, data.draw(st.integers(0, len(original) - 1)))
                os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))
            elif op == "rewrite_same":
                before = blob.stat()
                content = blob.read_bytes()
                with open(blob, "r+b") as f:
                    f.truncate(0)
                    f.write(content)
                os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))
            elif op == "rename_damaged":
                other = root / "other"
                content = bytearray(blob.read_bytes())
                content[data.draw(st.integers(0, len(content) - 1))] ^= 1
                other.write_bytes(content)
                os.replace(other, blob)
            elif op == "link_write":
                link = root / "link"
                os.link(blob, link)
                _flip_at(link, data.draw(st.integers(0, len(original) - 1)))
                os.unlink(link)
            elif op == "chmod":
                os.chmod(blob, 0o644 if blob.stat().st_mode & 0o200 == 0 else 0o444)
            elif op == "restamp":  # what a later verification does: stamps only what it hashed and matched
                cache.stamps.remove(digest)
            elif op == "garbage_stamp":
                cache.stamps.path(digest).write_bytes(data.draw(st.binary(max_size=600)))
            elif op == "restore":
                other = root / "other"
                other.write_bytes(original)
                os.replace(other, blob)
            else:
                out = root / f"out{n}"
                try:
                    api.export("team/m:v1", out, settings=settings)
                except IntegrityError:
                    assert not out.exists()
                    continue
                exported = [p for p in out.rglob("w.bin")]
                assert len(exported) == 1 and exported[0].read_bytes() == weights
                assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest.partition(":")[2]


# -- a write while export copies: the copy and the hash are two reads of the file ---------------------------------

class _HashedFirst(FileDigest):
    """A check thread that read the whole blob before the copy began (the hash ran ahead of the kernel copy)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._early = super().result()

    def result(self) -> tuple[int, str]:
        return self._early


def _tamper_during_copy(monkeypatch: pytest.MonkeyPatch, blob: Path) -> None:
    """Another process writes into the cache blob just before the kernel copy reads it, and puts the bytes back
    right after: the copy holds bytes the hash never saw."""
    from ormb.model import unpack

    real_copy_out = unpack.copy_out
    original = blob.read_bytes()

    def copy_out(source: int, offset: int, fd: int, size: int, stop: object = None) -> int:
        with open(blob, "r+b") as writer:
            writer.seek(SIZE // 2)
            writer.write(b"\xff" * 64)
        try:
            return real_copy_out(source, offset, fd, size, stop)  # type: ignore[arg-type]
        finally:
            blob.write_bytes(original)  # in place, same inode

    monkeypatch.setattr(stamps, "FileDigest", _HashedFirst)
    monkeypatch.setattr(unpack, "copy_out", copy_out)


def test_a_blob_written_while_it_is_copied_is_refused_when_hashed(tmp_path: Path, settings: Settings,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """No stamp (or one that no longer matches): the blob is hashed while copied.  A write between the copy's read
    and the hash's read of the same bytes exported damaged bytes before (the hash matched); the blob's fstat is
    now compared before and after, as for a stamped blob."""
    weights = os.urandom(SIZE)
    _save(tmp_path, settings, "modelpack", {"w.bin": weights})
    shutil.rmtree(settings.cache_dir / stamps.STAMP_DIR)
    (blob,) = _big_blobs(settings)
    _tamper_during_copy(monkeypatch, blob)
    with pytest.raises(IntegrityError):
        api.export("team/m:v1", tmp_path / "out", settings=settings)
    assert not _exported(tmp_path, "modelpack").exists()


def test_a_blob_written_while_a_signature_verified_export_copies_it_is_refused(
        tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same race on the path that trusts no stamp at all (--verify-key / --trust-dir: stamps=None)."""
    from ormb.model.export import export_model
    from ormb.model.loaded import load_model

    _save(tmp_path, settings, "modelpack", {"w.bin": os.urandom(SIZE)})
    cache = open_cache(settings)
    model = load_model(cache, cache.resolve("localhost:5000/team/m:v1"))
    (blob,) = _big_blobs(settings)
    _tamper_during_copy(monkeypatch, blob)
    with pytest.raises(IntegrityError):
        export_model(cache, model.manifest, tmp_path / "out", metadata=None,
                     local_copy=lambda d: cache.blob_path(d.digest), check=lambda hashes: None, stamps=cache.stamps)
    assert not _exported(tmp_path, "modelpack").exists()


def test_a_write_through_a_mapping_dirtied_before_the_stamp_is_refused(tmp_path: Path, settings: Settings,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A write through a shared writable mapping to a page that is already dirty takes no page fault, so the
    kernel does not move ctime (until writeback makes the page clean again).  A tool holding such a mapping of
    a cache blob while an export hashes and stamps it could then change the blob unseen: the next export trusted
    the stamp and wrote the damaged bytes.  The hash path now writes the blob's dirty pages back before the fstat
    it stamps from, so every later write through a mapping faults and moves ctime."""
    import mmap
    import time

    weights = os.urandom(SIZE)
    _save(tmp_path, settings, "modelpack", {"w.bin": weights})
    (blob,) = _big_blobs(settings)
    monkeypatch.setattr(stamps, "RACY_NS", 0)  # instead of waiting a second before the first export
    with open(blob, "r+b") as file, mmap.mmap(file.fileno(), 0) as mapping:
        mapping[100] = mapping[100]  # the page is dirty and writable from now on; the ingest stamp is stale
        time.sleep(0.05)  # past one tick of a coarse clock
        api.export("team/m:v1", tmp_path / "out", settings=settings)  # hashed, matched: stamped
        time.sleep(0.05)
        mapping[100] ^= 0xFF
    with pytest.raises(IntegrityError):
        api.export("team/m:v1", tmp_path / "again", settings=settings)
    assert not (tmp_path / "again" / "w.bin").exists()


@pytest.fixture
def shm_home() -> Path:
    """A directory on tmpfs (/dev/shm): pages there are never written back."""
    assert Path("/dev/shm").is_dir(), "the tests need /dev/shm (tmpfs)"
    directory = Path(tempfile.mkdtemp(prefix="ormb-stamps-", dir="/dev/shm"))
    yield directory  # type: ignore[misc]
    shutil.rmtree(directory, ignore_errors=True)


def test_tmpfs_counts_as_not_writing_back_and_a_disk_does(tmp_path: Path, shm_home: Path) -> None:
    assert not stamps.writes_back(os.stat(shm_home).st_dev)
    assert stamps.writes_back(os.stat(tmp_path).st_dev)


def test_on_tmpfs_a_write_through_a_mapping_dirtied_before_an_export_is_refused(
        tmp_path: Path, shm_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mapping attack on a cache kept on tmpfs, where fdatasync writes nothing back and so write-protects
    nothing: an export that hashed the blob there must not stamp it, or the next export would trust the stamp
    while writes through the still-dirty page move no ctime."""
    import mmap
    import time

    settings = Settings(home=shm_home / "home", default_registry="localhost:5000")
    weights = os.urandom(SIZE)
    _save(tmp_path, settings, "modelpack", {"w.bin": weights})
    (blob,) = _big_blobs(settings)
    monkeypatch.setattr(stamps, "RACY_NS", 0)
    with open(blob, "r+b") as file, mmap.mmap(file.fileno(), 0) as mapping:
        mapping[100] = mapping[100]
        time.sleep(0.05)
        api.export("team/m:v1", tmp_path / "out", settings=settings)  # hashed, matched: not stamped on tmpfs
        time.sleep(0.05)
        mapping[100] ^= 0xFF
    with pytest.raises(IntegrityError):
        api.export("team/m:v1", tmp_path / "again", settings=settings)
    assert not (tmp_path / "again" / "w.bin").exists()
