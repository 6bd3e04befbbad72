"""ormb.sign / ormb.verify / verify_key= on the local cache (no registry): where signatures live in the
cache, what prune does with them, what signing reads, and how each refusal looks."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

import ormb
from conftest import make_model
from ormb import api
from ormb.cli.main import main
from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.content.memory import MemoryStore
from ormb.content.target import Readable, fetch_bytes, push_bytes
from ormb.errors import KeyFileError, UsageError, VerificationError
from ormb.model import modelpack
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.signing import (
    catalog_status,
    generate_key_pair,
    load_public_key,
    signature_artifact,
)
from ormb.transfer import copy_referrers

WEIGHTS = os.urandom(200_000)
FILES = {"weights.bin": WEIGHTS, "config.json": b"{}", "sub/vocab.txt": b"a\nb"}


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("keys")
    generate_key_pair(directory / "team.pem", directory / "team.pub")
    generate_key_pair(directory / "other.pem", directory / "other.pub")
    generate_key_pair(directory / "locked.pem", directory / "locked.pub", password="s3cret-Pa55")
    return {p.name: p for p in directory.iterdir()}


def _saved(tmp_path: Path, settings: Settings, fmt: str, ref: str = "team/m:v1",
           files: dict[str, bytes] = FILES) -> str:
    api.save(make_model(tmp_path / f"src-{ref.replace('/', '-')}", files), ref, artifact_format=fmt,
             settings=settings)
    return f"localhost:5000/{ref}"


@pytest.mark.parametrize("fmt", ["ormb", "modelpack"])
def test_a_signature_lives_in_the_cache_as_a_referrer_not_as_a_model(tmp_path: Path, settings: Settings,
                                                                    key_files: dict[str, Path], fmt: str) -> None:
    ref = _saved(tmp_path, settings, fmt)
    signed = api.sign(ref, key_files["team.pem"], settings=settings)
    assert signed.fingerprint == load_public_key(key_files["team.pub"]).fingerprint and signed.files == 3
    cache = OCILayout(settings.cache_dir)
    (entry,) = cache.referrers(signed.digest)
    assert entry.digest == signed.signature and entry.artifact_type == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert [str(m.reference) for m in api.models(settings=settings)] == [ref]  # not listed as a model
    assert api.inspect(ref, settings=settings).digest == signed.digest
    verified = api.verify(ref, keys=key_files["team.pub"], settings=settings)
    assert (verified.fingerprint, verified.signature, verified.files) == (signed.fingerprint, signed.signature, 3)
    # a second signature (another key) sits beside the first; either key verifies
    api.sign(ref, key_files["other.pem"], settings=settings)
    assert len(cache.referrers(signed.digest)) == 2
    assert api.verify(ref, keys=key_files["other.pub"], settings=settings).files == 3


def test_prune_keeps_a_signature_while_its_model_is_named_and_drops_it_with_the_model(
        tmp_path: Path, settings: Settings, key_files: dict[str, Path]) -> None:
    ref = _saved(tmp_path, settings, "ormb")
    other = _saved(tmp_path, settings, "ormb", "team/other:v1", {"x.bin": b"x"})
    signed = api.sign(ref, key_files["team.pem"], settings=settings)
    api.sign(other, key_files["team.pem"], settings=settings)
    cache = OCILayout(settings.cache_dir)
    assert api.prune(settings=settings).blobs == 0
    api.verify(ref, keys=key_files["team.pub"], settings=settings)
    api.tag(ref, "team/m:again", settings=settings)
    api.remove(ref, settings=settings)
    layer = str(api.inspect("team/m:again", settings=settings).layers[0]["digest"])
    assert api.prune(settings=settings).blobs == 0  # still named (team/m:again): the signature stays
    assert cache.referrers(signed.digest)
    api.remove("team/m:again", settings=settings)
    assert api.prune(settings=settings).blobs == 5  # manifest, config, layer; the signature manifest and bundle
    assert not cache.referrers(signed.digest)
    index = json.loads((settings.cache_dir / "index.json").read_text())
    assert all(m["digest"] != signed.signature for m in index["manifests"])
    api.verify(other, keys=key_files["team.pub"], settings=settings)  # the other model's signature is untouched
    assert layer  # its record went with it:
    records = {p.name for p in (settings.cache_dir / ".files" / "sha256").iterdir()}
    assert records == {str(api.inspect(other, settings=settings).layers[0]["digest"])[7:] + ".tar+gzip.model.json"}


class _NoWeights(OCILayout):
    """The cache, refusing to open any blob larger than a metadata blob: proof that nothing big was read."""

    def fetch(self, desc: Descriptor) -> AbstractContextManager[Readable]:  # type: ignore[override]
        assert desc.size < 64 << 10, f"read {desc.digest} ({desc.size} bytes)"
        return super().fetch(desc)


@pytest.mark.parametrize("fmt", ["ormb", "modelpack"])
def test_signing_reads_no_weight_byte(tmp_path: Path, settings: Settings, key_files: dict[str, Path], fmt: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """ModelPack: the manifest has the digests.  The ormb format: the first signature reads the layer once (save
    does not hash each file a second time: that cost every save 35-40%) and records the digests; every later
    signature and verification reads no weight byte."""
    ref = _saved(tmp_path, settings, fmt)
    if fmt == "ormb":
        with pytest.raises(AssertionError, match="read sha256:"):  # no record yet: the layer is read
            with monkeypatch.context() as patched:
                patched.setattr(api, "open_cache", lambda s: _NoWeights(s.cache_dir))
                api.sign(ref, key_files["team.pem"], settings=settings)
        assert api.sign(ref, key_files["team.pem"], settings=settings).files == 3  # reads it, records the digests
    monkeypatch.setattr(api, "open_cache", lambda s: _NoWeights(s.cache_dir))
    assert api.sign(ref, key_files["team.pem"], settings=settings).files == 3
    assert api.verify(ref, keys=key_files["team.pub"], settings=settings).files == 3


def test_a_missing_or_damaged_file_record_is_recomputed_never_trusted(tmp_path: Path, settings: Settings,
                                                                      key_files: dict[str, Path]) -> None:
    ref = _saved(tmp_path, settings, "ormb")
    layer = str(api.inspect(ref, settings=settings).layers[0]["digest"])
    record = settings.cache_dir / ".files" / "sha256" / f"{layer[7:]}.tar+gzip.model.json"
    assert not record.exists()  # save records nothing: the first signature does
    api.sign(ref, key_files["team.pem"], settings=settings)
    good = json.loads(record.read_text())
    assert good["reading"] == "tar+gzip"
    for damage in ("not json", json.dumps({**good, "layer": "sha256:" + "0" * 64}),
                   json.dumps({**good, "prefix": ""}), json.dumps({**good, "reading": "tar"}),
                   json.dumps({**good, "files": [["../x", "0" * 64, 1]]})):
        record.write_text(damage)
        api.sign(ref, key_files["team.pem"], settings=settings)
        api.verify(ref, keys=key_files["team.pub"], settings=settings)
    assert json.loads(record.read_text()) == good  # read again from the layer, and recorded again
    record.unlink()
    assert api.verify(ref, keys=key_files["team.pub"], settings=settings).files == 3


def test_encrypted_keys_and_the_cli_never_show_the_password(tmp_path: Path, settings: Settings,
                                                            key_files: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    ref = _saved(tmp_path, settings, "modelpack")
    with pytest.raises(KeyFileError, match="encrypted and no password"):
        api.sign(ref, key_files["locked.pem"], settings=settings)
    with pytest.raises(KeyFileError, match="cannot decrypt") as wrong:
        api.sign(ref, key_files["locked.pem"], password="guess-Pa55", settings=settings)
    assert "guess" not in str(wrong.value)
    assert api.sign(ref, key_files["locked.pem"], password="s3cret-Pa55", settings=settings).files == 3
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-Pa55\n"))
    assert main(["sign", ref, "--key", str(key_files["locked.pem"]), "--key-password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("wrong-Pa55\n"))
    assert main(["sign", ref, "--key", str(key_files["locked.pem"]), "--key-password-stdin"]) == 2
    monkeypatch.setenv("ORMB_KEY_PASSWORD", "s3cret-Pa55")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["sign", ref, "--key", str(key_files["locked.pem"])]) == 0
    captured = capsys.readouterr()
    assert "Pa55" not in captured.out + captured.err
    assert captured.err.count("Error: ") == 1


def test_cli_usage_errors_are_one_line(tmp_path: Path, settings: Settings, key_files: dict[str, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    ref = _saved(tmp_path, settings, "ormb")
    assert main(["sign", ref]) == 2
    assert main(["verify", ref]) == 2  # no key
    assert main(["verify", ref, "--key", str(key_files["team.pub"])]) == 4  # not signed
    assert main(["sign", ref, "--key", str(key_files["team.pub"])]) == 2  # a public key cannot sign
    assert main(["key", "generate", str(key_files["team.pem"])]) == 2  # never over a key
    err = capsys.readouterr().err
    assert [line.split(":")[0] for line in err.strip().splitlines()] == ["Error"] * 5, err
    assert "not signed" in err and "holds a public key" in err and "does not overwrite" in err


def test_key_generate_makes_a_private_key_only_its_owner_reads(tmp_path: Path, ormb_home: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["key", "generate", str(tmp_path / "k.pem"), "--algorithm", "ecdsa-p384"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    assert load_public_key(tmp_path / "k.pub").fingerprint in out and "ecdsa-p384" in out
    monkeypatch.setattr("sys.stdin", io.StringIO("pw-Pa55\n"))
    assert main(["key", "generate", str(tmp_path / "e.pem"), "--password-stdin"]) == 0
    assert b"ENCRYPTED" in (tmp_path / "e.pem").read_bytes() and "pw-Pa55" not in capsys.readouterr().out


def test_the_environment_makes_export_verify(tmp_path: Path, settings: Settings, key_files: dict[str, Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ref = _saved(tmp_path, settings, "ormb")
    monkeypatch.setenv("ORMB_VERIFY_KEY", str(key_files["team.pub"]))
    configured = ormb.load_settings(settings.home)
    with pytest.raises(VerificationError, match="is not signed"):
        api.export(ref, tmp_path / "out", settings=configured)
    assert not (tmp_path / "out").exists()
    api.sign(ref, key_files["other.pem"], settings=settings)
    with pytest.raises(VerificationError, match="unknown key"):
        api.export(ref, tmp_path / "out", settings=configured)
    api.sign(ref, key_files["team.pem"], settings=settings)
    done = api.export(ref, tmp_path / "out", settings=configured, signature_file=tmp_path / "model.sig")
    assert done.verified_by == load_public_key(key_files["team.pub"]).fingerprint
    assert json.loads((tmp_path / "model.sig").read_text())["verificationMaterial"]["publicKey"]["hint"] == \
        done.verified_by
    monkeypatch.setenv("ORMB_TRUST_DIR", str(tmp_path / "missing"))
    with pytest.raises(KeyFileError, match="trust directory"):
        api.export(ref, tmp_path / "out2", settings=ormb.load_settings(settings.home))


def test_export_include_of_a_signed_modelpack_model(tmp_path: Path, settings: Settings,
                                                    key_files: dict[str, Path]) -> None:
    ref = _saved(tmp_path, settings, "modelpack")
    api.sign(ref, key_files["team.pem"], settings=settings)
    part = api.export(ref, tmp_path / "part", include=("*.txt",), verify_key=key_files["team.pub"], settings=settings)
    assert part.files == ("sub/vocab.txt",) and part.verified_by


def test_attach_refuses_what_is_not_a_signature_of_this_model(tmp_path: Path, settings: Settings,
                                                              key_files: dict[str, Path]) -> None:
    ref = _saved(tmp_path, settings, "ormb")
    with pytest.raises(UsageError):
        api.sign(ref, key_files["team.pem"], attach=tmp_path / "x", settings=settings)
    (tmp_path / "garbage.sig").write_bytes(b"{}")
    with pytest.raises(VerificationError, match="malformed"):
        api.sign(ref, attach=tmp_path / "garbage.sig", settings=settings)
    other = _saved(tmp_path, settings, "ormb", "team/other:v1", {"x.bin": b"x"})
    api.sign(other, key_files["team.pem"], settings=settings)
    api.export(other, tmp_path / "o", verify_key=key_files["team.pub"], signature_file=tmp_path / "other.sig",
               settings=settings)
    with pytest.raises(VerificationError, match=r"was not made over .*'config.json' is in the model"):
        api.sign(ref, attach=tmp_path / "other.sig", settings=settings)
    assert not OCILayout(settings.cache_dir).referrers(api.inspect(ref, settings=settings).digest)


class _Lister(MemoryStore):
    """A source that lists whatever it is told to (a registry that lies about referrers), counting fetches."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: list[Descriptor] = []
        self.fetched: list[str] = []

    def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        return list(self.listed)

    def fetch(self, desc: Descriptor) -> Iterator[Readable]:  # type: ignore[override]
        self.fetched.append(desc.digest)
        return super().fetch(desc)


