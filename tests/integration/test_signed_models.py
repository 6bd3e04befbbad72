"""Signed models against both registries: CNCF distribution (no referrers API: the fallback tag
``sha256-<hex>``) and ``ormb registry serve`` (the referrers API).

The trainer saves, signs and pushes; the server pulls into a fresh cache, verifies and exports.
Then an attacker who can push (or a registry) tries: no signature, a signature by another key, a
file added to the manifest, a file changed, the signature of one model attached to another, and
corrupted bytes on the wire (fault proxy).  Each is refused with one ``Error:`` line and exit code 4,
and nothing is written: no reference, no blob, no destination directory.  A ModelPack model is
refused before a single weight byte is downloaded (the proxy counts the requests).
"""

from __future__ import annotations

import io
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from registries import EmbeddedRegistry, FaultProxy

from conftest import craft_layer, make_model
from ormb import api
from ormb.cli.main import main
from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.content.target import fetch_bytes, push_bytes
from ormb.model import modelpack
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.registry.client import Registry
from ormb.registry.credentials import CredentialStore
from ormb.registry.remote import RemoteRepository
from ormb.signing import SIGNATURE_ARTIFACT_TYPE, bundle_layer, generate_key_pair, signature_artifact

pytestmark = pytest.mark.integration

FORMATS = ["ormb", "modelpack"]
WEIGHTS = os.urandom(300_000)
FILES = {"weights.bin": WEIGHTS, "config.json": b'{"layers": 2}', "tokenizer/vocab.txt": b"a\nb\n"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("keys")
    out: dict[str, Path] = {}
    for name in ("team", "other"):
        generate_key_pair(directory / f"{name}.pem", directory / f"{name}.pub")
        out[f"{name}.pem"], out[f"{name}.pub"] = directory / f"{name}.pem", directory / f"{name}.pub"
    return out


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(result: tuple[int, str, str], *fragments: str) -> str:
    code, out, err = result
    lines = err.strip().splitlines()
    assert code == 4, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def home(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings = Settings(home=tmp_path / name, default_registry="localhost:5000")
    monkeypatch.setenv("ORMB_HOME", str(settings.home))
    return settings


def cache_state(settings: Settings) -> tuple[str | None, set[str]]:
    """index.json as written and the blobs on disk: what 'nothing written' compares."""
    index = settings.cache_dir / "index.json"
    layout = OCILayout(settings.cache_dir)
    return (index.read_text() if index.exists() else None), set(layout.blob_digests())


def publish(tmp_path: Path, host: str, name: str, fmt: str, key: Path | None, monkeypatch: pytest.MonkeyPatch,
            files: dict[str, bytes] = FILES) -> tuple[str, Settings]:
    """save (+ sign) + push, as the trainer does; returns the reference and the trainer's settings."""
    trainer = home(tmp_path, f"trainer-{name}", monkeypatch)
    ref = f"{host}/signed/{name}:v1"
    api.save(make_model(tmp_path / f"src-{name}", files), ref, artifact_format=fmt, settings=trainer)
    if key is not None:
        api.sign(ref, key, settings=trainer)
    api.push(ref, settings=trainer)
    return ref, trainer


def repository(host: str, name: str, tmp_path: Path) -> RemoteRepository:
    return RemoteRepository(Registry(host, credentials=CredentialStore(tmp_path / "no-credentials.json")), name)


def test_sign_push_pull_verify_export_on_a_fresh_cache(tmp_path: Path, registry: Any, keys: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in FORMATS:
        ref, trainer = publish(tmp_path, registry.host, f"ok-{fmt}", fmt, keys["team.pem"], monkeypatch)
        digest = api.inspect(ref, settings=trainer).digest
        name = ref.split("/", 1)[1].rsplit(":", 1)[0]
        remote = repository(registry.host, name, tmp_path)
        listed = remote.referrers(digest)
        assert [d.artifact_type for d in listed] == [SIGNATURE_ARTIFACT_TYPE]
        tags = list(remote.tags())
        fallback = "sha256-" + digest.partition(":")[2]
        if isinstance(registry, EmbeddedRegistry):  # the referrers API: no fallback tag
            assert fallback not in tags
        else:  # CNCF distribution 2.8 has no referrers API: the fallback index under the tag sha256-<hex>
            assert fallback in tags
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(f"http://{registry.host}/v2/{name}/referrers/{digest}")

        home(tmp_path, f"server-{fmt}", monkeypatch)
        code, out, err = cli(capsys, "pull", ref, "--verify-key", keys["team.pub"])
        assert code == 0, err
        assert "(1 signature came along)" in out and "signed by: " in out
        code, out, err = cli(capsys, "verify", ref, "--key", keys["team.pub"])
        assert code == 0 and f"Verified: {ref} is signed by key " in out, err
        code, out, err = cli(capsys, "verify", ref, "--key", keys["team.pub"], "--remote")
        assert code == 0 and "Verified: " in out, err
        dest = tmp_path / f"out-{fmt}"
        code, out, err = cli(capsys, "export", ref, "-d", dest, "--verify-key", keys["team.pub"])
        assert code == 0 and "signed by: " in out, err
        root = dest / "model" if fmt == "ormb" else dest
        assert (root / "weights.bin").read_bytes() == WEIGHTS
        # the other key verifies nothing, given on the command line or by the environment
        refused(cli(capsys, "verify", ref, "--key", keys["other.pub"]), ref, "unknown key")
        monkeypatch.setenv("ORMB_VERIFY_KEY", str(keys["other.pub"]))
        refused(cli(capsys, "pull-and-export", ref, tmp_path / f"env-{fmt}"), "unknown key")
        refused(cli(capsys, "export", ref, "-d", tmp_path / f"env-{fmt}"), "unknown key")
        assert not (tmp_path / f"env-{fmt}").exists()
        monkeypatch.setenv("ORMB_VERIFY_KEY", str(keys["team.pub"]))
        assert cli(capsys, "pull-and-export", ref, tmp_path / f"env-{fmt}")[0] == 0
        monkeypatch.delenv("ORMB_VERIFY_KEY")
        # prune keeps the signature while its model is there, and drops it with the model
        assert cli(capsys, "prune")[0] == 0
        assert cli(capsys, "verify", ref, "--key", keys["team.pub"])[0] == 0
        assert cli(capsys, "rm", ref)[0] == 0 and cli(capsys, "prune")[0] == 0
        index = json.loads((tmp_path / f"server-{fmt}" / "cache" / "index.json").read_text())
        assert index["manifests"] == []


def _signature_of(trainer: Settings, ref: str) -> bytes:
    """The bundle the trainer's cache holds for ``ref`` (what an attacker copies from the registry)."""
    cache = OCILayout(trainer.cache_dir)
    subject = cache.resolve(str(api._ref(ref, trainer)))
    (entry,) = cache.referrers(subject.digest)
    manifest = Manifest.from_bytes(fetch_bytes(cache, entry))
    return fetch_bytes(cache, bundle_layer(manifest, subject))


def _push_model(remote: RemoteRepository, tag: str, config: tuple[Descriptor, bytes],
                layers: list[tuple[Descriptor, bytes]], artifact_type: str | None,
                annotations: dict[str, str] | None = None) -> Descriptor:
    for desc, data in [config, *layers]:
        push_bytes(remote, desc, data)
    manifest = Manifest(config[0], tuple(d for d, _ in layers), artifact_type=artifact_type,
                        annotations=annotations or {})
    data = manifest.to_bytes()
    desc = Descriptor.of_bytes(mediatypes.OCI_MANIFEST, data)
    remote.push_reference(desc, io.BytesIO(data), tag)
    return desc


def _attach(remote: RemoteRepository, subject: Descriptor, bundle: bytes) -> None:
    artifact = signature_artifact(subject, bundle)
    for desc, data in (artifact.config, artifact.bundle, (artifact.descriptor, artifact.manifest_bytes)):
        push_bytes(remote, desc, data)


def tamper(remote: RemoteRepository, trainer: Settings, ref: str, fmt: str, change: str) -> None:
    """An attacker who can push: re-push the model under its tag with a file added or changed, and
    attach the original (valid) signature to the new manifest."""
    bundle = _signature_of(trainer, ref)
    cache = OCILayout(trainer.cache_dir)
    original = Manifest.from_bytes(fetch_bytes(cache, cache.resolve(str(api._ref(ref, trainer)))))
    config = (original.config, fetch_bytes(cache, original.config))
    tag = ref.rsplit(":", 1)[1]
    files = dict(FILES)
    if change == "added":
        files["extra.bin"] = b"import os; os.system('...')"
    else:
        files["weights.bin"] = WEIGHTS[:-1] + b"!"
    if fmt == "ormb":
        layer = craft_layer([(f"model/{path}", "file", data) for path, data in sorted(files.items())])
        layers = [(Descriptor.of_bytes(mediatypes.ORMB_LAYER, layer), layer)]
    else:
        layers = []
        for path, data in sorted(files.items()):
            layers.append((Descriptor.of_bytes(modelpack.layer_type("weight"), data,
                                               {modelpack.ANNOTATION_FILEPATH: path}), data))
    subject = _push_model(remote, tag, config, layers, original.artifact_type, original.annotations)
    _attach(remote, subject, bundle)


SCENARIOS = {
    "unsigned": ("is not signed",),
    "other key": ("signed by an unknown key",),
    "file added": ("'extra.bin' is in the model but not in its signature",),
    "file changed": ("'weights.bin' differs from the signed file",),
    "another model's signature": ("does not match its signature",),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_attack_is_refused_with_one_line_and_nothing_written(tmp_path: Path, registry: Any, fmt: str,
                                                                 keys: dict[str, Path],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    proxy = FaultProxy(registry.port)  # the server pulls through it: it counts what is downloaded
    try:
        for scenario, fragments in SCENARIOS.items():
            name = f"{fmt}-{scenario.replace(' ', '-').replace(chr(39), '')}"
            key = {"unsigned": None, "other key": keys["other.pem"], "another model's signature": None}.get(
                scenario, keys["team.pem"])
            ref, trainer = publish(tmp_path, registry.host, name, fmt, key, monkeypatch)
            remote = repository(registry.host, ref.split("/", 1)[1].rsplit(":", 1)[0], tmp_path)
            if scenario.startswith("file"):
                tamper(remote, trainer, ref, fmt, scenario.split()[1])
            elif scenario == "another model's signature":  # a valid signature of other files, attached to this model
                other, other_trainer = publish(tmp_path, registry.host, f"{name}-x", fmt, keys["team.pem"],
                                               monkeypatch, files={"x.bin": b"x"})
                desc = remote.resolve("v1")
                _attach(remote, Descriptor(desc.media_type, desc.digest, desc.size), _signature_of(other_trainer, other))
            via_proxy = ref.replace(registry.host, proxy.host)
            served, _ = remote.fetch_reference("v1")
            weights = {d.digest for d in Manifest.from_bytes(fetch_bytes(remote, served)).layers if d.size > 100_000}
            server = home(tmp_path, f"server-{name}", monkeypatch)
            api.prune(settings=server)  # an empty cache exists: 'nothing written' is compared with it
            for attempt in ("pull", "export", "initializer"):
                dest = tmp_path / f"dest-{name}-{attempt}"
                if attempt == "export":  # pulled without a check first, then exported with one
                    assert cli(capsys, "pull", via_proxy)[0] == 0
                before, requests = cache_state(server), len(proxy.requests)
                if attempt == "pull":
                    line = refused(cli(capsys, "pull", via_proxy, "--verify-key", keys["team.pub"]), *fragments)
                elif attempt == "export":
                    line = refused(cli(capsys, "export", via_proxy, "-d", dest, "--verify-key", keys["team.pub"]),
                                   *fragments)
                else:
                    line = refused(cli(capsys, "pull-and-export", via_proxy, dest, "--verify-key", keys["team.pub"]),
                                   *fragments)
                assert via_proxy in line
                assert cache_state(server) == before, f"{scenario}/{attempt} wrote into the cache"
                assert not dest.exists(), f"{scenario}/{attempt} made {dest}"
                fetched = {path.rsplit("/", 1)[1] for method, path, _, _ in proxy.requests[requests:]
                           if method == "GET" and "/blobs/" in path}
                if fmt == "modelpack" or scenario in ("unsigned", "other key"):
                    assert not fetched & weights, f"{scenario}/{attempt}: a weight was downloaded before refusing"
    finally:
        proxy.stop()


def test_bytes_corrupted_on_the_wire_are_refused_and_nothing_is_written(
        tmp_path: Path, registry: Any, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    proxy = FaultProxy(registry.port)
    try:
        for fmt in FORMATS:
            ref, _ = publish(tmp_path, registry.host, f"wire-{fmt}", fmt, keys["team.pem"], monkeypatch)
            via_proxy = ref.replace(registry.host, proxy.host)
            server = home(tmp_path, f"server-wire-{fmt}", monkeypatch)
            proxy.corrupt_blobs = True
            before = cache_state(server)
            refused(cli(capsys, "pull", via_proxy, "--verify-key", keys["team.pub"]), "does not match")
            index, _ = cache_state(server)
            assert index == before[0], "a reference was written"
            dest = tmp_path / f"dest-wire-{fmt}"
            refused(cli(capsys, "pull-and-export", via_proxy, dest, "--verify-key", keys["team.pub"]))
            assert not dest.exists()
            proxy.corrupt_blobs = False
            assert cli(capsys, "pull", via_proxy, "--verify-key", keys["team.pub"])[0] == 0
    finally:
        proxy.stop()
