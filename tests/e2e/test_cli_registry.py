"""login / push / pull / inspect --remote / tags as a user types them, against a real registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from registries import USERS, Distribution, free_port

from conftest import make_model

pytestmark = pytest.mark.e2e
ORMB = str(Path(sys.executable).with_name("ormb"))


def ormb(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ORMB, *args], capture_output=True, text=True, input=stdin, timeout=120)


def _one_error_line(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_push_pull_output_like_the_original(tmp_path: Path, ormb_home: Path, registry: Distribution) -> None:
    src = make_model(tmp_path / "m", {"model.onnx": os.urandom(200_000)}, ormbfile="format: ONNX\n")
    ref = f"{registry.host}/team/cli:v1"
    assert ormb("save", str(src), ref).returncode == 0
    pushed = ormb("push", ref)
    assert pushed.returncode == 0, pushed.stderr
    lines = pushed.stdout.splitlines()
    assert lines[0] == f"The push refers to repository [{registry.host}/team/cli]"
    assert sum(line.endswith(": Pushed") for line in lines) == 2
    assert any(line.startswith("v1: pushed to remote (1 layer, ") and line.endswith(" total)") for line in lines)
    again = ormb("push", ref)
    assert sum(line.endswith(": Already exists") for line in again.stdout.splitlines()) == 2
    assert ormb("rm", ref).returncode == 0
    pulled = ormb("pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.splitlines()[0] == f"v1: Pulling from {registry.host}/team/cli"
    assert f"Status: Downloaded newer model for {ref}" in pulled.stdout
    assert f"Status: Model is up to date for {ref}" in ormb("pull", ref).stdout
    data = json.loads(ormb("pull", ref, "--json").stdout)
    assert data["transferred"] == [] and data["updated"] is False
    remote = json.loads(ormb("inspect", "--remote", ref, "--json").stdout)
    assert remote["files"] == ["model/model.onnx"] and remote["metadata"]["format"] == "ONNX"
    assert ormb("tags", f"{registry.host}/team/cli").stdout.split() == ["v1"]
    chunked = ormb("push", ref, "--chunk-size", "64K")
    assert chunked.returncode == 0, chunked.stderr


def test_login_errors_and_logout(tmp_path: Path, ormb_home: Path, basic_registry: Distribution) -> None:
    host = basic_registry.host
    _one_error_line(ormb("login", host, "-u", "alice", "--password-stdin", stdin="wrong\n"), 5,
                    "unauthorized", f"check the credentials given to 'ormb login {host}'")
    ok = ormb("login", host, "-u", "alice", "--password-stdin", stdin=USERS["alice"] + "\n")
    assert ok.returncode == 0 and "Login Succeeded" in ok.stdout
    assert ormb("logout", host).returncode == 0
    _one_error_line(ormb("logout", host), 3, "not logged in")


def test_each_failure_is_one_clear_line(tmp_path: Path, ormb_home: Path, registry: Distribution) -> None:
    src = make_model(tmp_path / "m", {"w.bin": b"w"})
    ref = f"{registry.host}/team/known:v1"
    ormb("save", str(src), ref)
    ormb("push", ref)
    _one_error_line(ormb("pull", f"{registry.host}/team/known:nope"), 3, "manifest unknown")
    _one_error_line(ormb("pull", f"{registry.host}/team/never-pushed:v1"), 3, "team/never-pushed")
    _one_error_line(ormb("pull", f"127.0.0.1:{free_port()}/team/m:v1", "--retries", "0"), 6,
                    "cannot reach", "connection refused")
    _one_error_line(ormb("tags", f"{registry.host}/team/known", "--tls"), 6, "does not speak TLS", "--plain-http")


def test_tls_name_mismatch_cli(ormb_home: Path, tls_registry: tuple[Distribution, Path]) -> None:
    registry, cert = tls_registry
    _one_error_line(ormb("tags", f"127.0.0.1:{registry.port}/x/y", "--tls", "--ca-file", str(cert)), 6,
                    "is for another name")
    _one_error_line(ormb("tags", f"localhost:{registry.port}/x/y", "--tls"), 6, "not trusted", "--ca-file")