def _model(store: MemoryStore, files: dict[str, bytes]) -> tuple[Descriptor, Manifest]:
    config = b"{}"
    config_desc = Descriptor.of_bytes(modelpack.CONFIG, config)
    push_bytes(store, config_desc, config)
    layers = []
    for path, data in files.items():
        layer = Descriptor.of_bytes(modelpack.layer_type("weight"), data, {modelpack.ANNOTATION_FILEPATH: path})
        push_bytes(store, layer, data)
        layers.append(layer)
    manifest = Manifest(config_desc, tuple(layers), artifact_type=modelpack.ARTIFACT_TYPE)
    desc = Descriptor.of_bytes(mediatypes.OCI_MANIFEST, manifest.to_bytes())
    push_bytes(store, desc, manifest.to_bytes())
    return desc, manifest


def test_copy_referrers_leaves_out_what_refers_to_another_model(key_files: dict[str, Path]) -> None:
    """A registry lists, among a model's referrers, one whose subject is a huge other artifact:
    copying referrers must not follow it there."""
    src, dst = _Lister(), MemoryStore()
    model, _ = _model(src, {"w.bin": b"w"})
    huge, _ = _model(src, {"huge.bin": os.urandom(100_000)})
    for desc, data in [(model, fetch_bytes(src, model))]:
        push_bytes(dst, desc, data)
    bundle = json.dumps({"not": "checked here"}).encode()
    good, bad = signature_artifact(model, bundle), signature_artifact(huge, bundle)
    for artifact in (good, bad):
        for desc, data in (artifact.config, artifact.bundle, (artifact.descriptor, artifact.manifest_bytes)):
            push_bytes(src, desc, data)
    src.listed = [bad.descriptor, good.descriptor]
    copied = copy_referrers(src, dst, model.digest)
    assert [d.digest for d in copied] == [good.descriptor.digest]
    assert huge.digest not in src.fetched and not any(d in dst.blobs for d in (bad.descriptor.digest, huge.digest))


