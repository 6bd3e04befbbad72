"""Export touches nothing outside the destination: the review's cases, each a regression test.

Who is hostile here: whoever can push to a registry the user pulls from (the layers), and a local
user who can write into the destination (links planted there).  docs/security.md lists these tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from trees import snapshot

from conftest import craft_layer, craft_tar, make_model, place_model, place_modelpack
from ormb import api
from ormb.config import Settings
from ormb.errors import UnsafeArchiveError

REF = "localhost:5000/evil/model:v1"
SECRET = b"the outside file\n"


def _outside(tmp_path: Path) -> Path:
    """tmp_path/outside/secret: what the attacker wants to reach (dest is tmp_path/dest)."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret").write_bytes(SECRET)
    return outside


def _nothing_escapes(dest: Path) -> None:
    real = os.path.realpath(dest)
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            resolved = os.path.realpath(Path(dirpath) / name)
            assert resolved == real or resolved.startswith(real + os.sep), f"{name} resolves to {resolved}"


def test_ormbfile_is_not_written_through_a_tmp_symlink_from_a_modelpack_tar_layer(
    tmp_path: Path, settings: Settings,
) -> None:
    # a/b -> .. looks like "a/.." (inside) but is the root; the second entry lands at the root's
    # .ormbfile.yaml.tmp, a link to tmp_path/outside/secret, which the old write_metadata wrote through
    outside = _outside(tmp_path)
    before = snapshot(outside)
    layer = craft_tar([("w.bin", "file", b"w"), ("a/b", "symlink", ".."),
                       ("a/b/.ormbfile.yaml.tmp", "symlink", "../outside/secret")])
    place_modelpack(settings.cache_dir, REF, [("tar", layer, {})])
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        api.export(REF, tmp_path / "dest", settings=settings)
    assert snapshot(outside) == before
    assert not (tmp_path / "dest").exists()


def test_ormbfile_is_not_written_through_a_tmp_symlink_from_an_ormb_layer(tmp_path: Path, settings: Settings) -> None:
    outside = _outside(tmp_path)
    before = snapshot(outside)
    layer = craft_layer([("model/w.bin", "file", b"w"), ("model/b", "symlink", ".."),
                         ("model/b/.ormbfile.yaml.tmp", "symlink", "../outside/secret")])
    place_model(settings.cache_dir, REF, layer)
    with pytest.raises(UnsafeArchiveError):
        api.export(REF, tmp_path / "dest", settings=settings)
    assert snapshot(outside) == before
    assert not (tmp_path / "dest").exists()


def test_links_planted_in_the_destination_by_a_local_user_are_not_followed(tmp_path: Path, settings: Settings) -> None:
    outside = _outside(tmp_path)
    before = snapshot(outside)
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink("../outside/secret", dest / ".ormbfile.yaml.tmp")  # the old temporary name
    os.symlink("../outside/secret", dest / "ormbfile.yaml")
    os.symlink("../outside", dest / "model")
    api.save(make_model(tmp_path / "src", {"w.bin": b"weights", "sub/x.txt": b"x"}), "m:v1", settings=settings)
    api.export("m:v1", dest, settings=settings)
    assert snapshot(outside) == before
    assert not (dest / "ormbfile.yaml").is_symlink() and "format: Others" in (dest / "ormbfile.yaml").read_text()
    assert not (dest / "model").is_symlink() and (dest / "model" / "w.bin").read_bytes() == b"weights"
    assert os.readlink(dest / ".ormbfile.yaml.tmp") == "../outside/secret"  # not ours: left alone


def test_a_link_to_dotdot_does_not_let_a_deeper_symlink_escape(tmp_path: Path, settings: Settings) -> None:
    # model/b -> .. is the root; model/b/c is then the root's c, lexically model/c -> ../outside: inside
    # by name, outside for real
    _outside(tmp_path)
    layer = craft_layer([("model/w.bin", "file", b"w"), ("model/b", "symlink", ".."),
                         ("model/b/c", "symlink", "../../outside/secret")])
    place_model(settings.cache_dir, REF, layer)
    dest = tmp_path / "dest"
    try:
        api.export(REF, dest, settings=settings)
    except UnsafeArchiveError:
        assert not dest.exists()
    else:
        _nothing_escapes(dest)
        pytest.fail("the layer was exported although an entry went through a link")


@pytest.mark.parametrize("variant", ["directory re-pointed", "file re-pointed"])
def test_a_hard_link_cannot_be_redirected_through_a_repointed_symlink(
    tmp_path: Path, settings: Settings, variant: str,
) -> None:
    outside = _outside(tmp_path)
    if variant == "directory re-pointed":  # model/d/secret is a file of the layer, then model/d leaves
        members = [("model/s/", "dir", b""), ("model/d", "symlink", "s"), ("model/d/secret", "file", b"mine"),
                   ("model/b", "symlink", ".."), ("model/d", "symlink", "b/../../outside"),
                   ("model/h", "hardlink", "model/d/secret")]
    else:  # model/f is a file of the layer, then a link to the outside file of the same name
        members = [("model/f", "file", b"mine"), ("model/b", "symlink", ".."),
                   ("model/f", "symlink", "b/../../outside/secret"), ("model/h", "hardlink", "model/f")]
    place_model(settings.cache_dir, REF, craft_layer(members))
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError):
        api.export(REF, dest, settings=settings)
    assert os.stat(outside / "secret").st_nlink == 1
    assert (outside / "secret").read_bytes() == SECRET
    assert not dest.exists()


