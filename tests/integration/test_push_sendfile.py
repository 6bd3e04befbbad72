"""A push sends cached blobs with sendfile(2) on plain HTTP and through pread + TLS otherwise (issue 15): the bytes
arrive whole, the registry checks the digest, a cached blob that ends early is refused, and progress is told."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from registries import Distribution

from conftest import make_model
from ormb import api
from ormb.cache import open_cache
from ormb.config import Settings
from ormb.errors import IntegrityError
from ormb.registry import transport
from ormb.registry.transport import TransportOptions

pytestmark = pytest.mark.integration
SIZE = (6 << 20) + 12345  # several sendfile pieces of a socket buffer each, and an odd tail


def _home(tmp_path: Path, name: str) -> Settings:
    return Settings(home=tmp_path / name, default_registry="localhost:5000")


class _Spy:
    """Counts the bytes each way of sending a region moved."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sendfile = self.pread = 0
        real_sendfile, real_pread = os.sendfile, os.pread

        def sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
            n = real_sendfile(out_fd, in_fd, offset, count)
            self.sendfile += n
            return n

        def pread(fd: int, n: int, offset: int) -> bytes:
            data = real_pread(fd, n, offset)
            self.pread += len(data)
            return data

        monkeypatch.setattr(transport.os, "sendfile", sendfile)
        monkeypatch.setattr(transport.os, "pread", pread)


class _Progress:
    def __init__(self) -> None:
        self.advanced: dict[str, int] = {}

    def start(self, task: str, description: str, total: int | None) -> None:
        self.advanced[task] = 0

    def advance(self, task: str, amount: int) -> None:
        self.advanced[task] += amount

    def finish(self, task: str) -> None:
        pass


def _save(tmp_path: Path, settings: Settings, ref: str) -> bytes:
    weights = os.urandom(SIZE)
    api.save(make_model(tmp_path / "m", {"w.bin": weights}), ref, settings=settings, artifact_format="modelpack")
    return weights


def _layer(settings: Settings, ref: str) -> str:
    digests = [d for d in api.inspect(ref, settings=settings).layers if d["size"] == SIZE]
    return str(digests[0]["digest"])


def test_a_cached_blob_goes_by_sendfile_and_arrives_whole(tmp_path: Path, registry: Distribution,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _home(tmp_path, "trainer")
    ref = f"{registry.host}/sendfile/plain:v1"
    weights = _save(tmp_path, trainer, ref)
    spy, progress = _Spy(monkeypatch), _Progress()
    api.push(ref, settings=trainer, progress=progress)
    layer = _layer(trainer, ref)
    assert spy.sendfile >= SIZE and spy.pread == 0  # the blob (and the small config) went by sendfile
    assert progress.advanced[layer] == SIZE
    with urllib.request.urlopen(f"http://{registry.host}/v2/sendfile/plain/blobs/{layer}") as response:
        assert hashlib.sha256(response.read()).hexdigest() == layer.partition(":")[2]
    server = _home(tmp_path, "server")
    api.pull(ref, settings=server)
    api.export(ref, tmp_path / "out", settings=server)
    assert (tmp_path / "out" / "w.bin").read_bytes() == weights


def test_chunked_uploads_send_each_chunk_from_the_file(tmp_path: Path, registry: Distribution,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _home(tmp_path, "trainer")
    ref = f"{registry.host}/sendfile/chunked:v1"
    weights = _save(tmp_path, trainer, ref)
    spy = _Spy(monkeypatch)
    api.push(ref, settings=trainer, options=TransportOptions(chunk_size=1 << 20))
    assert spy.sendfile >= SIZE
    server = _home(tmp_path, "server")
    api.pull(ref, settings=server)
    api.export(ref, tmp_path / "out", settings=server)
    assert (tmp_path / "out" / "w.bin").read_bytes() == weights


@pytest.mark.parametrize("cut", [1, SIZE // 2, SIZE])
def test_a_cached_blob_that_ends_early_is_refused_and_not_stored(tmp_path: Path, registry: Distribution,
                                                                 cut: int) -> None:
    trainer = _home(tmp_path, "trainer")
    ref = f"{registry.host}/sendfile/short{cut}:v1"
    _save(tmp_path, trainer, ref)
    layer = _layer(trainer, ref)
    blob = open_cache(trainer).blob_path(layer)
    os.truncate(blob, SIZE - cut)
    with pytest.raises(IntegrityError, match=f"the local content ended {cut} bytes early"):
        api.push(ref, settings=trainer, options=TransportOptions(retries=0, concurrency=1))
    request = urllib.request.Request(f"http://{registry.host}/v2/sendfile/short{cut}/blobs/{layer}", method="HEAD")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(request)
    assert missing.value.code == 404


def test_over_tls_the_region_is_read_and_sent(tmp_path: Path, tls_registry: tuple[Any, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    registry, cert = tls_registry
    trainer = _home(tmp_path, "trainer")
    ref = f"localhost:{registry.port}/sendfile/tls:v1"
    weights = _save(tmp_path, trainer, ref)
    options = TransportOptions(plain_http=False, ca_file=str(cert))
    spy = _Spy(monkeypatch)
    api.push(ref, settings=trainer, options=options)
    assert spy.sendfile == 0 and spy.pread >= SIZE  # sendfile(2) cannot encrypt
    server = _home(tmp_path, "server")
    api.pull(ref, settings=server, options=options)
    api.export(ref, tmp_path / "out", settings=server)
    assert (tmp_path / "out" / "w.bin").read_bytes() == weights
