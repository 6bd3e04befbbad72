"""Fixtures shared by every layer of tests, including the real registries (CNCF distribution)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from registries import Distribution, TokenServer, htpasswd_file, self_signed

from ormb.config import Settings


@pytest.fixture
def ormb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $ORMB_HOME; no user configuration leaks in."""
    home = tmp_path / "ormb-home"
    monkeypatch.setenv("ORMB_HOME", str(home))
    monkeypatch.delenv("ORMB_REGISTRY", raising=False)
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


def craft_layer(members: list[tuple[str, str, bytes | str]]) -> bytes:
    """A tar+gzip layer built entry by entry: (name, kind, payload) with kind file/dir/symlink/hardlink/fifo/chr."""
    import gzip
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
    return gzip.compress(raw.getvalue(), mtime=0)


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


# -- real registries, started once per session on 127.0.0.1 ------------------------------------


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    """No auth."""
    reg = Distribution(tmp_path_factory.mktemp("registry-plain"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    """htpasswd (bcrypt) Basic auth; users in registries.USERS."""
    directory = tmp_path_factory.mktemp("registry-basic")
    reg = Distribution(directory, auth={"htpasswd": {"realm": "ormb-test", "path": str(htpasswd_file(directory))}})
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path_factory.mktemp("token-server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer) -> Iterator[Distribution]:
    """Bearer token auth trusting ``token_server``."""
    auth = {"token": {"realm": token_server.realm, "service": token_server.service,
                      "issuer": token_server.issuer, "rootcertbundle": str(token_server.bundle)}}
    reg = Distribution(tmp_path_factory.mktemp("registry-token"), auth=auth)
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Distribution, Path]]:
    """HTTPS with a self-signed certificate for the name 'localhost' only (not for 127.0.0.1)."""
    directory = tmp_path_factory.mktemp("registry-tls")
    cert, key = self_signed(directory, "localhost", ["localhost"], [])
    reg = Distribution(directory, tls=(cert, key))
    yield reg, cert
    reg.stop()
