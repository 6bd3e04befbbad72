"""The staging directory and the move into place: what another export, a killed one, another local user
or a failing rename can do to the destination.  The second security review's findings F6-F11 and its
notes on layers that claim one path; docs/security.md lists these tests.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from trees import snapshot

from conftest import craft_layer, craft_tar, make_model, place_model, place_modelpack
from ormb import api
from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.content.target import push_bytes
from ormb.errors import StorageError, UnsafeArchiveError
from ormb.model import modelpack, staging
from ormb.oci.descriptor import Descriptor

REF = "localhost:5000/evil/model:v1"
FILEPATH = modelpack.ANNOTATION_FILEPATH


# -- F6: names that cannot be encoded -----------------------------------------------------------


@pytest.mark.parametrize("path", ["a\ud800b", "d\ud800/x", "\udfff"])
def test_a_file_path_annotation_that_is_not_utf8_is_refused(tmp_path: Path, settings: Settings, path: str) -> None:
    layout = OCILayout(settings.cache_dir)
    config = b"{}"
    config_desc = Descriptor.of_bytes(modelpack.CONFIG, config)
    push_bytes(layout, config_desc, config)
    layer = Descriptor.of_bytes(modelpack.layer_type("weight"), b"R")
    layout.push(layer, io.BytesIO(b"R"))
    manifest = json.dumps({  # json.dumps writes the lone surrogate as the escape "\ud800", as a registry may
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": modelpack.ARTIFACT_TYPE,
        "config": {"mediaType": config_desc.media_type, "digest": config_desc.digest, "size": config_desc.size},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": 1,
                    "annotations": {FILEPATH: path}}]}).encode()
    desc = Descriptor.of_bytes("application/vnd.oci.image.manifest.v1+json", manifest)
    push_bytes(layout, desc, manifest)
    layout.tag(desc, REF)
    with pytest.raises(UnsafeArchiveError, match="UTF-8"):
        api.export(REF, tmp_path / "dest", settings=settings)
    assert not (tmp_path / "dest").exists()


# -- F7: only ormb's own abandoned staging directories are removed ----------------------------------


@pytest.mark.parametrize("variant", ["not marked", "another user's"])
def test_a_directory_renamed_to_a_staging_name_is_not_removed(tmp_path: Path, settings: Settings,
                                                              variant: str) -> None:
    # in a shared destination anyone may write, a local user renames someone's directory to
    # .ormb-export-0; the victim's next export used to delete it as an abandoned staging directory
    place_model(settings.cache_dir, REF, craft_layer([("model/w.bin", "file", b"w")]))
    dest = tmp_path / "dest"
    victim = dest / ".ormb-export-0"
    (victim / "thesis").mkdir(parents=True)
    (victim / "thesis" / "chapter1.tex").write_text("years of work")
    victim.chmod(0o700)
    if variant == "another user's":
        os.chown(victim, 12345, 12345)
    api.export(REF, dest, settings=settings)
    assert (victim / "thesis" / "chapter1.tex").read_text() == "years of work"
    assert (dest / "model" / "w.bin").read_bytes() == b"w"


# -- F9: a lock on the destination does not hang an export -----------------------------------------


def test_a_lock_held_on_the_destination_does_not_block_the_export(tmp_path: Path, settings: Settings) -> None:
    # anyone who can read the destination can flock it; the export used to wait for that lock forever
    place_model(settings.cache_dir, REF, craft_layer([("model/w.bin", "file", b"w")]))
    dest = tmp_path / "dest"
    dest.mkdir()
    holder = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    done = threading.Event()
    errors: list[BaseException] = []

    def export() -> None:
        try:
            api.export(REF, dest, settings=settings)
        except BaseException as exc:  # reported below
            errors.append(exc)
        done.set()

    thread = threading.Thread(target=export, daemon=True)
    thread.start()
    try:
        finished = done.wait(timeout=60)  # a hang guard, not a speed assertion: it takes milliseconds
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
        thread.join()
    assert finished, "the export waited for a lock someone else held on the destination"
    assert not errors, errors
    assert (dest / "model" / "w.bin").read_bytes() == b"w"


# -- F10: two exports into one new destination -----------------------------------------------------


def test_a_directory_that_appears_just_before_it_is_moved_is_merged(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race of two exports into the same new destination, made deterministic: export A runs whole
    just before export B renames its model/ into the destination, where B found none."""
    place_model(settings.cache_dir, "localhost:5000/a/m:v1", craft_layer([("model/a.bin", "file", b"a")]))
    place_model(settings.cache_dir, "localhost:5000/b/m:v1", craft_layer([("model/b.bin", "file", b"b")]))
    dest = tmp_path / "dest"
    armed = [True]

    def before_rename(name: object) -> None:
        if armed and name == "model":
            armed.clear()
            api.export("localhost:5000/a/m:v1", dest, metadata=False, settings=settings)

    real_replace = os.replace

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        before_rename(src)
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    if hasattr(staging, "_renameat"):  # the rename into place
        real_renameat = staging._renameat

        def renameat(src_fd: int, src: str, dst_fd: int, dst: str, *rest: Any) -> None:
            before_rename(src)
            real_renameat(src_fd, src, dst_fd, dst, *rest)

        monkeypatch.setattr(staging, "_renameat", renameat)
    api.export("localhost:5000/b/m:v1", dest, metadata=False, settings=settings)
    assert not armed
    assert sorted(p.name for p in (dest / "model").iterdir()) == ["a.bin", "b.bin"]
    assert sorted(p.name for p in dest.iterdir()) == ["model"]


