"""Hugging Face download layouts save as the model's real files.

- A cache snapshot (``huggingface_hub.snapshot_download()`` without ``local_dir``):
  ``models--ORG--NAME/snapshots/<revision>/`` whose files are relative symlinks into
  ``../../blobs/<hash>``; saving the snapshot directory packs the files the links name.
- A ``--local-dir`` download: the files themselves plus ``.cache/huggingface/`` (download
  metadata and locks) and often ``.gitattributes``; those hidden entries are left out.
"""

from __future__ import annotations

from pathlib import Path

from hf_layouts import FILES, hf_cache_snapshot

from conftest import make_model
from ormb import api
from ormb.config import Settings


def test_a_cache_snapshot_saves_the_real_files(tmp_path: Path, settings: Settings) -> None:
    snapshot = hf_cache_snapshot(tmp_path)
    assert all((snapshot / name).is_symlink() for name in FILES)
    for artifact_format in ("modelpack", "ormb"):
        result = api.save(snapshot, f"acme/tiny:{artifact_format}", settings=settings, artifact_format=artifact_format)
        assert result.format == "SafeTensors" and result.files == len(FILES) and result.skipped == ()
        # what the links name is outside the snapshot directory: packed, and said so
        assert any(note.startswith(f"packed what {len(FILES)} link(s) outside ") for note in result.notes)
        out = tmp_path / f"out-{artifact_format}"
        api.export(f"acme/tiny:{artifact_format}", out, settings=settings)
        base = out if artifact_format == "modelpack" else out / "model"
        for name, data in FILES.items():
            assert not (base / name).is_symlink() and (base / name).read_bytes() == data


def test_a_local_dir_download_leaves_its_cache_out(tmp_path: Path, settings: Settings) -> None:
    local = make_model(tmp_path / "local", {}, ormbfile=None)
    for name, data in FILES.items():
        (local / name).write_bytes(data)
    meta = local / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    (meta / "model.safetensors.metadata").write_text("0123\nabc\n1700000000.0\n")
    (meta / "model.safetensors.lock").write_text("")
    (local / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    result = api.save(local, "acme/tiny:v1", settings=settings, artifact_format="modelpack")
    assert result.hidden == (".cache/", ".gitattributes")
    assert sorted(api.inspect("acme/tiny:v1", settings=settings).files) == sorted(FILES)
    # the same files from the snapshot make the same artifact
    snapshot = hf_cache_snapshot(tmp_path / "elsewhere")
    assert api.save(snapshot, "acme/tiny:v2", settings=settings, artifact_format="modelpack").digest == result.digest
