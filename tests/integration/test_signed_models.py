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
import stat
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from registries import EmbeddedRegistry, FaultProxy

from conftest import compress, craft_layer, make_model
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
from ormb.signing import (
    GIT_PATHS,
    SIGNATURE_ARTIFACT_TYPE,
    bundle_layer,
    generate_key_pair,
    signature_artifact,
)

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
    files = dict(FILES)
    if change == "added":
        files["extra.bin"] = b"import os; os.system('...')"
    else:
        files["weights.bin"] = WEIGHTS[:-1] + b"!"
    repush(remote, trainer, ref, fmt, files)


def repush(remote: RemoteRepository, trainer: Settings, ref: str, fmt: str, files: dict[str, bytes]) -> Descriptor:
    """Re-push the model under its tag with exactly ``files`` (one raw layer each for ModelPack, one
    ``model/`` tar+gzip layer for the ormb format), its config and annotations kept, and attach the
    trainer's original (valid) signature to the new manifest."""
    bundle = _signature_of(trainer, ref)
    cache = OCILayout(trainer.cache_dir)
    original = Manifest.from_bytes(fetch_bytes(cache, cache.resolve(str(api._ref(ref, trainer)))))
    config = (original.config, fetch_bytes(cache, original.config))
    tag = ref.rsplit(":", 1)[1]
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
    return subject


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


