from pathlib import Path

import pytest

from conftest import make_model
from ormb import api
from ormb.config import Settings
from ormb.errors import InvalidReferenceError, NotFoundError


def _blob_count(settings: Settings) -> int:
    return len(list((settings.cache_dir / "blobs" / "sha256").iterdir()))


def test_models_lists_sorted_with_format_and_size(tmp_path: Path, settings: Settings) -> None:
    src = make_model(tmp_path / "a", {"m.onnx": b"onnx"}, ormbfile="format: ONNX\n")
    api.save(src, "zeta/m:v1", settings=settings)
    api.save(src, "alpha/m:v2", settings=settings)
    api.save(src, "alpha/m:v1", settings=settings)
    found = api.models(settings=settings)
    assert [str(m.reference) for m in found] == [
        "localhost:5000/alpha/m:v1", "localhost:5000/alpha/m:v2", "localhost:5000/zeta/m:v1",
    ]
    assert {m.format for m in found} == {"ONNX"}
    assert all(m.size > 0 and m.created is not None for m in found)


def test_tag_remove_and_prune(tmp_path: Path, settings: Settings) -> None:
    one = make_model(tmp_path / "one", {"w.bin": b"one"})
    two = make_model(tmp_path / "two", {"w.bin": b"two"})
    first = api.save(one, "m:v1", settings=settings)
    api.save(two, "m:v2", settings=settings)
    api.tag("m:v1", "other/m:prod", settings=settings)
    assert api.inspect("other/m:prod", settings=settings).digest == first.digest
    assert _blob_count(settings) == 5  # one config is shared: both say format Others
    api.remove("m:v1", settings=settings)
    assert api.prune(settings=settings).blobs == 0  # other/m:prod still reaches v1's blobs
    api.remove("other/m:prod", settings=settings)
    result = api.prune(settings=settings)
    assert (result.blobs, _blob_count(settings)) == (2, 3)
    assert result.bytes > 0
    assert [str(m.reference) for m in api.models(settings=settings)] == ["localhost:5000/m:v2"]
    api.export("m:v2", tmp_path / "out", settings=settings)  # what is left still works


def test_prune_removes_leftovers_of_killed_writes(settings: Settings, tmp_path: Path) -> None:
    src = make_model(tmp_path / "one", {"w.bin": b"one"})
    api.save(src, "m:v1", settings=settings)
    leftover = settings.cache_dir / ".ingest" / "blob-killed.partial"
    leftover.write_bytes(b"half")
    api.prune(settings=settings)
    assert not leftover.exists()


def test_missing_references_and_bad_input(settings: Settings) -> None:
    with pytest.raises(NotFoundError, match="not in the local cache"):
        api.inspect("nothing:v1", settings=settings)
    with pytest.raises(NotFoundError):
        api.remove("nothing:v1", settings=settings)
    with pytest.raises(NotFoundError):
        api.tag("nothing:v1", "x:v1", settings=settings)
    with pytest.raises(InvalidReferenceError, match="has no tag"):
        api.save(".", "m@sha256:" + "a" * 64, settings=settings)