def test_catalog_status(tmp_path: Path, key_files: dict[str, Path]) -> None:
    from ormb.signing import load_private_key, manifest_files, sign_files

    store = MemoryStore()
    desc, manifest = _model(store, {"w.bin": WEIGHTS, "c.json": b"{}"})
    team, other = load_public_key(key_files["team.pub"]), load_public_key(key_files["other.pub"])
    files = manifest_files(manifest)
    assert files is not None
    assert catalog_status(store, desc, manifest, [], [team]) == (None, "the model is not signed: no signature is "
                                                                       f"attached to its manifest {desc.digest[:19]}")
    assert catalog_status(store, desc, manifest, [], []) == (None, "no trusted keys are configured")
    artifact = signature_artifact(desc, sign_files(files, load_private_key(key_files["team.pem"])))
    for blob, data in (artifact.config, artifact.bundle, (artifact.descriptor, artifact.manifest_bytes)):
        push_bytes(store, blob, data)
    assert catalog_status(store, desc, manifest, [artifact.descriptor], [team]) == (team.fingerprint, "")
    fingerprint, problem = catalog_status(store, desc, manifest, [artifact.descriptor], [other])
    assert fingerprint is None and "unknown key" in problem
    grown, grown_manifest = _model(store, {"w.bin": WEIGHTS, "c.json": b"{}", "evil.pkl": b"x"})
    moved = signature_artifact(grown, artifact.bundle[1])
    for blob, data in (moved.config, moved.bundle, (moved.descriptor, moved.manifest_bytes)):
        push_bytes(store, blob, data)
    fingerprint, problem = catalog_status(store, grown, grown_manifest, [moved.descriptor], [team])
    assert fingerprint is None and "'evil.pkl' is in the model but not in its signature" in problem
    # a referrer listed for this model whose subject is another: refused, not mistaken for this model's
    fingerprint, problem = catalog_status(store, grown, grown_manifest, [artifact.descriptor], [team])
    assert fingerprint is None and "subject is not this model" in problem