def test_concurrent_exports_into_one_new_destination_all_succeed(tmp_path: Path, settings: Settings) -> None:
    place_model(settings.cache_dir, "localhost:5000/a/m:v1", craft_layer([("model/a.bin", "file", b"a")]))
    place_model(settings.cache_dir, "localhost:5000/b/m:v1", craft_layer([("model/b.bin", "file", b"b")]))
    errors: list[str] = []
    for i in range(60):
        dest = tmp_path / f"dest{i}"
        barrier = threading.Barrier(2)

        def run(ref: str, dest: Path = dest, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                api.export(ref, dest, metadata=False, settings=settings)
            except Exception as exc:  # counted below
                errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=run, args=(ref,)) for ref in ("localhost:5000/a/m:v1",
                                                                          "localhost:5000/b/m:v1")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(p.name for p in (dest / "model").iterdir()) == ["a.bin", "b.bin"], errors
    assert not errors, errors[:3]


# -- F11: parents the export made are removed when it fails ----------------------------------------


def test_parent_directories_made_for_a_failed_export_are_removed(tmp_path: Path, settings: Settings) -> None:
    place_model(settings.cache_dir, REF, craft_layer([("model/a", "symlink", "../..")]))
    with pytest.raises(UnsafeArchiveError):
        api.export(REF, tmp_path / "x" / "y" / "dest", settings=settings)
    assert not (tmp_path / "x").exists()


def test_a_parent_that_existed_or_filled_up_meanwhile_stays(tmp_path: Path, settings: Settings) -> None:
    place_model(settings.cache_dir, REF, craft_layer([("model/a", "symlink", "../..")]))
    (tmp_path / "x").mkdir()
    with pytest.raises(UnsafeArchiveError):
        api.export(REF, tmp_path / "x" / "y" / "dest", settings=settings)
    assert sorted(os.listdir(tmp_path / "x")) == []