# One file under each of the signature's ignore paths (model_signing's GIT_PATHS).  A '.git/config'
# with core.fsmonitor runs its command on the next 'git status' in the exported directory.
GIT_CONFIG = b'[core]\n\tfsmonitor = "touch /tmp/ormb-fsmonitor-ran; false"\n'
UNSIGNED_GIT_FILES = {".git": ".git/config", ".gitattributes": ".gitattributes", ".github": ".github/workflows/ci.yml",
                      ".gitignore": ".gitignore"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_under_the_signatures_ignore_paths_are_refused(tmp_path: Path, registry: Any, fmt: str,
                                                             keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A pusher re-pushes the signed model with a file under .git, .gitattributes, .github or .gitignore
    (which a model signature leaves out) and re-attaches the genuine signature: every verifying command
    refuses it (the phase-1 code accepted all of them and wrote the files)."""
    assert set(UNSIGNED_GIT_FILES) == set(GIT_PATHS)
    for ignored, path in UNSIGNED_GIT_FILES.items():
        name = f"git-{fmt}-{ignored.strip('.')}"
        ref, trainer = publish(tmp_path, registry.host, name, fmt, keys["team.pem"], monkeypatch)
        remote = repository(registry.host, f"signed/{name}", tmp_path)
        repush(remote, trainer, ref, fmt, {**FILES, path: GIT_CONFIG})
        server = home(tmp_path, f"server-{name}", monkeypatch)
        api.prune(settings=server)
        fragment = f"{path!r} is in the model but not in its signature"
        before = cache_state(server)
        refused(cli(capsys, "pull", ref, "--verify-key", keys["team.pub"]), fragment)
        assert cache_state(server) == before, f"{path}: the refused pull wrote into the cache"
        refused(cli(capsys, "verify", ref, "--key", keys["team.pub"], "--remote"), fragment)
        dest = tmp_path / f"init-{name}"
        refused(cli(capsys, "pull-and-export", ref, dest, "--layout", "mlflow", "--verify-key", keys["team.pub"]),
                fragment)
        assert not dest.exists()
        assert cli(capsys, "pull", ref)[0] == 0  # without a key: the user's choice
        refused(cli(capsys, "verify", ref, "--key", keys["team.pub"]), fragment)
        dest = tmp_path / f"export-{name}"
        refused(cli(capsys, "export", ref, "-d", dest, "--verify-key", keys["team.pub"]), fragment)
        assert not dest.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_layers_ormbfile_yaml_is_refused_even_with_no_metadata(tmp_path: Path, registry: Any, fmt: str,
                                                                 keys: dict[str, Path],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """ormbfile.yaml is left out of a ModelPack signature because ormb's export writes it; a *layer*
    holding it is not ormb's file: refused whether or not the export writes metadata (with
    --no-metadata the phase-1 code accepted the layer's file; the ormb format always refused it)."""
    name = f"ormbfile-{fmt}"
    ref, trainer = publish(tmp_path, registry.host, name, fmt, keys["team.pem"], monkeypatch)
    remote = repository(registry.host, f"signed/{name}", tmp_path)
    repush(remote, trainer, ref, fmt, {**FILES, "ormbfile.yaml": b"format: PyTorch\nauthor: attacker\n"})
    home(tmp_path, f"server-{name}", monkeypatch)
    fragment = "'ormbfile.yaml' is in the model but not in its signature"
    for metadata in ((), ("--no-metadata",)):
        dest = tmp_path / f"init-{name}{len(metadata)}"
        layout = "mlflow" if fmt == "modelpack" else "none"  # the layer's file beside the one export writes
        refused(cli(capsys, "pull-and-export", ref, dest, "--layout", layout, *metadata,
                    "--verify-key", keys["team.pub"]), fragment)
        assert not dest.exists()
    refused(cli(capsys, "pull", ref, "--verify-key", keys["team.pub"]), fragment)
    assert cli(capsys, "pull", ref)[0] == 0
    refused(cli(capsys, "verify", ref, "--key", keys["team.pub"]), fragment)
    for metadata in ((), ("--no-metadata",)):
        dest = tmp_path / f"export-{name}{len(metadata)}"
        refused(cli(capsys, "export", ref, "-d", dest, *metadata, "--verify-key", keys["team.pub"]), fragment)
        assert not dest.exists()


@pytest.mark.parametrize("variable, value", [("ORMB_VERIFY_KEY", ""), ("ORMB_VERIFY_KEY", ":"),
                                             ("ORMB_VERIFY_KEY", " "), ("ORMB_TRUST_DIR", "")])
def test_a_verify_environment_naming_no_key_fails_closed(tmp_path: Path, registry: Any, variable: str, value: str,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A deployment whose key secret came out empty: the old code read it as "do not verify" and wrote an
    unsigned model into the server's directory.  Every verifying command is a usage error (exit 2) now,
    before anything is fetched or written."""
    ref, _ = publish(tmp_path, registry.host, "empty-env", "modelpack", None, monkeypatch)  # unsigned
    server = home(tmp_path, "server-empty-env", monkeypatch)
    monkeypatch.setenv(variable, value)
    for args, dest in ((("pull-and-export", ref, tmp_path / "init"), tmp_path / "init"), (("pull", ref), None),
                       (("export", ref, "-d", tmp_path / "export"), tmp_path / "export")):
        code, out, err = cli(capsys, *args)
        assert code == 2, (args, code, out, err)
        assert err.startswith("Error: ") and f"{variable} is set but" in err and len(err.strip().splitlines()) == 1
        assert dest is None or not dest.exists()
    assert cache_state(server) == (None, set())


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_verified_export_writes_exactly_the_signed_files(tmp_path: Path, registry: Any, fmt: str,
                                                           keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Everything a verified export writes is a signed file: the old code also wrote ormbfile.yaml, made from
    the model's config, which no signature covers (anyone who can push may change it), and merged the
    signed files into whatever the directory held, so a leftover 'modeling_custom.py' sat beside them looking
    verified.  Now: no ormbfile.yaml (a note says so), and a directory holding anything the export does not
    replace is refused (exit 2, left as it was); re-exporting over the same model's files works."""
    ref, _ = publish(tmp_path, registry.host, f"only-signed-{fmt}", fmt, keys["team.pem"], monkeypatch)
    home(tmp_path, f"server-only-signed-{fmt}", monkeypatch)
    assert cli(capsys, "pull", ref, "--verify-key", keys["team.pub"])[0] == 0
    signed = {(f"model/{p}" if fmt == "ormb" else p): data for p, data in FILES.items()}
    runs = [("export", ref, "-d", "{dest}", "--verify-key", keys["team.pub"]),
            ("pull-and-export", ref, "{dest}", "--layout", "none" if fmt == "ormb" else "mlflow",
             "--verify-key", keys["team.pub"])]
    for n, run in enumerate(runs):
        dest = tmp_path / f"dest-{fmt}-{n}"
        args = [str(dest) if a == "{dest}" else a for a in run]
        code, out, err = cli(capsys, *args)
        assert code == 0, err
        assert "note: ormbfile.yaml was not written: no signature covers it" in err
        assert _tree(dest) == signed
        assert cli(capsys, *args)[0] == 0  # the same model over itself: every path replaced
        assert _tree(dest) == signed
        leftover = dest / ("model" if fmt == "ormb" else "") / "modeling_custom.py"
        leftover.write_text("import os; os.system('id')\n")
        before = _tree(dest)
        code, out, err = cli(capsys, *args)
        assert code == 2, (code, out, err)
        assert err.startswith("Error: ") and "modeling_custom.py" in err and len(err.strip().splitlines()) == 1
        assert _tree(dest) == before
        leftover.unlink()
        (dest / "extra-dir").mkdir()  # an empty directory of someone else's is not the model's either
        assert cli(capsys, *args)[0] == 2
        (dest / "extra-dir").rmdir()
    # without a key, export behaves as before: metadata written, other files left alone
    dest = tmp_path / f"plain-{fmt}"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    assert cli(capsys, "export", ref, "-d", dest)[0] == 0
    assert (dest / "ormbfile.yaml").exists() and (dest / "notes.txt").read_text() == "mine"


def test_junk_referrers_cost_a_bounded_number_of_requests_and_never_hide_the_signature(
        tmp_path: Path, registry: Any, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Anyone who can push attaches 150 referrers of another type, 40 junk "signatures" and one "signature"
    with 60 layers.  The old pull fetched every listed manifest (with or without a key), copied the 60
    layers into the cache, and with a key read only the first 32 signatures, so a genuine one listed after
    the junk made the model "unsigned".  Now only signatures are asked for (?artifactType=, filtered again
    for the fallback index), a many-layered one is refused from its manifest, and the genuine one is found."""
    ref, _ = publish(tmp_path, registry.host, "junk", "modelpack", keys["team.pem"], monkeypatch)
    remote = repository(registry.host, "signed/junk", tmp_path)
    found = remote.resolve("v1")
    subject = Descriptor(found.media_type, found.digest, found.size)
    empty = (Descriptor.of_bytes(mediatypes.OCI_EMPTY, b"{}"), b"{}")
    push_bytes(remote, *empty)
    sboms = []
    for i in range(150):
        node = Manifest(empty[0], (empty[0],), artifact_type="application/x-sbom", subject=subject,
                        annotations={"n": str(i)})
        data = node.to_bytes()
        sboms.append(Descriptor.of_bytes(mediatypes.OCI_MANIFEST, data))
        push_bytes(remote, sboms[-1], data)
    for i in range(40):
        _attach(remote, subject, b'{"junk": %d}' % i)
    layers = []
    for i in range(60):
        data = b"layer %d" % i
        desc = Descriptor.of_bytes("application/vnd.dev.sigstore.bundle.v0.3+json", data)
        push_bytes(remote, desc, data)
        layers.append(desc)
    node = Manifest(empty[0], tuple(layers), artifact_type=SIGNATURE_ARTIFACT_TYPE, subject=subject)
    data = node.to_bytes()
    push_bytes(remote, Descriptor.of_bytes(mediatypes.OCI_MANIFEST, data), data)
    if not isinstance(registry, EmbeddedRegistry):  # the fallback index: put the genuine signature last
        tag = "sha256-" + subject.digest.partition(":")[2]
        index = json.loads(fetch_bytes(remote, remote.resolve(tag)))
        genuine = [m for m in index["manifests"] if m.get("annotations", {}).get("n") is None][:1]
        index["manifests"] = [m for m in index["manifests"] if m not in genuine] + genuine
        data = json.dumps(index).encode()
        remote.push_reference(Descriptor.of_bytes(mediatypes.OCI_INDEX, data), io.BytesIO(data), tag)
    proxy = FaultProxy(registry.port)
    try:
        via = ref.replace(registry.host, f"127.0.0.1:{proxy.port}")
        for name, args in (("plain", ()), ("key", ("--verify-key", keys["team.pub"]))):
            server = home(tmp_path, f"server-junk-{name}", monkeypatch)
            before = len(proxy.requests)
            code, out, err = cli(capsys, "pull", via, *args)
            assert code == 0, err
            gets = [path for method, path, _, _ in proxy.requests[before:] if method == "GET"]
            manifests = sum("/manifests/" in p for p in gets)
            # the model, the referrers listing (the fallback index is a manifest), the 42 signature manifests
            # (once to verify, once to copy): none of the 150 others
            assert manifests <= 3 + 2 * 42, manifests
            assert not any(sbom.digest in p for p in gets for sbom in sboms)
            assert not any(layer.digest in p for p in gets for layer in layers)
            assert all(layer.digest not in cache_state(server)[1] for layer in layers)
    finally:
        proxy.stop()


def test_a_tar_layer_added_to_a_signed_modelpack_model_is_refused_before_it_is_downloaded(
        tmp_path: Path, registry: Any, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A pusher adds a 4 MiB tar layer to the signed model and re-attaches the genuine signature: the old
    pull and initializer downloaded the layer before refusing; the manifest says enough to refuse first."""
    ref, trainer = publish(tmp_path, registry.host, "tar-added", "modelpack", keys["team.pem"], monkeypatch)
    remote = repository(registry.host, "signed/tar-added", tmp_path)
    cache = OCILayout(trainer.cache_dir)
    original = Manifest.from_bytes(fetch_bytes(cache, cache.resolve(str(api._ref(ref, trainer)))))
    layers = [(d, fetch_bytes(cache, d)) for d in original.layers]
    tar = craft_layer([("payload.bin", "file", os.urandom(4 << 20))])
    extra = Descriptor.of_bytes(modelpack.layer_type("code", "tar+gzip"), tar)
    subject = _push_model(remote, "v1", (original.config, fetch_bytes(cache, original.config)),
                          [*layers, (extra, tar)], original.artifact_type, original.annotations)
    _attach(remote, subject, _signature_of(trainer, ref))
    proxy = FaultProxy(registry.port)
    try:
        via = ref.replace(registry.host, f"127.0.0.1:{proxy.port}")
        server = home(tmp_path, "server-tar-added", monkeypatch)
        refused(cli(capsys, "pull", via, "--verify-key", keys["team.pub"]), "every signed file is in a raw layer")
        refused(cli(capsys, "pull-and-export", via, tmp_path / "init", "--verify-key", keys["team.pub"]),
                "every signed file is in a raw layer")
        assert not (tmp_path / "init").exists()
        assert cache_state(server) == (None, set())
        assert not [p for m, p, _, _ in proxy.requests if m == "GET" and extra.digest in p]
        assert not [p for m, p, _, _ in proxy.requests if m == "GET" and "/blobs/" in p and
                    any(d.digest in p for d, _ in layers)]
    finally:
        proxy.stop()


def test_the_catalog_shows_signed_only_for_a_trusted_signature_that_matches(
        tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """ormb registry serve --trust-key: the model page says "signed" with the key's fingerprint only when a
    signature by a trusted key matches every file; unsigned, another key's, and a genuine signature
    re-attached to a changed model are "not verified", with the reason; the referrers are listed.  (Before,
    nothing wired signing.catalog_status to the pages or to serve.)"""
    from ormb.errors import KeyFileError
    from ormb.server.serve import ServeOptions
    from ormb.signing import load_public_key

    registry = EmbeddedRegistry(tmp_path / "catalog", trust_keys=(keys["team.pub"],))
    try:
        fingerprint = load_public_key(keys["team.pub"]).fingerprint
        cases = {"ok-modelpack": ("modelpack", keys["team.pem"]), "ok-ormb": ("ormb", keys["team.pem"]),
                 "unsigned": ("modelpack", None), "other": ("modelpack", keys["other.pem"]),
                 "changed": ("ormb", keys["team.pem"])}
        for name, (fmt, key) in cases.items():
            ref, trainer = publish(tmp_path, registry.host, f"cat-{name}", fmt, key, monkeypatch)
            if name == "changed":
                repush(repository(registry.host, f"signed/cat-{name}", tmp_path), trainer, ref, fmt,
                       {**FILES, "extra.py": b"import os"})

        def page(name: str) -> str:
            with urllib.request.urlopen(f"http://{registry.host}/model?name=signed/cat-{name}&ref=v1") as response:
                return response.read().decode()
        for name in ("ok-modelpack", "ok-ormb"):
            html = page(name)
            assert 'id="signed"' in html and f"key {fingerprint}" in html, name
            remote = repository(registry.host, f"signed/cat-{name}", tmp_path)
            (referrer,) = remote.referrers(remote.resolve("v1").digest)
            assert 'id="referrers"' in html and SIGNATURE_ARTIFACT_TYPE in html and referrer.digest in html
        for name, reason in (("unsigned", "is not signed"), ("other", "unknown key"),
                             ("changed", "&#39;extra.py&#39; is in the model but not in its signature")):
            html = page(name)
            assert 'id="signed"' not in html and 'id="unsigned"' in html and reason in html, (name, html[-3000:])
    finally:
        registry.stop()
    writable = tmp_path / "writable.pub"
    writable.write_bytes(keys["team.pub"].read_bytes())
    writable.chmod(0o666)
    with pytest.raises(KeyFileError, match="writable by every local user"):
        ServeOptions(tmp_path / "root", trust_keys=(writable,)).check()


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_model_manifest_with_a_subject_is_refused_before_anything_else_is_downloaded(
        tmp_path: Path, registry: Any, fmt: str, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A pusher re-pushes the signed model's manifest with a ``subject`` naming an unsigned model U (3 MiB
    layer) and re-attaches the genuine signature (it names no manifest).  The old verifying pull followed the
    subject as a copy does and stored U's whole unsigned graph (a refused pull left it).  A model is not a
    referrer: every verifying command refuses a model manifest with a subject, from the manifest alone."""
    name = f"subject-{fmt}"
    ref, trainer = publish(tmp_path, registry.host, name, fmt, keys["team.pem"], monkeypatch)
    uref, utrainer = publish(tmp_path, registry.host, f"{name}-u", "modelpack", None, monkeypatch,
                             files={"evil.bin": os.urandom(3 << 20)})
    remote = repository(registry.host, f"signed/{name}", tmp_path)
    ucache = OCILayout(utrainer.cache_dir)
    udesc = ucache.resolve(str(api._ref(uref, utrainer)))
    udata = fetch_bytes(ucache, udesc)
    umanifest = Manifest.from_bytes(udata)
    for d in (umanifest.config, *umanifest.layers):  # U, untagged, in the same repository
        push_bytes(remote, d, fetch_bytes(ucache, d))
    u = Descriptor(udesc.media_type, udesc.digest, udesc.size)
    remote.push_reference(u, io.BytesIO(udata), u.digest)
    cache = OCILayout(trainer.cache_dir)
    original = Manifest.from_bytes(fetch_bytes(cache, cache.resolve(str(api._ref(ref, trainer)))))
    for d in (original.config, *original.layers):
        push_bytes(remote, d, fetch_bytes(cache, d))
    smuggled = Manifest(original.config, original.layers, artifact_type=original.artifact_type,
                        annotations=original.annotations, subject=u)
    data = smuggled.to_bytes()
    subject = Descriptor.of_bytes(mediatypes.OCI_MANIFEST, data)
    remote.push_reference(subject, io.BytesIO(data), "v2")
    _attach(remote, subject, _signature_of(trainer, ref))
    proxy = FaultProxy(registry.port)
    try:
        via = ref.replace(registry.host, proxy.host).replace(":v1", ":v2")
        server = home(tmp_path, f"server-{name}", monkeypatch)
        api.prune(settings=server)
        before = cache_state(server)
        fragment = f"its manifest has a subject ({u.digest[:19]}"
        line = refused(cli(capsys, "pull", via, "--verify-key", keys["team.pub"]), fragment)
        assert via in line
        dest = tmp_path / f"init-{name}"
        refused(cli(capsys, "pull-and-export", via, dest, "--verify-key", keys["team.pub"]), fragment)
        assert not dest.exists()
        assert cache_state(server) == before, "a refused pull wrote into the cache"
        gets = [p for m, p, _, _ in proxy.requests if m == "GET"]
        assert [p for p in gets if "/blobs/" in p] == [], gets  # nothing but the manifest
        assert not [p for p in gets if "/referrers/" in p or u.digest in p], gets
        assert cli(capsys, "pull", via)[0] == 0  # without a key it is a copy (the subject comes along)
        refused(cli(capsys, "export", via, "-d", tmp_path / f"export-{name}", "--verify-key", keys["team.pub"]),
                fragment)
        assert not (tmp_path / f"export-{name}").exists()
        refused(cli(capsys, "verify", via, "--key", keys["team.pub"]), fragment)
    finally:
        proxy.stop()


REFUSED_LAYERS: dict[str, tuple[list[tuple[str, str, bytes | str]], str]] = {
    # (the layer's entries, what the error says): refused by the verifier (VerificationError) or by the
    # checked tar reader (UnsafeArchiveError), all exit 4
    "symlink": ([("model/w.bin", "file", b"W" * 100), ("model/l", "symlink", "w.bin")], "symbolic link"),
    "hardlink to nothing": ([("model/w.bin", "file", b"W" * 100), ("model/x", "hardlink", "model/nothing")], ""),
    "file and directory": ([("model/w.bin", "file", b"W" * 100), ("model/w.bin/x", "file", b"1")], ""),
    "escape": ([("model/w.bin", "file", b"W" * 100), ("model/../../x", "file", b"1")], ""),
    "outside model/": ([("model/w.bin", "file", b"W" * 100), ("other/x", "file", b"1")], ""),
}


def test_every_refused_verifying_pull_deletes_what_it_brought(tmp_path: Path, registry: Any, keys: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The genuine signature of an ormb-format model re-attached to a manifest whose layer the verifier (or the
    checked tar reader) refuses: the old pull deleted the layer it brought only on a VerificationError, so an
    UnsafeArchiveError (also exit 4) left the refused layer and the config in the cache.  Now every failure
    of a verifying pull (whatever the exception) leaves the cache as it was: no reference, no blob."""
    ref, trainer = publish(tmp_path, registry.host, "refusals", "ormb", keys["team.pem"], monkeypatch,
                           files={"w.bin": b"W" * 100})
    remote = repository(registry.host, "signed/refusals", tmp_path)
    bundle = _signature_of(trainer, ref)
    cache = OCILayout(trainer.cache_dir)
    original = Manifest.from_bytes(fetch_bytes(cache, cache.resolve(str(api._ref(ref, trainer)))))
    config = (original.config, fetch_bytes(cache, original.config))
    server = home(tmp_path, "server-refusals", monkeypatch)
    api.prune(settings=server)
    tags = []
    for n, (kind, (members, fragment)) in enumerate(REFUSED_LAYERS.items()):
        layer = craft_layer(members)
        desc = Descriptor.of_bytes(mediatypes.ORMB_LAYER, layer)
        subject = _push_model(remote, f"bad{n}", config, [(desc, layer)], original.artifact_type, original.annotations)
        _attach(remote, subject, bundle)
        tags.append(f"bad{n}")
        before = cache_state(server)
        refused(cli(capsys, "pull", ref.replace(":v1", f":bad{n}"), "--verify-key", keys["team.pub"]), fragment)
        assert cache_state(server) == before, f"{kind}: the refused pull left blobs or a reference"
    # any other failure while checking (here: an exception ormb does not expect) cleans up as well
    import ormb.api

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the check broke")
    monkeypatch.setattr(ormb.api, "check_model", broken)
    before = cache_state(server)
    with pytest.raises(RuntimeError):
        api.pull(ref, verify_key=keys["team.pub"], settings=server)
    assert cache_state(server) == before, "a pull whose check failed left blobs or a reference"
    monkeypatch.undo()
    home(tmp_path, "server-refusals", monkeypatch)
    assert cli(capsys, "pull", ref, "--verify-key", keys["team.pub"])[0] == 0  # the genuine model still pulls


REPLAYED_FILES = {"w.bin": b"W" * 100, "run.py": b"print('hi')\n", "sub/vocab.txt": b"a\nb\n"}


def _entries_and_modes(root: Path) -> dict[str, int | None]:
    """Every path below ``root``: a file's permission bits, None for a directory."""
    return {str(p.relative_to(root)): None if p.is_dir() else stat.S_IMODE(p.lstat().st_mode)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_verified_export_writes_no_unsigned_directory_and_no_layer_mode(
        tmp_path: Path, registry: Any, fmt: str, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The genuine signature re-attached to a manifest with the same file bytes, but a tar layer that also
    makes empty directories (``model/.git/hooks/``, ``model/1/``) and gives the files mode 04777 (ModelPack:
    the file metadata annotation says 04777).  The old verified export wrote the directories and kept exec
    bits (0755).  Now a verified export writes the signed files with mode 0644 and only the directories
    they are in, in every layout of pull-and-export and in export."""
    name = f"replay-modes-{fmt}"
    ref, trainer = publish(tmp_path, registry.host, name, fmt, keys["team.pem"], monkeypatch, files=REPLAYED_FILES)
    remote = repository(registry.host, f"signed/{name}", tmp_path)
    cache = OCILayout(trainer.cache_dir)
    original = Manifest.from_bytes(fetch_bytes(cache, cache.resolve(str(api._ref(ref, trainer)))))
    config = (original.config, fetch_bytes(cache, original.config))
    layers: list[tuple[Descriptor, bytes]] = []
    if fmt == "ormb":
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for directory in ("model/", "model/.git/", "model/.git/hooks/", "model/1/", "model/sub/"):
                info = tarfile.TarInfo(directory)
                info.type, info.mode = tarfile.DIRTYPE, 0o777
                tar.addfile(info)
            for path, data in REPLAYED_FILES.items():
                info = tarfile.TarInfo(f"model/{path}")
                info.size, info.mode = len(data), 0o4777
                tar.addfile(info, io.BytesIO(data))
        layer = compress(raw.getvalue(), "tar+gzip")
        layers.append((Descriptor.of_bytes(original.layers[0].media_type, layer,
                                           dict(original.layers[0].annotations)), layer))
    else:
        for desc in original.layers:
            annotations = dict(desc.annotations)
            meta = json.loads(annotations[modelpack.ANNOTATION_FILE_METADATA])
            annotations[modelpack.ANNOTATION_FILE_METADATA] = json.dumps({**meta, "mode": 0o4777})
            layers.append((Descriptor(desc.media_type, desc.digest, desc.size, annotations), fetch_bytes(cache, desc)))
    subject = _push_model(remote, "v2", config, layers, original.artifact_type, original.annotations)
    _attach(remote, subject, _signature_of(trainer, ref))
    ref2 = ref.replace(":v1", ":v2")
    home(tmp_path, f"server-{name}", monkeypatch)

    def expected(prefix: str) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for path in REPLAYED_FILES:
            parts = f"{prefix}{path}".split("/")
            out.update({"/".join(parts[:end]): None for end in range(1, len(parts))})
            out[f"{prefix}{path}"] = 0o644
        return out
    model_dir = "model/" if fmt == "ormb" else ""
    for layout, prefix in (("mlflow", ""), ("triton", "1/"), ("none", model_dir)):
        dest = tmp_path / f"{name}-{layout}"
        code, out, err = cli(capsys, "pull-and-export", ref2, dest, "--layout", layout, "--verify-key", keys["team.pub"])
        assert code == 0, err
        assert _entries_and_modes(dest) == expected(prefix), layout
    assert cli(capsys, "pull", ref2, "--verify-key", keys["team.pub"])[0] == 0
    dest = tmp_path / f"{name}-export"
    assert cli(capsys, "export", ref2, "-d", dest, "--verify-key", keys["team.pub"])[0] == 0
    assert _entries_and_modes(dest) == expected(model_dir)
    assert cli(capsys, "export", ref2, "-d", dest, "--verify-key", keys["team.pub"])[0] == 0  # over itself
    assert _entries_and_modes(dest) == expected(model_dir)


def test_the_catalog_says_the_signature_covers_the_files_only(tmp_path: Path, keys: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The genuine signature re-attached to the model with an attacker's config (description "AUDITED by
    security team", author "attacker"): the files match, so the badge is right to show; but the old page put
    "signed" next to the attacker's description with nothing saying the config is not signed.  Now the badge
    says the signature covers the files only, and each metadata section is marked "not covered by the
    signature" (only when a badge is shown)."""
    registry = EmbeddedRegistry(tmp_path / "catalog", trust_keys=(keys["team.pub"],))
    try:
        ref, trainer = publish(tmp_path, registry.host, "cat-replayed", "ormb", keys["team.pem"], monkeypatch)
        remote = repository(registry.host, "signed/cat-replayed", tmp_path)
        cache = OCILayout(trainer.cache_dir)
        original = Manifest.from_bytes(fetch_bytes(cache, cache.resolve(str(api._ref(ref, trainer)))))
        config = json.loads(fetch_bytes(cache, original.config))
        config.update(description="AUDITED by security team", author="attacker")
        data = json.dumps(config).encode()
        subject = _push_model(remote, "v2", (Descriptor.of_bytes(original.config.media_type, data), data),
                              [(d, fetch_bytes(cache, d)) for d in original.layers], original.artifact_type,
                              original.annotations)
        _attach(remote, subject, _signature_of(trainer, ref))
        unsigned, _ = publish(tmp_path, registry.host, "cat-plain", "ormb", None, monkeypatch)

        def page(name: str, tag: str) -> str:
            with urllib.request.urlopen(f"http://{registry.host}/model?name=signed/{name}&ref={tag}") as response:
                return response.read().decode()
        html = page("cat-replayed", "v2")
        assert 'id="signed"' in html and "AUDITED by security team" in html
        assert ">signed files</span>" in html
        assert "The signature covers the files only (their paths and SHA-256 digests)" in html
        heading = html.index('id="model-heading"')
        assert "not covered by the signature" in html[heading:html.index("</h2>", heading)]
        assert heading < html.index("AUDITED by security team")
        plain = page("cat-plain", "v1")  # no badge: nothing claims a signature, so nothing is marked
        assert 'id="signed"' not in plain and "not covered by the signature" not in plain
    finally:
        registry.stop()
