"""Fixtures shared by every layer of tests, including the real registries (CNCF distribution)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from registries import (
    Distribution,
    EmbeddedRegistry,
    TokenDistribution,
    TokenServer,
    htpasswd_file,
    self_signed,
    start_registry,
)

from ormb.config import Settings

# Generated tests: "ci" keeps the whole suite within its time budget; "deep" is for a run by hand
# (HYPOTHESIS_PROFILE=deep scripts/test -k property).  Tests may ask for more with @settings.
hypothesis_settings.register_profile("ci", max_examples=100, deadline=None, print_blob=True,
                                     suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.register_profile("deep", max_examples=5000, deadline=None, print_blob=True,
                                     suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def ormb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $ORMB_HOME; no user configuration leaks in."""
    home = tmp_path / "ormb-home"
    monkeypatch.setenv("ORMB_HOME", str(home))
    monkeypatch.delenv("ORMB_REGISTRY", raising=False)
    for name in ("ORMB_VERIFY_KEY", "ORMB_TRUST_DIR", "ORMB_KEY_PASSWORD"):  # signing settings of the user's shell
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ORMB_NO_PROGRESS", "1")
    return home


@pytest.fixture
def settings(ormb_home: Path) -> Settings:
    return Settings(home=ormb_home, default_registry="localhost:5000")


def make_model(root: Path, files: dict[str, bytes], ormbfile: str | None = "format: Others\n") -> Path:
    """A model directory: ``ormbfile.yaml`` (unless None) and ``model/<name>`` for each file."""
    root.mkdir(parents=True, exist_ok=True)
    if ormbfile is not None:
        (root / "ormbfile.yaml").write_text(ormbfile)
    for name, data in files.items():
        path = root / "model" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def craft_tar(members: list[tuple[str, str, bytes | str]]) -> bytes:
    """An uncompressed tar built entry by entry: (name, kind, payload) with kind file/dir/symlink/hardlink/fifo/chr."""
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE,
            }[kind]
            if kind in ("symlink", "hardlink"):
                assert isinstance(payload, str)
                info.linkname = payload
            tar.addfile(info)
    return raw.getvalue()


def compress(data: bytes, packing: str) -> bytes:
    """``data`` as a layer of the given packing: tar (as is), tar+gzip or tar+zstd."""
    import gzip

    import zstandard

    if packing == "tar+gzip":
        return gzip.compress(data, mtime=0)
    if packing == "tar+zstd":
        return zstandard.ZstdCompressor().compress(data)
    assert packing == "tar", packing
    return data


def craft_layer(members: list[tuple[str, str, bytes | str]]) -> bytes:
    """A tar+gzip layer built entry by entry (see :func:`craft_tar`)."""
    return compress(craft_tar(members), "tar+gzip")


