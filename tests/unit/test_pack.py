import gzip
import io
import os
import tarfile
import tracemalloc
from pathlib import Path

from conftest import make_model
from ormb import api
from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.content.memory import MemoryStore
from ormb.content.target import fetch_bytes
from ormb.model import ormbformat
from ormb.model.files import list_model_files
from ormb.model.gzipstream import StoredGzipWriter
from ormb.model.ormbfile import Metadata
from ormb.oci.descriptor import Manifest

FILES = {"weights.bin": os.urandom(200_000), "sub/config.json": b'{"a": 1}', "z.txt": b"z"}


def test_stored_gzip_is_standard_and_independent_of_write_sizes() -> None:
    data = os.urandom(300_000)
    outputs = []
    for step in (1 << 20, 65535, 65536, 7, 100_000):
        out = io.BytesIO()
        writer = StoredGzipWriter(out)
        for i in range(0, len(data), step):
            writer.write(data[i : i + step])
        writer.close()
        outputs.append(out.getvalue())
        assert gzip.decompress(out.getvalue()) == data
    assert len(set(outputs)) == 1
    empty = io.BytesIO()
    w = StoredGzipWriter(empty)
    w.close()
    assert gzip.decompress(empty.getvalue()) == b""


def test_same_files_give_the_same_digest_whatever_path_mtime_mode_or_owner(tmp_path: Path, settings: Settings) -> None:
    a = make_model(tmp_path / "a", FILES)
    b = make_model(tmp_path / "elsewhere" / "b", dict(reversed(list(FILES.items()))))
    for path in (b / "model").rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
        if path.is_file():
            os.chmod(path, 0o600)  # no exec bit: still 0644 in the tar
    os.chown(b / "model" / "z.txt", 1234, 5678)
    first = api.save(a, "m:v1", settings=settings)
    second = api.save(b, "m:v2", settings=settings)
    assert first.digest == second.digest


def test_executable_bit_is_kept_and_changes_the_digest(tmp_path: Path, settings: Settings) -> None:
    a = make_model(tmp_path / "a", FILES)
    first = api.save(a, "m:v1", settings=settings)
    os.chmod(a / "model" / "z.txt", 0o755)
    second = api.save(a, "m:v2", settings=settings)
    assert first.digest != second.digest


def test_layer_is_a_tar_of_model_files_like_the_original(tmp_path: Path) -> None:
    src = make_model(tmp_path / "a", FILES)
    store = MemoryStore()
    packed = ormbformat.pack(list_model_files(src / "model"), Metadata(format="Others"), store)
    manifest = Manifest.from_bytes(fetch_bytes(store, packed.manifest))
    assert manifest.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert manifest.config.media_type == "application/vnd.caicloud.model.config.v1alpha1+json"
    assert [layer.media_type for layer in manifest.layers] == ["application/tar+gzip"]
    blob = store.blobs[manifest.layers[0].digest]
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, no time
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["model/sub/config.json", "model/weights.bin", "model/z.txt"]
        assert {(m.uid, m.gid, m.mtime, m.mode, m.uname) for m in members} == {(0, 0, 0, 0o644, "")}
        assert tar.extractfile("model/weights.bin").read() == FILES["weights.bin"]  # type: ignore[union-attr]
    assert packed.metadata.directory_structure == [m.name for m in members]


def test_memory_and_layout_targets_get_identical_artifacts(tmp_path: Path) -> None:
    src = make_model(tmp_path / "a", FILES)
    listing = list_model_files(src / "model")
    in_memory = ormbformat.pack(listing, Metadata(format="Others"), MemoryStore())
    on_disk = ormbformat.pack(listing, Metadata(format="Others"), OCILayout(tmp_path / "layout"))
    assert in_memory.manifest == on_disk.manifest


def test_save_streams_memory_does_not_grow_with_model_size(tmp_path: Path, settings: Settings) -> None:
    big = tmp_path / "big"
    (big / "model").mkdir(parents=True)
    with open(big / "model" / "weights.bin", "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    tracemalloc.start()
    api.save(big, "big:v1", settings=settings)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 << 20, f"peak Python allocation {peak / 2**20:.1f} MiB while saving 64 MiB"


def test_save_without_ormbfile_guesses_and_writes_nothing_into_the_directory(tmp_path: Path, settings: Settings) -> None:
    src = tmp_path / "loose"
    src.mkdir()
    (src / "model.onnx").write_bytes(b"onnx")
    before = sorted(p.name for p in src.iterdir())
    result = api.save(src, "m:v1", settings=settings)
    assert result.format == "ONNX" and result.format_guessed
    assert sorted(p.name for p in src.iterdir()) == before
    assert api.inspect("m:v1", settings=settings).files == ("model/model.onnx",)


def test_second_save_of_an_unchanged_directory_rewrites_no_blob(tmp_path: Path, settings: Settings) -> None:
    src = make_model(tmp_path / "a", FILES)
    api.save(src, "m:v1", settings=settings)
    blobs = sorted((settings.cache_dir / "blobs" / "sha256").iterdir())
    inodes = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in blobs]
    api.save(src, "m:v1", settings=settings)
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in blobs] == inodes
