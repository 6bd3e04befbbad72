"""ormb-storage-initializer / ormb pull-and-export against a real registry with auth."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from registries import USERS, free_port

from conftest import make_model
from ormb import api
from ormb.config import Settings
from ormb.errors import AuthenticationError, NotFoundError
from ormb.serving.initializer import pull_and_export

pytestmark = pytest.mark.integration
INITIALIZER = str(Path(sys.executable).with_name("ormb-storage-initializer"))
ORMB = str(Path(sys.executable).with_name("ormb"))
WEIGHTS = os.urandom(20_000)


@pytest.fixture
def pushed(tmp_path: Path, basic_registry: Any) -> str:
    settings = Settings(home=tmp_path / "trainer", default_registry="localhost:5000")
    ref = f"{basic_registry.host}/serving/model:v1"
    src = make_model(tmp_path / "m", {"model.onnx": WEIGHTS, "sub/vocab.txt": b"a\nb\n"}, ormbfile="format: ONNX\n")
    api.save(src, ref, settings=settings, read_model_signature=False)
    api.login(basic_registry.host, "alice", USERS["alice"], settings=settings)
    api.push(ref, settings=settings)
    return ref


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORMB_")}
    return {**env, "ORMB_HOME": str(tmp_path / "server-home"), "DOCKER_CONFIG": str(tmp_path / "no-docker"),
            "ORMB_NO_PROGRESS": "1", **extra}


@pytest.mark.parametrize(("layout", "expected"), [
    ("triton", ["1/model.onnx", "1/sub/vocab.txt", "ormbfile.yaml"]),
    ("mlflow", ["model.onnx", "ormbfile.yaml", "sub/vocab.txt"]),
    ("none", ["model/model.onnx", "model/sub/vocab.txt", "ormbfile.yaml"]),
])
def test_layouts_with_credentials_from_the_environment(tmp_path: Path, pushed: str, layout: str,
                                                       expected: list[str]) -> None:
    dest = tmp_path / "mnt" / "models"
    env = _env(tmp_path, ORMB_USERNAME="alice", ORMB_PASSWORD=USERS["alice"])
    result = subprocess.run([INITIALIZER, f"ormb://{pushed}", str(dest), "--layout", layout],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == expected
    onnx_path = dest / next(e for e in expected if e.endswith("model.onnx"))
    assert onnx_path.read_bytes() == WEIGHTS
    assert not (tmp_path / "server-home" / "cache").exists()  # nothing went through a cache
    assert USERS["alice"] not in result.stdout + result.stderr


def test_bare_reference_and_a_mounted_docker_config(tmp_path: Path, pushed: str) -> None:
    docker = tmp_path / "docker"
    docker.mkdir()
    auth = base64.b64encode(f"bob:{USERS['bob']}".encode()).decode()
    host = pushed.split("/")[0]
    (docker / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    env = {**_env(tmp_path), "DOCKER_CONFIG": str(docker)}
    result = subprocess.run([INITIALIZER, pushed, str(tmp_path / "dest"), "--json"], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["format"] == "ONNX"
    assert (tmp_path / "dest" / "1" / "model.onnx").read_bytes() == WEIGHTS


def _one_line_failure(result: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.stderr


def test_failures_are_one_line_and_leave_no_destination(tmp_path: Path, pushed: str) -> None:
    host = pushed.split("/")[0]
    dest = tmp_path / "dest"
    good = _env(tmp_path, ORMB_USERNAME="alice", ORMB_PASSWORD=USERS["alice"])
    _one_line_failure(subprocess.run([INITIALIZER, f"ormb://{host}/serving/unknown:v1", str(dest)],
                                     capture_output=True, text=True, env=good), 3, "serving/unknown")
    bad = _env(tmp_path, ORMB_USERNAME="alice", ORMB_PASSWORD="wrong")
    result = subprocess.run([INITIALIZER, f"ormb://{pushed}", str(dest)], capture_output=True, text=True, env=bad)
    _one_line_failure(result, 5, "unauthorized")
    assert "wrong" not in result.stderr.replace("wrong password", "")
    assert "ORMB_USERNAME" in result.stderr and "ormb login" not in result.stderr  # in a container, no login
    anonymous = _env(tmp_path)
    result = subprocess.run([INITIALIZER, f"ormb://{pushed}", str(dest)], capture_output=True, text=True,
                            env=anonymous)
    _one_line_failure(result, 5, "unauthorized")
    assert "ORMB_USERNAME" in result.stderr and "ormb login" not in result.stderr
    _one_line_failure(subprocess.run([INITIALIZER, f"ormb://127.0.0.1:{free_port()}/m:v1", str(dest), "--retries", "0"],
                                     capture_output=True, text=True, env=good), 6, "cannot reach")
    _one_line_failure(subprocess.run([INITIALIZER, "s3://bucket/model", str(dest)], capture_output=True, text=True,
                                     env=good), 2, "unsupported source")
    assert not dest.exists()


def test_a_corrupt_layer_leaves_no_half_written_destination(tmp_path: Path, basic_registry: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from registries import FaultProxy

    settings = Settings(home=tmp_path / "trainer", default_registry="localhost:5000")
    proxy = FaultProxy(basic_registry.port)
    try:
        ref = f"{proxy.host}/serving/corrupt:v1"
        api.save(make_model(tmp_path / "m", {"w.bin": os.urandom(2 << 20)}), ref, settings=settings)
        api.login(proxy.host, "alice", USERS["alice"], settings=settings)
        api.push(ref, settings=settings)
        proxy.corrupt_blobs = True
        monkeypatch.setenv("ORMB_USERNAME", "alice")
        monkeypatch.setenv("ORMB_PASSWORD", USERS["alice"])
        existing = tmp_path / "existing"
        existing.mkdir()
        (existing / "keep.txt").write_text("keep")
        from ormb.errors import IntegrityError, UnsafeArchiveError

        with pytest.raises((IntegrityError, UnsafeArchiveError)):
            pull_and_export(ref, existing, settings=Settings(home=tmp_path / "s", default_registry="x"))
        assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]
        with pytest.raises((IntegrityError, UnsafeArchiveError)):
            pull_and_export(ref, tmp_path / "fresh", settings=Settings(home=tmp_path / "s", default_registry="x"))
        assert not (tmp_path / "fresh").exists()
    finally:
        proxy.stop()
    assert AuthenticationError and NotFoundError  # imported for the API-level checks above


@pytest.mark.parametrize(("layout", "prefix"), [("triton", "1/"), ("mlflow", "")])
def test_a_modelpack_model_is_laid_out_too(tmp_path: Path, basic_registry: Any, layout: str, prefix: str) -> None:
    settings = Settings(home=tmp_path / "trainer", default_registry="localhost:5000")
    ref = f"{basic_registry.host}/serving/modelpack:v1"
    src = make_model(tmp_path / "m", {"model.onnx": WEIGHTS, "sub/vocab.txt": b"a\nb\n"}, ormbfile="format: ONNX\n")
    api.save(src, ref, settings=settings, artifact_format="modelpack", read_model_signature=False)
    api.login(basic_registry.host, "alice", USERS["alice"], settings=settings)
    api.push(ref, settings=settings)
    dest = tmp_path / "dest"
    env = _env(tmp_path, ORMB_USERNAME="alice", ORMB_PASSWORD=USERS["alice"])
    result = subprocess.run([INITIALIZER, f"ormb://{ref}", str(dest), "--layout", layout],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert (dest / f"{prefix}model.onnx").read_bytes() == WEIGHTS
    assert (dest / f"{prefix}sub" / "vocab.txt").read_bytes() == b"a\nb\n"
    assert "format: ONNX" in (dest / "ormbfile.yaml").read_text()


@pytest.mark.parametrize(("layout", "artifact_format"), [("mlflow", "ormb"), ("none", "modelpack"),
                                                         ("triton", "modelpack"), ("triton", "ormb")])
def test_a_layer_cannot_plant_a_link_that_the_metadata_is_written_through(
    tmp_path: Path, basic_registry: Any, layout: str, artifact_format: str,
) -> None:
    # a/b -> .. makes a/b/X the root's X: a link there at the old temporary name sent ormbfile.yaml
    # (author included) to any file the init container could write
    from conftest import craft_layer, craft_tar, place_model, place_modelpack

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("original")
    settings = Settings(home=tmp_path / "attacker", default_registry="localhost:5000")
    ref = f"{basic_registry.host}/serving/evil-{layout}-{artifact_format}:v1"
    up = "../../outside/secret"  # from DEST (DEST/1 for triton): lexically a/outside/secret, inside
    if artifact_format == "ormb":
        place_model(settings.cache_dir, ref, craft_layer([
            ("model/w.bin", "file", b"w"), ("model/a/b", "symlink", ".."),
            ("model/a/b/.ormbfile.yaml.tmp", "symlink", up)]))
    else:
        place_modelpack(settings.cache_dir, ref, [("tar", craft_tar([
            ("w.bin", "file", b"w"), ("a/b", "symlink", ".."), ("a/b/.ormbfile.yaml.tmp", "symlink", up)]), {})],
            metadata='{"author": "attacker"}')
    api.login(basic_registry.host, "alice", USERS["alice"], settings=settings)
    api.push(ref, settings=settings)
    dest = tmp_path / "mnt" / "models"
    env = _env(tmp_path, ORMB_USERNAME="alice", ORMB_PASSWORD=USERS["alice"])
    result = subprocess.run([INITIALIZER, f"ormb://{ref}", str(dest), "--layout", layout],
                            capture_output=True, text=True, env=env)
    _one_line_failure(result, 4, "symbolic link")
    assert (outside / "secret").read_text() == "original"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert not dest.exists()


def test_ctrl_c_stops_a_concurrent_pull_and_export_at_once(tmp_path: Path, registry: Any) -> None:
    """Ctrl-C (SIGINT) while ``ormb pull-and-export --concurrency 4`` writes three weight layers that a slow registry
    sends at 1 MiB/s each (20 s a layer): the command ends within a few seconds with 130 and ``Error: interrupted``,
    the destination as it was, no staging directory left.  (Before: it waited for every running download, 18 s
    or more; for a model of 100 GB, Ctrl-C did nothing.)"""
    from registries import FaultProxy

    settings = Settings(home=tmp_path / "trainer", default_registry="localhost:5000")
    ref = f"{registry.host}/serving/slow:v1"
    files = {f"w{i}.bin": os.urandom(20 << 20) for i in range(3)}
    api.save(make_model(tmp_path / "m", files), ref, settings=settings, artifact_format="modelpack",
             read_model_signature=False)
    api.push(ref, settings=settings)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("the user's")
    proxy = FaultProxy(registry.port)
    proxy.slow_blobs = 1 << 20
    try:
        process = subprocess.Popen([ORMB, "pull-and-export", f"{proxy.host}/serving/slow:v1", str(dest),
                                    "--layout", "mlflow", "--concurrency", "4"],
                                   env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while process.poll() is None and time.monotonic() < deadline and not (
                    proxy.blob_bytes_sent >= 3 << 20
                    and sum(method == "GET" and "/blobs/" in path for method, path, _, _ in proxy.requests) >= 3):
                time.sleep(0.05)
            assert process.poll() is None, process.communicate()
            assert len(os.listdir(dest)) == 2  # the user's file and the staging directory the layers go to
            interrupted = time.monotonic()
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=120)
            took = time.monotonic() - interrupted
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        proxy.stop()
    assert process.returncode == 130, err
    assert "Error: interrupted" in err
    assert took < 10, f"the command ended {took:.1f} s after Ctrl-C"
    assert os.listdir(dest) == ["keep.txt"]  # nothing arrived, no staging directory left
    assert (dest / "keep.txt").read_text() == "the user's"