def place_model(cache_dir: Path, reference: str, layer: bytes, config: bytes = b'{"format":"Others"}',
                layer_digest: str | None = None) -> str:
    """Put a hand-made ormb model into the cache under ``reference``; return the manifest digest."""
    import io

    from ormb.content.layout import OCILayout
    from ormb.content.target import push_bytes
    from ormb.oci.descriptor import Descriptor, Manifest

    layout = OCILayout(cache_dir)
    config_desc = Descriptor.of_bytes("application/vnd.caicloud.model.config.v1alpha1+json", config)
    push_bytes(layout, config_desc, config)
    layer_desc = Descriptor.of_bytes("application/tar+gzip", layer)
    if layer_digest is None:
        layout.push(layer_desc, io.BytesIO(layer))
    else:  # a corrupt cache: the bytes on disk do not match the digest they are filed under
        layer_desc = Descriptor("application/tar+gzip", layer_digest, len(layer))
        path = layout.blob_path(layer_digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(layer)
    data = Manifest(config_desc, (layer_desc,)).to_bytes()
    manifest = Descriptor.of_bytes("application/vnd.oci.image.manifest.v1+json", data)
    push_bytes(layout, manifest, data)
    layout.tag(manifest, reference)
    return manifest.digest


def place_modelpack(cache_dir: Path, reference: str, layers: list[tuple[str, bytes, dict[str, str]]],
                    metadata: str | None = None) -> str:
    """Put a hand-made ModelPack model into the cache: (packing, blob, annotations) per layer, packing
    raw, tar, tar+gzip or tar+zstd; ``metadata`` is ormb's annotation (JSON). Returns the manifest digest."""
    import io

    from ormb.content.layout import OCILayout
    from ormb.content.target import push_bytes
    from ormb.model import modelpack
    from ormb.oci.descriptor import Descriptor, Manifest

    layout = OCILayout(cache_dir)
    config = b'{"descriptor":{"name":"x"},"config":{},"modelfs":{"type":"layers","diffIds":[]}}'
    config_desc = Descriptor.of_bytes(modelpack.CONFIG, config)
    push_bytes(layout, config_desc, config)
    descs = []
    for packing, data, layer_annotations in layers:
        desc = Descriptor.of_bytes(modelpack.layer_type("weight", packing), data, layer_annotations)
        if not layout.exists(desc):
            layout.push(desc, io.BytesIO(data))
        descs.append(desc)
    manifest_annotations = {modelpack.ANNOTATION_ORMB_METADATA: metadata} if metadata else {}
    manifest = Manifest(config_desc, tuple(descs), artifact_type=modelpack.ARTIFACT_TYPE,
                        annotations=manifest_annotations)
    data = manifest.to_bytes()
    desc = Descriptor.of_bytes("application/vnd.oci.image.manifest.v1+json", data)
    push_bytes(layout, desc, data)
    layout.tag(desc, reference)
    return desc.digest


# -- real registries, started once per session on 127.0.0.1 ------------------------------------


KINDS = ["distribution", "ormb"]


@pytest.fixture(scope="session", params=KINDS)
def registry_kind(request: pytest.FixtureRequest) -> str:
    """Every test that uses a registry runs against CNCF distribution and ``ormb registry serve``."""
    return str(request.param)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, registry_kind: str) -> Iterator[Any]:
    """No auth."""
    reg = start_registry(registry_kind, tmp_path_factory.mktemp(f"registry-plain-{registry_kind}"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory, registry_kind: str) -> Iterator[Any]:
    """htpasswd (bcrypt) Basic auth; users in registries.USERS."""
    directory = tmp_path_factory.mktemp(f"registry-basic-{registry_kind}")
    if registry_kind == "ormb":
        reg: Any = EmbeddedRegistry(directory, auth="basic")
    else:
        reg = Distribution(directory, auth={"htpasswd": {"realm": "ormb-test", "path": str(htpasswd_file(directory))}})
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory, registry_kind: str) -> Iterator[Any]:
    """Bearer token auth: alice may push to alice/* and pull all; bob may pull; anonymous may pull public/*.

    Exposes ``issued`` (the (user, scope) of every token) and a settable ``expires_in``."""
    if registry_kind == "ormb":
        embedded = EmbeddedRegistry(tmp_path_factory.mktemp("registry-token-ormb"), auth="bearer")
        yield embedded
        embedded.stop()
        return
    server = TokenServer(tmp_path_factory.mktemp("token-server"))
    auth = {"token": {"realm": server.realm, "service": server.service,
                      "issuer": server.issuer, "rootcertbundle": str(server.bundle)}}
    reg = Distribution(tmp_path_factory.mktemp("registry-token"), auth=auth)
    yield TokenDistribution(reg, server)
    reg.stop()
    server.stop()


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory, registry_kind: str) -> Iterator[tuple[Any, Path]]:
    """HTTPS with a self-signed certificate for the name 'localhost' only (not for 127.0.0.1)."""
    directory = tmp_path_factory.mktemp(f"registry-tls-{registry_kind}")
    cert, key = self_signed(directory, "localhost", ["localhost"], [])
    reg: Any = EmbeddedRegistry(directory, tls=(cert, key)) if registry_kind == "ormb" else \
        Distribution(directory, tls=(cert, key))
    yield reg, cert
    reg.stop()
