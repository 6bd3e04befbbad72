"""``ormb registry serve`` as a real process: SIGKILL mid-traffic, restart, garbage collection, SIGTERM."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from registries import free_port

from conftest import make_model
from ormb import api
from ormb.config import Settings
from ormb.errors import OrmbError
from ormb.registry.transport import TransportOptions
from ormb.server.serve import LISTENING

pytestmark = pytest.mark.integration
ORMB = str(Path(sys.executable).with_name("ormb"))


class ServeProcess:
    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        """Start and wait for the process's own "listening" line: a TCP connect alone could reach a worker of the
        SIGKILLed predecessor that still holds the port for a moment (and then drops the connection)."""
        log = self.log = self.root.parent / f"serve-{self.port}.log"
        start = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            self.process = subprocess.Popen([ORMB, "registry", "serve", "--root", str(self.root),
                                             "--addr", f"127.0.0.1:{self.port}"], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if LISTENING in log.read_bytes()[start:].decode("utf-8", "replace"):
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"ormb registry serve exited: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError("ormb registry serve did not start")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(15)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    server = ServeProcess(tmp_path / "registry", free_port()).start()
    yield server
    if server.process and server.process.poll() is None:
        server.kill()


def _upload(host: str, data: bytes) -> str | None:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        conn = http.client.HTTPConnection(host, timeout=10)
        conn.request("POST", f"/v2/durable/raw/blobs/uploads/?digest={digest}", body=data)
        status = conn.getresponse().status
        conn.close()
    except OSError:
        return None
    return digest if status == 201 else None


def test_sigkill_loses_nothing_acknowledged_and_shows_nothing_half_written(tmp_path: Path, serve: ServeProcess) -> None:
    acknowledged_blobs: dict[str, bytes] = {}
    acknowledged_pushes: dict[str, str] = {}
    stop = threading.Event()
    settings = Settings(home=tmp_path / "home", default_registry="localhost:5000")
    options = TransportOptions(retries=0)

    def uploader() -> None:
        while not stop.is_set():
            data = os.urandom(3 << 20)
            digest = _upload(serve.host, data)
            if digest:
                acknowledged_blobs[digest] = data

    def pusher() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            ref = f"{serve.host}/durable/model:v{i}"
            api.save(make_model(tmp_path / f"m{i}", {"w.bin": os.urandom(2 << 20)}), ref, settings=settings)
            try:
                acknowledged_pushes[ref] = api.push(ref, settings=settings, options=options).digest
            except OrmbError:
                return

    threads = [threading.Thread(target=uploader), threading.Thread(target=uploader), threading.Thread(target=pusher)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    serve.kill(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(30)
    assert acknowledged_blobs and acknowledged_pushes, "the load did not get going before the kill"
    serve.start()
    for digest, data in acknowledged_blobs.items():
        conn = http.client.HTTPConnection(serve.host, timeout=10)
        conn.request("GET", f"/v2/durable/raw/blobs/{digest}")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, data)
        conn.close()
    puller = Settings(home=tmp_path / "puller", default_registry="localhost:5000")
    for ref, digest in acknowledged_pushes.items():
        assert api.pull(ref, settings=puller).digest == digest
    # every blob the database knows is whole: nothing half-written is visible
    import sqlite3

    db = sqlite3.connect(serve.root / "registry.db")
    for (digest,) in db.execute("SELECT digest FROM blobs"):
        algorithm, _, hexpart = digest.partition(":")
        with open(serve.root / "blobs" / algorithm / hexpart, "rb") as f:
            assert hashlib.new(algorithm, f.read()).hexdigest() == hexpart


def test_gc_frees_only_what_no_manifest_references(tmp_path: Path, serve: ServeProcess) -> None:
    settings = Settings(home=tmp_path / "home", default_registry="localhost:5000")
    shared, unique = os.urandom(100_000), os.urandom(100_000)
    a = f"{serve.host}/gc/model:a"
    b = f"{serve.host}/gc/model:b"
    api.save(make_model(tmp_path / "a", {"shared.bin": shared, "x.bin": unique}), a, settings=settings)
    api.save(make_model(tmp_path / "b", {"shared.bin": shared}), b, settings=settings)
    pushed_a = api.push(a, settings=settings)
    api.push(b, settings=settings)
    conn = http.client.HTTPConnection(serve.host)
    conn.request("DELETE", f"/v2/gc/model/manifests/{pushed_a.digest}")
    assert conn.getresponse().status == 202
    result = subprocess.run([ORMB, "registry", "gc", "--root", str(serve.root), "--grace", "0", "--json"],
                            capture_output=True, text=True, check=True)
    import json

    freed = json.loads(result.stdout)
    assert freed["blobs"] >= 2  # a's layer and manifest; its config is shared with b (same metadata)
    other = Settings(home=tmp_path / "other", default_registry="localhost:5000")
    api.pull(b, settings=other)
    api.export(b, tmp_path / "out", settings=other)
    assert (tmp_path / "out" / "model" / "shared.bin").read_bytes() == shared


def test_sigterm_stops_cleanly(serve: ServeProcess) -> None:
    assert serve.kill(signal.SIGTERM) == 0
    assert "ormb registry stopped" in serve.log.read_text()
