"""TLS, proxies and real failures: a registry that dies mid-push, corrupt blobs, cut downloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from registries import Distribution, FaultProxy, free_port, start_registry

from conftest import make_model
from ormb import api
from ormb.cache import open_cache
from ormb.config import Settings
from ormb.errors import IntegrityError, NetworkError, NotFoundError
from ormb.registry.transport import TransportOptions

pytestmark = pytest.mark.integration
FAST = TransportOptions(retries=0, concurrency=1)


def _home(tmp_path: Path, name: str = "home") -> Settings:
    return Settings(home=tmp_path / name, default_registry="localhost:5000")


def _save(tmp_path: Path, settings: Settings, ref: str, size: int = 4 << 20, name: str = "m") -> bytes:
    weights = os.urandom(size)
    api.save(make_model(tmp_path / name, {"w.bin": weights}), ref, settings=settings)
    return weights


# -- TLS ------------------------------------------------------------------------------------------


def test_tls_is_verified_by_default(tmp_path: Path, tls_registry: tuple[Distribution, Path]) -> None:
    registry, _ = tls_registry
    host = f"localhost:{registry.port}"
    with pytest.raises(NetworkError) as info:
        api.tags(f"{host}/any/repo", settings=_home(tmp_path), options=TransportOptions(plain_http=False))
    assert f"TLS certificate of {host} is not trusted" in str(info.value)
    assert "--ca-file" in str(info.value) and "--insecure" in str(info.value)


def test_ca_file_makes_tls_work(tmp_path: Path, tls_registry: tuple[Distribution, Path]) -> None:
    registry, cert = tls_registry
    settings = _home(tmp_path)
    ref = f"localhost:{registry.port}/team/tls:v1"
    _save(tmp_path, settings, ref, size=1000)
    options = TransportOptions(plain_http=False, ca_file=str(cert))
    api.push(ref, settings=settings, options=options)
    assert api.tags(f"localhost:{registry.port}/team/tls", settings=settings, options=options) == ["v1"]


def test_tls_name_mismatch_is_one_clear_error(tmp_path: Path, tls_registry: tuple[Distribution, Path]) -> None:
    registry, cert = tls_registry  # the certificate names 'localhost', not 127.0.0.1
    options = TransportOptions(plain_http=False, ca_file=str(cert))
    with pytest.raises(NetworkError, match=f"TLS certificate of 127.0.0.1:{registry.port} is for another name"):
        api.tags(f"127.0.0.1:{registry.port}/any/repo", settings=_home(tmp_path), options=options)


def test_insecure_skips_verification(tmp_path: Path, tls_registry: tuple[Distribution, Path]) -> None:
    registry, _ = tls_registry
    options = TransportOptions(plain_http=False, insecure=True)
    with pytest.raises(NotFoundError):  # the request went through: the repository is just unknown
        api.tags(f"127.0.0.1:{registry.port}/nothing/here", settings=_home(tmp_path), options=options)


def test_plain_http_against_tls_says_so(tmp_path: Path, registry: Distribution) -> None:
    with pytest.raises(NetworkError, match="does not speak TLS"):
        api.tags(f"{registry.host}/x/y", settings=_home(tmp_path), options=TransportOptions(plain_http=False))


# -- proxies --------------------------------------------------------------------------------------


def test_http_proxy_is_honoured_and_no_proxy_bypasses_it(
    tmp_path: Path, registry: Distribution, monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = FaultProxy(registry.port)
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://{proxy.host}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        # a name that does not resolve: only the proxy can reach it
        options = TransportOptions(plain_http=True, retries=0)
        with pytest.raises(NotFoundError):
            api.tags("registry.invalid:5000/via/proxy", settings=_home(tmp_path), options=options)
        assert any("/v2/via/proxy/tags/list" in path for _, path, _, _ in proxy.requests)
        monkeypatch.setenv("NO_PROXY", "registry.invalid")
        with pytest.raises(NetworkError, match="cannot reach registry.invalid:5000"):
            api.tags("registry.invalid:5000/via/proxy", settings=_home(tmp_path), options=options)
    finally:
        proxy.stop()


# -- failures ------------------------------------------------------------------------------------


def test_unreachable_host_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(NetworkError) as info:
        api.pull(f"127.0.0.1:{free_port()}/team/m:v1", settings=_home(tmp_path), options=FAST)
    assert "cannot reach" in str(info.value) and "connection refused" in str(info.value)


def test_a_registry_that_is_not_running_is_reported_without_retries(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused connection to a host that never answered used to be retried with backoff (0.5+1+2+4 s of
    silence by default) before the error; a registry that is not running is not going to start meanwhile."""
    sleeps: list[float] = []
    monkeypatch.setattr("ormb.registry.transport.time.sleep", sleeps.append)
    with pytest.raises(NetworkError, match="connection refused"):
        api.pull(f"127.0.0.1:{free_port()}/team/m:v1", settings=_home(tmp_path), options=TransportOptions())
    assert sleeps == []