@pytest.mark.parametrize(("how", "link"), [("plain", "../../outside"), ("hidden by x/b -> ..", "../../outside"),
                                           ("inside", "sub")])
def test_a_raw_layer_path_through_an_earlier_tar_layers_symlink_creates_nothing_outside(
    tmp_path: Path, settings: Settings, how: str, link: str,
) -> None:
    outside = _outside(tmp_path)
    before = snapshot(outside)
    members: list[tuple[str, str, bytes | str]] = [("sub/", "dir", b"")]
    if how.startswith("hidden"):  # x/b -> .. is the root, so x/b/e is the root's e: lexically x/e -> ../../outside
        members += [("x/b", "symlink", ".."), ("x/b/e", "symlink", link)]
    else:
        members += [("e", "symlink", link)]
    place_modelpack(settings.cache_dir, REF, [
        ("tar+gzip", craft_layer(members), {}),
        ("raw", b"weights", {"org.cncf.model.filepath": "e/newdir/w.bin"}),
    ])
    with pytest.raises(UnsafeArchiveError):
        api.export(REF, tmp_path / "dest", settings=settings)
    assert snapshot(outside) == before
    assert not (tmp_path / "dest").exists()


def _blocked_export(cache_home: Path, fifo: Path, dest: Path, partial: bytes) -> tuple[subprocess.Popen[bytes], int]:
    """``ormb export`` reading its layer from a FIFO: it stages ``partial`` and then waits for more."""
    env = {**os.environ, "ORMB_HOME": str(cache_home), "ORMB_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ormb", "export", "m:v1", "-d", str(dest)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    writer = os.open(fifo, os.O_WRONLY)  # returns once the export opened the blob
    os.write(writer, partial)
    deadline = time.monotonic() + 30
    while not any(p.name.startswith(".ormb-export-") and any(p.rglob("*.bin")) for p in dest.glob(".*")):
        assert time.monotonic() < deadline, "the export never staged anything"
        assert proc.poll() is None, "the export ended early"
        time.sleep(0.01)
    return proc, writer


def test_a_killed_exports_staging_directory_is_removed_by_the_next_export(tmp_path: Path, settings: Settings) -> None:
    files = {f"w{i}.bin": os.urandom(1 << 20) for i in range(4)}
    api.save(make_model(tmp_path / "src", files), "m:v1", settings=settings)
    from ormb.content.layout import OCILayout
    from ormb.content.target import fetch_bytes
    from ormb.oci.descriptor import Manifest

    cache = OCILayout(settings.cache_dir)
    manifest = Manifest.from_bytes(fetch_bytes(cache, cache.resolve("localhost:5000/m:v1")))
    blob = cache.blob_path(manifest.layers[0].digest)
    layer = blob.read_bytes()
    blob.unlink()
    os.mkfifo(blob)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")

    killed, killed_writer = _blocked_export(settings.home, blob, dest, layer[: len(layer) * 3 // 4])
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    os.close(killed_writer)
    leftover = [p.name for p in dest.iterdir() if p.name.startswith(".ormb-export-")]
    assert len(leftover) == 1

    live, live_writer = _blocked_export(settings.home, blob, dest, layer[: len(layer) * 3 // 4])
    try:
        live_staging = {p.name for p in dest.iterdir() if p.name.startswith(".ormb-export-")} - set(leftover)
        assert len(live_staging) == 1
        # the next export into the same destination, while ``live`` is still at work
        blob.unlink()
        blob.write_bytes(layer)
        api.export("m:v1", dest, settings=settings)
        names = {p.name for p in dest.iterdir()}
        assert leftover[0] not in names, "the killed export's staging directory is still there"
        assert live_staging <= names, "a running export's staging directory was removed"
        assert (dest / "model" / "w0.bin").read_bytes() == files["w0.bin"]
        assert (dest / "keep.txt").read_text() == "mine"
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
        os.close(live_writer)


def test_a_concurrent_export_is_not_disturbed(tmp_path: Path, settings: Settings) -> None:
    """Two exports of different models into one destination at once: both complete."""
    api.save(make_model(tmp_path / "a", {"a.bin": os.urandom(2 << 20)}), "a:v1", settings=settings)
    api.save(make_model(tmp_path / "b", {"b.bin": os.urandom(2 << 20)}), "b:v1", settings=settings)
    dest = tmp_path / "dest"
    errors: list[BaseException] = []

    def run(ref: str) -> None:
        try:
            for _ in range(5):
                api.export(ref, dest, metadata=False, settings=settings)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(ref,)) for ref in ("a:v1", "b:v1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(p.name for p in (dest / "model").iterdir()) == ["a.bin", "b.bin"]
    assert not [p for p in dest.iterdir() if p.name.startswith(".ormb-export-")]
