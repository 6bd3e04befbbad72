"""A newcomer's first hour, as they typed it: the stumbles the issue found, each tried again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from registries import USERS

from conftest import make_model

pytestmark = pytest.mark.e2e
ORMB = str(Path(sys.executable).with_name("ormb"))


def ormb(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ORMB, *args], capture_output=True, text=True, timeout=120,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def _one_error_line(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_login_takes_a_url_like_docker(ormb_home: Path, basic_registry: Any) -> None:
    host = basic_registry.host
    for typed in (f"http://{host}/", f"{host}/", f"HTTP://{host}/v2/"):
        result = ormb("login", typed, "-u", "alice", "--password-stdin", stdin=USERS["alice"])
        assert result.returncode == 0 and "Login Succeeded" in result.stdout, result.stderr
        assert list(json.loads((ormb_home / "config.json").read_text())["auths"]) == [host]
    assert ormb("logout", f"http://{host}/").stdout.strip() == f"Removing login credentials for {host}"
    _one_error_line(ormb("login", "https://", "-u", "a", "--password-stdin", stdin="p"), 2, "not a registry host")


def test_login_without_a_terminal_says_how_and_exits_2(ormb_home: Path) -> None:
    for args in (("login", "registry.example.com", "-u", "alice"), ("login", "registry.example.com")):
        result = ormb(*args)  # stdin is /dev/null: no terminal to ask on
        line = _one_error_line(result, 2, "no terminal", "--password-stdin")
        assert "GetPassWarning" not in result.stderr and "interrupted" not in line


def test_models_created_is_when_it_entered_the_cache(tmp_path: Path, ormb_home: Path) -> None:
    src = make_model(tmp_path / "m", {"model.onnx": b"onnx"}, ormbfile="format: ONNX\ncreated: 2019-03-01T00:00:00Z\n")
    assert ormb("save", str(src), "team/old:v1").returncode == 0
    header, row = ormb("models").stdout.splitlines()
    created = row[header.index("CREATED"):header.index("SIZE")].strip()
    assert created == "just now", row
    inspected = ormb("inspect", "team/old:v1").stdout
    assert "created:   2019-03-01T00:00:00+00:00" in inspected  # the model's own date
    assert "cached:    " in inspected


def test_remove_and_copy_print_the_full_reference(tmp_path: Path, ormb_home: Path, registry: Any) -> None:
    env = {"ORMB_REGISTRY": registry.host}
    src = make_model(tmp_path / "m", {"model.onnx": b"onnx"}, ormbfile="format: ONNX\n")
    assert ormb("save", str(src), "team/a:v1", env=env).returncode == 0
    assert ormb("push", "team/a:v1", env=env).returncode == 0
    copied = ormb("copy", "team/a:v1", "team/b", env=env)
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.splitlines()[0] == f"Copied {registry.host}/team/a:v1 to {registry.host}/team/b:latest"
    removed = ormb("rm", "team/a:v1", env=env)
    assert removed.stdout.startswith(f"Untagged: {registry.host}/team/a:v1 (sha256:")


def test_pushing_a_name_not_in_the_cache_points_to_ormb_tag(tmp_path: Path, ormb_home: Path) -> None:
    src = make_model(tmp_path / "m", {"model.onnx": b"onnx"}, ormbfile="format: ONNX\n")
    assert ormb("save", str(src), "gaocegege/fashion_model:v1").returncode == 0
    result = ormb("push", "registry.example.com/team/fashion:v1")
    _one_error_line(result, 3, "registry.example.com/team/fashion:v1 is not in the local cache",
                    "ormb tag SAVED-NAME registry.example.com/team/fashion:v1")


def test_save_says_which_hidden_files_it_left_out(tmp_path: Path, ormb_home: Path) -> None:
    src = make_model(tmp_path / "m", {"model.onnx": b"onnx", ".git/HEAD": b"x", ".DS_Store": b"x"},
                     ormbfile="format: ONNX\n")
    saved = ormb("save", str(src), "team/h:v1")
    assert saved.returncode == 0
    assert "note: left out 2 hidden files and directories (.DS_Store, .git/); --include-hidden packs them" \
        in saved.stderr
    assert ormb("save", str(src), "team/h:v2", "--include-hidden").stderr.count("hidden") == 0


def test_modelpack_names_option(tmp_path: Path, ormb_home: Path) -> None:
    src = make_model(tmp_path / "m", {"model.safetensors": b"\x02\0\0\0\0\0\0\0{}"}, ormbfile="format: SafeTensors\n")
    assert ormb("save", str(src), "team/c:v1", "--format", "modelpack", "--modelpack-names", "cnai").returncode == 0
    details = json.loads(ormb("inspect", "team/c:v1", "--json").stdout)
    assert details["config"]["mediaType"] == "application/vnd.cnai.model.config.v1+json"
    bad = ormb("save", str(src), "team/c:v2", "--modelpack-names", "vnd")
    assert bad.returncode == 2


def test_the_registry_announces_the_name_a_reference_without_a_host_means(tmp_path: Path, ormb_home: Path) -> None:
    """'ormb registry serve' said http://127.0.0.1:5000 while a name without a host means
    localhost:5000: a model pulled by the announced name was a second model, and exporting it by
    its short name failed.  The default registry is localhost:5000; a test may not take port 5000
    (other suites run at once), so ORMB_REGISTRY stands for it on a free port."""
    from registries import free_port

    port = free_port()
    env = {"ORMB_REGISTRY": f"localhost:{port}"}
    server = subprocess.Popen([ORMB, "registry", "serve", "--addr", f"127.0.0.1:{port}", "--root", str(tmp_path / "reg")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **env})
    try:
        lines = _lines_until(server, "model catalog: ")
        assert lines[0].startswith(f"ormb registry listening on http://localhost:{port} (bound to 127.0.0.1:{port}, "
                                   "loopback;"), lines
        assert lines[1].startswith(f"models are named localhost:{port}/NAME:TAG, or NAME:TAG for short"), lines
        assert lines[2].strip() == f"model catalog: http://localhost:{port}/", lines
        announced = lines[0].split()[4].partition("://")[2]
        src = make_model(tmp_path / "fashion", {"model.onnx": os.urandom(2000)}, ormbfile="format: ONNX\n")
        for args in (("save", str(src), "gaocegege/fashion_model:v1"), ("push", "gaocegege/fashion_model:v1"),
                     ("remove", "gaocegege/fashion_model:v1"), ("pull", f"{announced}/gaocegege/fashion_model:v1"),
                     ("export", "gaocegege/fashion_model:v1", "-d", str(tmp_path / "out"))):
            result = ormb(*args, env=env)
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        rows = ormb("models", env=env).stdout.splitlines()[1:]
        assert len(rows) == 1 and rows[0].startswith(f"localhost:{port}/gaocegege/fashion_model"), rows
        assert (tmp_path / "out" / "model" / "model.onnx").exists()
    finally:
        server.terminate()
        server.wait(60)


def _lines_until(process: subprocess.Popen[str], last: str, timeout: float = 60) -> list[str]:
    """The lines ``process`` writes to stderr up to the one starting with ``last`` (or until it stops
    writing for ``timeout`` seconds: then the lines so far). Read from the descriptor: a text
    stream's buffer would hide lines from select()."""
    import select
    import time

    assert process.stderr is not None
    fd = process.stderr.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
            lines = data.decode("utf-8", "replace").splitlines(keepends=True)
            if any(line.startswith(last) for line in lines):
                return lines
    return data.decode("utf-8", "replace").splitlines(keepends=True)