def test_registry_dies_mid_push_then_the_same_push_completes(tmp_path: Path, registry_kind: str) -> None:
    registry = start_registry(registry_kind, tmp_path / "registry")
    proxy = FaultProxy(registry.port)
    try:
        settings = _home(tmp_path)
        ref = f"{proxy.host}/team/dies:v1"
        _save(tmp_path, settings, ref, size=8 << 20)
        received = 0

        def kill_after_2mib(n: int) -> bool:
            nonlocal received
            received += n
            if received > 2 << 20:
                registry.stop()
                return False
            return True

        proxy.on_upload_bytes = kill_after_2mib
        with pytest.raises(NetworkError, match="cannot reach|closed"):
            api.push(ref, settings=settings, options=FAST)
        proxy.on_upload_bytes = None
        registry.start()
        first_run = len(proxy.requests)
        result = api.push(ref, settings=settings, options=FAST)
        second_run = [(m, p) for m, p, _, _ in proxy.requests[first_run:] if m in ("PUT", "PATCH")]
        config, layer = api.inspect(ref, settings=settings).config["digest"], result.existing + result.transferred
        assert config in result.existing  # it arrived before the registry died: not sent again
        assert not any(str(config) in path for _, path in second_run)
        assert len(result.transferred) == 1 and len(layer) == 2
        other = _home(tmp_path, "other")
        api.pull(ref, settings=other)  # and what is in the registry now is whole
    finally:
        proxy.stop()
        registry.stop()


def test_corrupt_blob_fails_pull_and_leaves_the_cache_as_it_was(tmp_path: Path, registry: Distribution) -> None:
    proxy = FaultProxy(registry.port)
    try:
        ref = f"{proxy.host}/team/corrupt:v1"
        trainer, server = _home(tmp_path, "trainer"), _home(tmp_path, "server")
        _save(tmp_path, trainer, ref, size=100_000, name="a")
        api.push(ref, settings=trainer)
        old = api.pull(ref, settings=server).digest
        _save(tmp_path, trainer, ref, size=100_000, name="b")  # a new version under the same tag
        new = api.push(ref, settings=trainer)
        proxy.corrupt_blobs = True
        with pytest.raises(IntegrityError, match="does not match"):
            api.pull(ref, settings=server, options=FAST)
        cache = open_cache(server)
        assert api.inspect(ref, settings=server).digest == old  # the tag did not move
        layer = next(d for d in new.transferred if d != api.inspect(ref, settings=trainer).config["digest"])
        assert not cache.blob_path(layer).exists()  # nothing of the corrupt blob
        assert list((server.cache_dir / ".ingest").iterdir()) == []
    finally:
        proxy.stop()


def test_cut_download_resumes_with_range(tmp_path: Path, registry: Distribution) -> None:
    proxy = FaultProxy(registry.port)
    try:
        ref = f"{proxy.host}/team/resume:v1"
        trainer, server = _home(tmp_path, "trainer"), _home(tmp_path, "server")
        weights = _save(tmp_path, trainer, ref, size=6 << 20)
        api.push(ref, settings=trainer)
        proxy.cut_blob_once = True
        api.pull(ref, settings=server, options=TransportOptions(retries=2, backoff=0.05))
        ranges = [r for m, p, _, r in proxy.requests if m == "GET" and "/blobs/" in p and r]
        assert len(ranges) == 1 and ranges[0].startswith("bytes=") and int(ranges[0][6:-1]) > 1 << 20
        api.export(ref, tmp_path / "out", settings=server)
        assert (tmp_path / "out" / "model" / "w.bin").read_bytes() == weights
    finally:
        proxy.stop()