# -- F8: a failure during the move puts everything back --------------------------------------------


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "plain rename"])
def test_a_rename_that_fails_anywhere_in_the_move_leaves_the_destination_as_it_was(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch, exchange: bool,
) -> None:
    files = {"a.bin": b"new a", "old.bin": b"new old", "sub/x.bin": b"x", "sub/deeper/y.bin": b"y"}
    api.save(make_model(tmp_path / "src", files), "m:v1", settings=settings)
    template = tmp_path / "template"
    (template / "model" / "sub").mkdir(parents=True)
    (template / "model" / "old.bin").write_bytes(b"old")
    (template / "model" / "sub" / "x.bin").write_bytes(b"old x")
    (template / "keep.txt").write_text("mine")
    os.symlink("keep.txt", template / "ormbfile.yaml")  # a link where the metadata goes: replaced, not followed
    if not exchange:
        monkeypatch.setattr(staging, "_HAVE_RENAMEAT2", False)
    real = staging._renameat
    for fail_at in range(100):
        dest = tmp_path / f"dest{fail_at}"
        shutil.copytree(template, dest, symlinks=True)
        before = snapshot(dest)
        calls = [0]

        def renameat(*args: object, calls: list[int] = calls, fail_at: int = fail_at) -> None:
            calls[0] += 1
            if calls[0] == fail_at + 1:
                raise OSError(28, os.strerror(28))  # ENOSPC: a directory block that cannot grow
            real(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(staging, "_renameat", renameat)
        try:
            api.export("m:v1", dest, settings=settings)
        except StorageError:
            assert snapshot(dest) == before, f"failing rename {fail_at + 1} left the destination changed"
            continue
        finally:
            monkeypatch.setattr(staging, "_renameat", real)
        assert fail_at > 0, "the move made no renames"
        break
    else:
        pytest.fail("the export never succeeded")
    assert (dest / "model" / "old.bin").read_bytes() == b"new old"
    assert (dest / "model" / "sub" / "deeper" / "y.bin").read_bytes() == b"y"
    assert (dest / "keep.txt").read_text() == "mine"
    assert not (dest / "ormbfile.yaml").is_symlink()
    assert not [p for p in dest.iterdir() if p.name.startswith(".ormb-export-")]


# -- layers that claim one path --------------------------------------------------------------------


@pytest.mark.parametrize("order", ["raw then tar", "tar then raw"])
def test_two_layers_writing_one_path_are_refused_whichever_comes_first(tmp_path: Path, settings: Settings,
                                                                       order: str) -> None:
    raw = ("raw", b"from the raw layer", {FILEPATH: "w.bin"})
    tar = ("tar", craft_tar([("w.bin", "file", b"from the tar layer")]), {})
    place_modelpack(settings.cache_dir, REF, [raw, tar] if order == "raw then tar" else [tar, raw])
    with pytest.raises(UnsafeArchiveError, match="two layers"):
        api.export(REF, tmp_path / "dest", settings=settings)
    assert not (tmp_path / "dest").exists()


def test_within_one_tar_layer_a_later_entry_still_replaces_an_earlier_one(tmp_path: Path,
                                                                          settings: Settings) -> None:
    place_modelpack(settings.cache_dir, REF, [("tar", craft_tar([("w.bin", "file", b"first"),
                                                                 ("w.bin", "file", b"second")]), {})])
    api.export(REF, tmp_path / "dest", settings=settings)
    assert (tmp_path / "dest" / "w.bin").read_bytes() == b"second"


@pytest.mark.parametrize("packing", ["raw", "tar"])
def test_a_layer_at_the_metadata_path_is_refused_when_metadata_is_written(tmp_path: Path, settings: Settings,
                                                                         packing: str) -> None:
    layer = (("raw", b"a layer's yaml", {FILEPATH: "ormbfile.yaml"}) if packing == "raw" else
             ("tar", craft_tar([("ormbfile.yaml", "file", b"a layer's yaml")]), {}))
    place_modelpack(settings.cache_dir, REF, [("raw", b"w", {FILEPATH: "w.bin"}), layer])
    with pytest.raises(UnsafeArchiveError, match="ormbfile.yaml"):
        api.export(REF, tmp_path / "dest", settings=settings)
    assert not (tmp_path / "dest").exists()
    result = api.export(REF, tmp_path / "bare", metadata=False, settings=settings)
    assert (tmp_path / "bare" / "ormbfile.yaml").read_bytes() == b"a layer's yaml"
    assert "ormbfile.yaml" in result.files