def test_catalog_status_of_the_ormb_format_reads_the_layer_only_when_asked(tmp_path: Path, settings: Settings,
                                                                          key_files: dict[str, Path]) -> None:
    ref = _saved(tmp_path, settings, "ormb")
    signed = api.sign(ref, key_files["team.pem"], settings=settings)
    cache = OCILayout(settings.cache_dir)
    desc = cache.resolve(ref)
    manifest = Manifest.from_bytes(fetch_bytes(cache, desc))
    team = load_public_key(key_files["team.pub"])
    fingerprint, problem = catalog_status(cache, desc, manifest, cache.referrers(desc.digest), [team])
    assert fingerprint is None and problem.startswith(f"signed by key {signed.fingerprint[:16]}, but its files")
    assert catalog_status(cache, desc, manifest, cache.referrers(desc.digest), [team], read_layers=True) == \
        (signed.fingerprint, "")


def test_copy_says_it_does_not_verify(capsys: pytest.CaptureFixture[str]) -> None:
    """ORMB_VERIFY_KEY set, `ormb copy REG/x oci:DIR` wrote an unsigned model without a check and nothing
    said that copy never verifies (review 2, B3).  Decision: copy moves bytes (digest-checked) and does not
    verify; its help, the README and docs/security.md say so and point to where verification happens."""
    assert main(["copy", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "copy does not verify signatures (ORMB_VERIFY_KEY and ORMB_TRUST_DIR do not apply)" in text
    assert "--verify-key" not in text.split("Options:")[1]  # no option that would look like a check
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "**`copy` does not verify signatures**" in readme
