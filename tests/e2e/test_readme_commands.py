"""Every shell block of the README, run as written, line by line, at a terminal.

The commands name ``registry.example.com``, ``registry-a.example.com`` and ``registry-b.example.com``;
each is a real ``ormb registry serve`` process (TLS with a certificate for those names,
``registry.example.com`` with a password file), reached through :class:`hosts_proxy.HostsProxy`
(``HTTPS_PROXY``, ``SSL_CERT_FILE``: the client's ordinary proxy and CA settings; see that module for
why this is faithful).  Each line runs in bash on a pseudo-terminal, as a user types it; a password
prompt gets the password.  Preconditions the README states are set up first: ``./fashion`` holds the
README's own ``ormbfile.yaml`` example and a SavedModel layout, and ``registry-a.example.com`` holds
``team/m:v1``.  A block preceded by ``<!-- readme-test: skip (reason) -->`` is not run; the reason
says where it is tested instead.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hosts_proxy import HostsProxy
from registries import USERS, free_port, htpasswd_file, self_signed

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e
NAMES = ["registry.example.com", "registry-a.example.com", "registry-b.example.com"]
SKIP = re.compile(r"<!-- readme-test: skip \((?P<reason>[^)]+)\) -->\s*\Z")


def readme_blocks(text: str, language: str) -> list[tuple[int, str, str | None]]:
    """(line number, body, skip reason) of each fenced block in ``language``."""
    blocks = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```$", text, re.M | re.S):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        blocks.append((line, match.group(1), skip.group("reason") if skip else None))
    return blocks


def commands(body: str) -> list[str]:
    lines, current = [], ""
    for raw in body.splitlines():
        current += raw.rstrip("\\") + (" " if raw.endswith("\\") else "")
        if not raw.endswith("\\"):
            if current.strip() and not current.lstrip().startswith("#"):
                lines.append(current.strip())
            current = ""
    return lines


def at_a_terminal(command: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Run ``command`` in bash on a pseudo-terminal; answer a password or user-name prompt."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.chdir(cwd)
        os.execve("/bin/bash", ["bash", "-c", command], env)
    output, answered, deadline = b"", 0, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if not ready:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            output += data
            tail = output[answered:]
            if b"Password:" in tail:
                os.write(fd, USERS["alice"].encode() + b"\n")
                answered = len(output)
            elif b"Username:" in tail:
                os.write(fd, b"alice\n")
                answered = len(output)
        else:
            os.kill(pid, signal.SIGKILL)
        # reaped before the terminal is closed: closing it first hangs up (SIGHUP) a fast command still exiting
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode("utf-8", "replace")


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """Three registries by name, a proxy that maps the names, a user's environment and working directory."""
    cert, key = self_signed(tmp_path, "registries", NAMES, [])
    users = htpasswd_file(tmp_path)
    servers: list[subprocess.Popen[bytes]] = []
    logs = []
    ports = {}
    try:
        for name in NAMES:
            port = free_port()
            args = [str(BIN / "ormb"), "registry", "serve", "--root", str(tmp_path / f"store-{name}"),
                    "--addr", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key),
                    "--public-host", name]  # clients reach it by that name (an open registry refuses others)
            if name == "registry.example.com":
                args += ["--htpasswd", str(users)]
            logs.append(open(tmp_path / f"{name}.log", "wb"))  # closed after the process
            servers.append(subprocess.Popen(args, stdout=logs[-1], stderr=subprocess.STDOUT))
            ports[f"{name}:443"] = port
        for port in ports.values():
            _wait_for(port)
        proxy = HostsProxy(ports)
        home = tmp_path / "home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items()
               if not k.lower().endswith("_proxy") and not k.startswith("ORMB_") and k != "DOCKER_CONFIG"}
        env.update({"PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}", "HOME": str(home),
                    "HTTPS_PROXY": proxy.url, "https_proxy": proxy.url, "HTTP_PROXY": proxy.url,
                    "http_proxy": proxy.url, "SSL_CERT_FILE": str(cert), "TERM": "dumb"})
        work = tmp_path / "work"
        _the_readme_preconditions(work, env)
        yield work, env
        assert proxy.refused == [], f"commands asked for names or plain HTTP the README test does not map: {proxy.refused}"
        proxy.stop()
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
        for log in logs:
            log.close()


def _the_readme_preconditions(work: Path, env: dict[str, str]) -> None:
    """./fashion as the README describes it (its ormbfile.yaml example), and team/m:v1 on registry-a."""
    fashion = work / "fashion"
    (fashion / "model" / "variables").mkdir(parents=True)
    example = next(body for _, body, _ in readme_blocks(README.read_text(), "yaml") if "format: SavedModel" in body)
    (fashion / "ormbfile.yaml").write_text(example)
    (fashion / "model" / "saved_model.pb").write_bytes(os.urandom(4096))
    (fashion / "model" / "variables" / "variables.index").write_bytes(b"index")
    (fashion / "model" / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(8192))
    setup_home = work.parent / "setup-home"
    setup_env = {**env, "HOME": str(setup_home), "ORMB_NO_PROGRESS": "1"}
    for args in (["save", str(ROOT / "examples" / "iris-pmml"), "registry-a.example.com/team/m:v1"],
                 ["push", "registry-a.example.com/team/m:v1"]):
        done = subprocess.run([str(BIN / "ormb"), *args], env=setup_env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    shutil.rmtree(setup_home)


def test_every_readme_shell_block_runs_as_written(world: tuple[Path, dict[str, str]]) -> None:
    work, env = world
    blocks = readme_blocks(README.read_text(), "sh")
    run = [b for b in blocks if b[2] is None]
    assert len(run) >= 2 and len(blocks) - len(run) <= 2, [(line, reason) for line, _, reason in blocks]
    transcript = []
    for line, body, _ in run:
        for command in commands(body):
            code, output = at_a_terminal(command, work, env)
            transcript.append(f"$ {command}\n{output}")
            assert code == 0, f"README.md:{line}: `{command}` exited {code}:\n{output}"
    text = "\n".join(transcript)
    assert "Login Succeeded" in text
    assert "v1: pushed to remote" in text
    assert "Status: Model is up to date for registry.example.com/team/fashion:v1" in text
    assert (work / "serving" / "fashion" / "model" / "saved_model.pb").is_file()
    assert (work / "models-backup" / "index.json").is_file()
    assert "Removing login credentials for registry.example.com" in text
    # "Signing models": signed, pushed with its signature, verified on pull, export, the initializer and by
    # model_signing, then verified by a rotated trust directory
    assert "(1 signature pushed with it)" in text and text.count("signed by: ") >= 3
    assert (work / "models" / "fashion" / "1" / "saved_model.pb").is_file()
    assert "Verification succeeded" in text
    assert "Verified: registry-b.example.com/team/fashion:v2 is signed by key" in text


def test_the_skip_markers_say_why() -> None:
    blocks = readme_blocks(README.read_text(), "sh")
    assert all(reason is None or len(reason) > 20 for _, _, reason in blocks)
