"""CNCF distribution (Debian's /usr/bin/docker-registry) on 127.0.0.1, started empty for every tool's run.

An empty registry per run matters: distribution keeps one copy of a blob, so a second tool pushing the same
bytes would have its upload thrown away instead of moved into place, and pulls would find warm files.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

DISTRIBUTION = "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Distribution:
    def __init__(self, storage: Path) -> None:
        self.storage = storage
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        """Start with empty storage (whatever an earlier run left there is removed first)."""
        self.stop()
        shutil.rmtree(self.storage, ignore_errors=True)
        self.storage.mkdir(parents=True)
        config = self.storage.parent / "distribution.json"
        config.write_text(json.dumps({
            "version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.host},
        }))
        self.process = subprocess.Popen([DISTRIBUTION, "serve", str(config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{DISTRIBUTION} exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{DISTRIBUTION} did not listen on {self.host} within 20 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def upload_url(self, repository: str, digest: str) -> str:
        """Open an upload session (POST) and return the URL that a monolithic ``PUT ...&digest=`` completes."""
        conn = http.client.HTTPConnection(self.host, timeout=30)
        try:
            conn.request("POST", f"/v2/{repository}/blobs/uploads/", headers={"Content-Length": "0"})
            response = conn.getresponse()
            response.read()
            if response.status != 202:
                raise RuntimeError(f"POST upload to {repository}: HTTP {response.status}")
            location = urllib.parse.urljoin(f"http://{self.host}/", response.headers["Location"])
        finally:
            conn.close()
        return location + ("&" if "?" in location else "?") + f"digest={digest}"

    def blob_url(self, repository: str, digest: str) -> str:
        return f"http://{self.host}/v2/{repository}/blobs/{digest}"
