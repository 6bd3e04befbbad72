"""The signing core (ormb.signing): keys, the model-signing bundle, checking files, the referrer shape.

No network and no model_signing here; tests/integration/test_model_signing_interop.py checks the
bundles against the real ``model_signing`` CLI.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import assume, given
from hypothesis import strategies as st

from conftest import make_model
from ormb.config import TRUST_DIR_ENV, VERIFY_KEY_ENV, verification_environment
from ormb.content.memory import MemoryStore
from ormb.content.target import fetch_bytes
from ormb.errors import (
    IntegrityError,
    InvalidArtifactError,
    KeyFileError,
    UnsafeArchiveError,
    UsageError,
    VerificationError,
)
from ormb.model import modelpack, ormbformat
from ormb.model.files import list_model_files
from ormb.model.ormbfile import Metadata
from ormb.oci import graph, mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.signing import (
    ALGORITHMS,
    GIT_PATHS,
    PASSWORD_ENV,
    PrivateKey,
    PublicKey,
    SignedFile,
    bundle_layer,
    check_files,
    export_ignore_paths,
    generate_key_pair,
    is_signature,
    load_private_key,
    load_public_key,
    load_trust_dir,
    manifest_files,
    sign_files,
    signature_artifact,
    tar_layer_files,
    trusted_keys,
    verification_keys,
    verify_bundle,
)
from ormb.signing.bundle import BUNDLE_MEDIA_TYPE, is_ignored, pae, sort_key
from ormb.signing.keys import fingerprint

KEY_TYPES: dict[str, Callable[[], Any]] = {
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ecdsa-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ecdsa-p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}


def write_key_pair(directory: Path, name: str, kind: str = "ecdsa-p256", password: bytes | None = None,
                   fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> tuple[Path, Path]:
    """KEY.pem and KEY.pub in ``directory``, as openssl would write them."""
    directory.mkdir(parents=True, exist_ok=True)
    key = KEY_TYPES[kind]()
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    private, public = directory / f"{name}.pem", directory / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, encryption))
    private.chmod(0o600)  # as openssl genpkey leaves it (umask 077) and ssh-keygen does
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[PrivateKey, PublicKey]]:
    """One key pair of every supported type, loaded."""
    directory = tmp_path_factory.mktemp("keys")
    out = {}
    for kind in KEY_TYPES:
        private, public = write_key_pair(directory, kind, kind)
        out[kind] = (load_private_key(private), load_public_key(public))
    return out


@pytest.fixture(scope="module")
def p256(keys: dict[str, tuple[PrivateKey, PublicKey]]) -> tuple[PrivateKey, PublicKey]:
    return keys["ecdsa-p256"]


# one key for the generated tests (a fixture would be shared across examples anyway)
_PROPERTY_KEY = (lambda k: (PrivateKey(k, PublicKey.of(k.public_key(), "p")), PublicKey.of(k.public_key(), "p")))(
    ec.generate_private_key(ec.SECP256R1()))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FILES = [("weights.safetensors", sha(b"w")), ("config.json", sha(b"{}")), ("sub/tokenizer.json", sha(b"t"))]


def payload_of(bundle: bytes) -> dict[str, Any]:
    return json.loads(base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"]))  # type: ignore[no-any-return]


def resign(bundle: bytes, key: PrivateKey, change: Callable[[dict[str, Any]], None]) -> bytes:
    """The bundle with its statement changed by ``change`` and signed again by ``key``: a *valid*
    signature over a statement ormb must still refuse."""
    raw = json.loads(bundle)
    statement = payload_of(bundle)
    change(statement)
    payload = json.dumps(statement).encode()
    raw["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    raw["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(key.sign(pae(payload))).decode()
    return json.dumps(raw).encode()


# -- keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KEY_TYPES))
def test_round_trip_for_each_key_type(kind: str, keys: dict[str, tuple[PrivateKey, PublicKey]]) -> None:
    private, public = keys[kind]
    assert private.public.algorithm == public.algorithm == kind
    assert private.public.fingerprint == public.fingerprint
    signed = verify_bundle(sign_files(FILES, private), [public])
    assert signed.key == public
    assert dict(signed.files) == dict(FILES)
    check_files(signed, dict(FILES))


def test_fingerprint_is_the_bundle_hint_and_the_sha256_of_the_pem_file(tmp_path: Path) -> None:
    private_path, public_path = write_key_pair(tmp_path, "k")
    key = load_private_key(private_path)
    assert key.public.fingerprint == sha(public_path.read_bytes()) == fingerprint(key.key.public_key())
    assert json.loads(sign_files(FILES, key))["verificationMaterial"]["publicKey"]["hint"] == key.public.fingerprint


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL])
def test_encrypted_keys_take_the_password_from_the_argument_or_the_environment(
        tmp_path: Path, fmt: serialization.PrivateFormat, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cret-Pässword"
    private, public = write_key_pair(tmp_path, "k", password=secret.encode(), fmt=fmt)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    assert load_private_key(private, secret).public == load_public_key(public)
    with pytest.raises(KeyFileError, match="encrypted and no password") as missing:
        load_private_key(private)
    assert PASSWORD_ENV in str(missing.value)
    with pytest.raises(KeyFileError, match="wrong password") as wrong:
        load_private_key(private, "not-" + secret)
    assert secret not in str(wrong.value) and "not-" not in str(wrong.value)
    monkeypatch.setenv(PASSWORD_ENV, secret)
    assert load_private_key(private).public == load_public_key(public)
    assert load_private_key(private, environ={PASSWORD_ENV: secret}).public.fingerprint


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_generated_key_pairs_are_private_never_overwrite_and_verify(tmp_path: Path, algorithm: str) -> None:
    private = generate_key_pair(tmp_path / "k.pem", tmp_path / "k.pub", algorithm, password="pw")
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "k.pem").read_bytes()
    loaded, public = load_private_key(tmp_path / "k.pem", "pw"), load_public_key(tmp_path / "k.pub")
    assert loaded.public == public == private.public and public.algorithm == algorithm
    assert verify_bundle(sign_files(FILES, loaded), [public]).key == public
    (tmp_path / "k.pem").write_bytes(b"keep me")
    with pytest.raises(KeyFileError, match="exists"):
        generate_key_pair(tmp_path / "k.pem", tmp_path / "other.pub", algorithm)
    assert (tmp_path / "k.pem").read_bytes() == b"keep me"


def test_generate_key_pair_refuses_unknown_algorithms_and_links(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="unknown key algorithm 'rsa'"):
        generate_key_pair(tmp_path / "k.pem", tmp_path / "k.pub", "rsa")
    (tmp_path / "elsewhere").write_bytes(b"")
    (tmp_path / "link.pem").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(KeyFileError, match="exists"):
        generate_key_pair(tmp_path / "link.pem", tmp_path / "k.pub")
    assert (tmp_path / "elsewhere").read_bytes() == b""
    unencrypted = generate_key_pair(tmp_path / "plain.pem", tmp_path / "plain.pub")
    assert b"ENCRYPTED" not in (tmp_path / "plain.pem").read_bytes()
    assert load_private_key(tmp_path / "plain.pem").public == unencrypted.public


def test_unusable_key_files_get_one_line_errors(tmp_path: Path) -> None:
    private, public = write_key_pair(tmp_path, "k")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "rsa.pem").write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    k1 = ec.generate_private_key(ec.SECP256K1())
    (tmp_path / "k1.pem").write_bytes(k1.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    (tmp_path / "text").write_text("hello")
    (tmp_path / "huge.pem").write_bytes(b"-----BEGIN " + b"A" * (1 << 20))
    for name in ("rsa.pem", "k1.pem", "junk.pem", "text", "huge.pem"):
        (tmp_path / name).chmod(0o600)
    # one rule for every key file (the review found it applied unevenly, and a second PEM block ignored)
    open_key = tmp_path / "open.pem"
    open_key.write_bytes(private.read_bytes())
    open_key.chmod(0o640)
    second = write_key_pair(tmp_path / "second", "s")[1]
    (tmp_path / "two.pub").write_bytes(public.read_bytes() + second.read_bytes())
    (tmp_path / "two.pem").write_bytes(private.read_bytes() + private.read_bytes())
    (tmp_path / "two.pem").chmod(0o600)
    writable = tmp_path / "writable.pub"
    writable.write_bytes(public.read_bytes())
    writable.chmod(0o666)
    cases: list[tuple[Callable[[Path], object], Path, str]] = [
        (load_private_key, open_key, "accessible to other users \\(mode 0640\\)"),
        (load_private_key, tmp_path / "two.pem", "holds 2 PEM blocks"),
        (load_public_key, tmp_path / "two.pub", "holds 2 PEM blocks"),
        (load_public_key, writable, "writable by every local user"),
        (lambda p: trusted_keys([p]), writable, "writable by every local user"),
        (load_public_key, tmp_path, "not a regular file"),
        (load_private_key, tmp_path / "rsa.pem", "RSAPrivateKey"),
        (load_private_key, tmp_path / "k1.pem", "secp256k1"),
        (load_private_key, public, "holds a public key"),
        (load_private_key, tmp_path / "junk.pem", "not a PEM private key"),
        (load_private_key, tmp_path / "text", "not a PEM key"),
        (load_private_key, tmp_path / "huge.pem", "larger than"),
        (load_private_key, tmp_path / "missing.pem", "cannot read"),
        (load_public_key, private, "holds a private key"),
        (load_public_key, tmp_path / "junk.pem", "holds a private key"),
        (load_public_key, tmp_path / "text", "not a PEM key"),
    ]
    for loader, path, message in cases:
        with pytest.raises(KeyFileError, match=message) as err:
            loader(path)
        assert "\n" not in str(err.value) and err.value.exit_code == 2


def test_key_files_another_local_user_could_replace_are_refused(tmp_path: Path) -> None:
    """One rule for every key file and trust directory, as ssh's StrictModes: the file (after its symbolic
    links) and each directory above it are owned by this user or root and not group- or world-writable; a
    directory above may be world-writable with the sticky bit (like /tmp).  The old loader checked only the
    file's own world-write bit, so a key in a shared 0777 directory, a group-writable one, another user's,
    or a trust directory's link into a shared directory were all trusted."""
    private, public = write_key_pair(tmp_path / "mine", "k")
    for path in (tmp_path, tmp_path / "mine"):
        path.chmod(0o755)
    public.chmod(0o644)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone may rename or replace a file in it
    (shared / "k.pub").write_bytes(public.read_bytes())
    (shared / "k.pub").chmod(0o644)
    (shared / "k.pem").write_bytes(private.read_bytes())
    (shared / "k.pem").chmod(0o600)
    group = tmp_path / "mine" / "group.pub"
    group.write_bytes(public.read_bytes())
    group.chmod(0o664)
    links = tmp_path / "links"
    links.mkdir(mode=0o755)
    (links / "k.pub").symlink_to(shared / "k.pub")
    cases: list[tuple[Callable[[Path], object], Path, str]] = [
        (load_public_key, shared / "k.pub", f"the directory {shared} above the public key .* is writable by every "
                                            "local user \\(mode 0777\\)"),
        (load_private_key, shared / "k.pem", f"the directory {shared} above"),
        (load_public_key, group, "is writable by its group \\(mode 0664\\)"),
        (load_trust_dir, links, f"-> {shared}/k.pub\\)"),
        (lambda p: trusted_keys([p]), links / "k.pub", f"the directory {shared} above"),
    ]
    if os.geteuid() == 0:  # a file and a directory of another user's (CI runs as root; others cannot chown)
        theirs = tmp_path / "mine" / "theirs.pub"
        theirs.write_bytes(public.read_bytes())
        os.chown(theirs, 65534, 65534)
        cases.append((load_public_key, theirs, "belongs to another user \\(uid 65534\\)"))
        other_dir = tmp_path / "other"
        other_dir.mkdir(mode=0o755)
        (other_dir / "k.pub").write_bytes(public.read_bytes())
        os.chown(other_dir, 65534, 65534)
        cases.append((load_public_key, other_dir / "k.pub", f"the directory {other_dir} above .* belongs to another "
                                                            "user \\(uid 65534\\)"))
        cases.append((load_trust_dir, other_dir, "belongs to another user"))
    for loader, path, message in cases:
        with pytest.raises(KeyFileError, match=message) as err:
            loader(path)
        assert "\n" not in str(err.value) and err.value.exit_code == 2
        assert "chmod" in (err.value.hint or "") or "chown" in (err.value.hint or "") or \
            "directory" in (err.value.hint or ""), err.value.hint
    shared.chmod(0o1777)  # sticky, like /tmp: only the file's owner may replace it
    mine = load_public_key(public).fingerprint
    assert load_public_key(shared / "k.pub").fingerprint == mine
    assert load_private_key(shared / "k.pem").public.fingerprint == mine
    assert [k.fingerprint for k in load_trust_dir(links)] == [mine]


def test_trust_dir_holds_exactly_the_public_keys_anyone_of_which_may_verify(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    write_key_pair(tmp_path / "a", "a")
    private_b, public_b = write_key_pair(tmp_path / "b", "b")
    private_c, _ = write_key_pair(tmp_path / "c", "c", "ed25519")
    trust.mkdir()
    (trust / "a.pub").write_bytes((tmp_path / "a" / "a.pub").read_bytes())
    (trust / "b.pem").write_bytes(public_b.read_bytes())
    (trust / "b-again.pub").write_bytes(public_b.read_bytes())  # the same key twice counts once
    (trust / "README.txt").write_text("not a key, not looked at")
    os.chmod(trust, 0o755)
    for path in trust.iterdir():
        os.chmod(path, 0o644)
    trusted = load_trust_dir(trust)
    assert len(trusted) == 2
    assert verify_bundle(sign_files(FILES, load_private_key(private_b)), trusted).key.fingerprint == \
        load_public_key(public_b).fingerprint
    with pytest.raises(VerificationError, match="unknown key"):
        verify_bundle(sign_files(FILES, load_private_key(private_c)), trusted)
    assert len(trusted_keys([tmp_path / "c" / "c.pub"], trust)) == 3

    os.chmod(trust / "a.pub", 0o646)
    with pytest.raises(KeyFileError, match="writable by every local user"):
        load_trust_dir(trust)
    os.chmod(trust / "a.pub", 0o644)
    os.chmod(trust, 0o757)
    with pytest.raises(KeyFileError, match="writable by every local user"):
        load_trust_dir(trust)
    os.chmod(trust, 0o755)
    (trust / "private.pem").write_bytes(private_c.read_bytes())
    with pytest.raises(KeyFileError, match="holds a private key"):
        load_trust_dir(trust)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KeyFileError, match="holds no public key"):
        load_trust_dir(empty)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_trust_dir(tmp_path / "nowhere")
    with pytest.raises(KeyFileError, match="no public key"):
        trusted_keys()


# -- the bundle ----------------------------------------------------------------------------------


def test_bundle_has_model_signings_shape(p256: tuple[PrivateKey, PublicKey]) -> None:
    private, _ = p256
    for git_file in (".gitattributes", ".git/config"):  # a signature leaves them out: such a model is not signed
        with pytest.raises(InvalidArtifactError, match=f"the model holds '{re.escape(git_file)}'"):
            sign_files(FILES + [(git_file, sha(b"g"))], private)
    bundle = json.loads(sign_files(FILES, private, name="tiny"))
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert bundle["verificationMaterial"] == {"publicKey": {"hint": private.public.fingerprint}, "tlogEntries": []}
    envelope = bundle["dsseEnvelope"]
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert len(envelope["signatures"]) == 1 and envelope["signatures"][0]["keyid"] == ""
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    assert statement["predicate"]["serialization"] == {
        "method": "files", "hash_type": "sha256", "allow_symlinks": False, "ignore_paths": sorted(GIT_PATHS)}
    resources = statement["predicate"]["resources"]
    assert [r["name"] for r in resources] == ["config.json", "sub/tokenizer.json", "weights.safetensors"]
    assert all(r["algorithm"] == "sha256" for r in resources)
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    assert statement["subject"] == [{"name": "tiny", "digest": {"sha256": root}}]


def test_digests_may_be_given_as_oci_digests_and_sizes_are_not_signed(p256: tuple[PrivateKey, PublicKey]) -> None:
    private, public = p256
    given_as_oci = [SignedFile(p, f"sha256:{d}", 7) for p, d in FILES]
    assert verify_bundle(sign_files(given_as_oci, private), [public]).files == dict(FILES)
    assert payload_of(sign_files(given_as_oci, private)) == payload_of(sign_files(FILES, private))


@pytest.mark.parametrize("files, message", [
    ([("/etc/passwd", sha(b""))], "absolute"),
    ([("a/../b", sha(b""))], "not canonical"),
    ([("a//b", sha(b""))], "not canonical"),
    ([("./a", sha(b""))], "not canonical"),
    ([("a/", sha(b""))], "not canonical"),
    ([("", sha(b""))], "empty"),
    ([("a\x00b", sha(b""))], "NUL"),
    ([("caf\udce9", sha(b""))], "not valid Unicode"),
    ([("a", sha(b"")), ("a", sha(b"x"))], "listed twice"),
    ([("a", "sha512:" + "0" * 128)], "no SHA-256"),
    ([("a", "0" * 63)], "no SHA-256"),
    ([("a", "A" * 64)], "no SHA-256"),
])
def test_sign_files_refuses_what_no_directory_can_hold(files: list[tuple[str, str]], message: str,
                                                       p256: tuple[PrivateKey, PublicKey]) -> None:
    with pytest.raises(InvalidArtifactError, match=message):
        sign_files(files, p256[0])


def test_tampered_payload_or_signature_is_refused(p256: tuple[PrivateKey, PublicKey]) -> None:
    private, public = p256
    bundle = json.loads(sign_files(FILES, private))
    statement = payload_of(sign_files(FILES, private))
    statement["predicate"]["resources"][0]["digest"] = sha(b"evil")
    forged = dict(bundle, dsseEnvelope=dict(bundle["dsseEnvelope"],
                                            payload=base64.b64encode(json.dumps(statement).encode()).decode()))
    with pytest.raises(VerificationError, match="does not match what it signs") as err:
        verify_bundle(json.dumps(forged).encode(), [public])
    assert err.value.exit_code == 4 and "\n" not in str(err.value)
    sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 1
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(VerificationError, match="does not match what it signs"):
        verify_bundle(json.dumps(bundle).encode(), [public])


def test_a_signature_by_another_key_is_refused(keys: dict[str, tuple[PrivateKey, PublicKey]]) -> None:
    mine, theirs = keys["ecdsa-p256"], keys["ecdsa-p384"]
    bundle = sign_files(FILES, theirs[0])
    with pytest.raises(VerificationError, match=f"unknown key \\(fingerprint {theirs[1].fingerprint[:16]}\\)"):
        verify_bundle(bundle, [mine[1], keys["ed25519"][1]])
    # A hint that names a trusted key does not make another key's signature good.
    raw = json.loads(bundle)
    raw["verificationMaterial"]["publicKey"]["hint"] = mine[1].fingerprint
    with pytest.raises(VerificationError, match="does not match what it signs"):
        verify_bundle(json.dumps(raw).encode(), [mine[1]])
    # Without a hint (older model_signing bundles), every trusted key is tried.
    del raw["verificationMaterial"]["publicKey"]["hint"]
    with pytest.raises(VerificationError, match="none of the 2 trusted key"):
        verify_bundle(json.dumps(raw).encode(), [mine[1], keys["ed25519"][1]])
    assert verify_bundle(json.dumps(raw).encode(), [mine[1], theirs[1]]).key == theirs[1]
    with pytest.raises(VerificationError, match="no public key"):
        verify_bundle(bundle, [])


@pytest.mark.parametrize("change, message", [
    (lambda b: b.update(mediaType="application/vnd.dev.sigstore.bundle+json;version=0.1"), "mediaType"),
    (lambda b: b["verificationMaterial"].pop("publicKey"), "not a key signature"),
    (lambda b: b["verificationMaterial"].update(publicKey=None, certificate={"rawBytes": "AA=="}), "malformed"),
    (lambda b: b["verificationMaterial"].__setitem__("publicKey", {"hint": "zz"}), "not a key fingerprint"),
    (lambda b: b.update(messageSignature={}), "single message"),
    (lambda b: b.pop("dsseEnvelope"), "dsseEnvelope is not a JSON object"),
    (lambda b: b["dsseEnvelope"].update(payloadType="text/plain"), "payloadType"),
    (lambda b: b["dsseEnvelope"]["signatures"].append(b["dsseEnvelope"]["signatures"][0]), "exactly one signature"),
    (lambda b: b["dsseEnvelope"].update(signatures=[]), "exactly one signature"),
    (lambda b: b["dsseEnvelope"].update(payload="not base64!"), "not base64"),
    (lambda b: b["dsseEnvelope"]["signatures"][0].update(sig=5), "not a string"),
])
def test_malformed_bundles_are_refused(change: Callable[[dict[str, Any]], object], message: str,
                                       p256: tuple[PrivateKey, PublicKey]) -> None:
    raw = json.loads(sign_files(FILES, p256[0]))
    change(raw)
    with pytest.raises(VerificationError, match=message) as err:
        verify_bundle(json.dumps(raw).encode(), [p256[1]])
    assert err.value.exit_code == 4 and "\n" not in str(err.value)


def test_a_bundle_signed_with_a_certificate_is_not_taken_for_a_key_signature(p256: tuple[PrivateKey, PublicKey]) -> None:
    raw = json.loads(sign_files(FILES, p256[0]))
    raw["verificationMaterial"] = {"certificate": {"rawBytes": "AA=="}, "tlogEntries": []}
    with pytest.raises(VerificationError, match="not a key signature .*certificate"):
        verify_bundle(json.dumps(raw).encode(), [p256[1]])


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(statement: dict[str, Any]) -> None:
        node = statement
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_set(["predicateType"], "https://model_signing/Digests/v0.1"), "before 1.0"),
    (_set(["predicateType"], "https://slsa.dev/provenance/v1"), "predicateType"),
    (_set(["_type"], "https://in-toto.io/Statement/v0.1"), "in-toto"),
    (_set(["predicate", "serialization", "method"], "shards"), "'shards' serialization"),
    (_set(["predicate", "serialization", "hash_type"], "blake2"), "hash 'blake2'"),
    (_set(["predicate", "serialization", "ignore_paths"], ["../x"]), "ignored path"),
    (_set(["predicate", "serialization", "ignore_paths"], ["."]), "ignored path"),
    (_set(["predicate", "serialization", "ignore_paths"], "abc"), "not a list"),
    (_set(["predicate", "resources", 0, "name"], "../../etc/passwd"), "not canonical"),
    (_set(["predicate", "resources", 0, "name"], "/abs"), "absolute"),
    (_set(["predicate", "resources", 0, "name"], "a//b"), "not canonical"),
    (_set(["predicate", "resources", 1, "name"], "config.json"), "listed twice"),
    (_set(["predicate", "resources", 0, "algorithm"], "blake3"), "no SHA-256"),
    (_set(["predicate", "resources", 0, "digest"], "F" * 64), "no SHA-256"),
    (_set(["predicate", "resources", 0, "digest"], sha(b"other")), "subject digest"),
    (_set(["predicate", "resources"], {}), "not a list"),
    (_set(["subject"], []), "exactly one subject"),
    (_set(["subject", 0, "digest"], {"sha512": "00"}), "no SHA-256"),
])
def test_validly_signed_statements_that_are_not_a_model_signature_are_refused(
        change: Callable[[dict[str, Any]], None], message: str, p256: tuple[PrivateKey, PublicKey]) -> None:
    """A trusted key's signature does not make a statement ormb cannot check acceptable."""
    private, public = p256
    bundle = resign(sign_files(FILES, private), private, change)
    with pytest.raises(VerificationError, match=message) as err:
        verify_bundle(bundle, [public])
    assert "\n" not in str(err.value)


@given(data=st.one_of(st.binary(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["mediaType", "verificationMaterial", "dsseEnvelope", "publicKey", "hint", "payload",
                         "payloadType", "signatures", "sig", "tlogEntries", "x"]), children, max_size=5),
    max_leaves=20).map(lambda v: json.dumps(v).encode())))
def test_property_any_garbage_is_a_verification_error(data: bytes) -> None:
    key = KEY_TYPES["ecdsa-p256"]().public_key()
    try:
        verify_bundle(data, [PublicKey.of(key, "k")])
    except VerificationError as err:
        assert "\n" not in str(err) and err.exit_code == 4
    else:
        raise AssertionError("garbage verified")


@given(payload=st.binary(max_size=300), sig=st.binary(max_size=150), hint=st.booleans())
def test_property_well_shaped_envelopes_with_any_payload_and_signature_are_refused(
        payload: bytes, sig: bytes, hint: bool) -> None:
    _, public = _PROPERTY_KEY
    material: dict[str, Any] = {"publicKey": {"hint": public.fingerprint} if hint else {}, "tlogEntries": []}
    bundle = {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial": material,
              "dsseEnvelope": {"payload": base64.b64encode(payload).decode(), "payloadType": "application/vnd.in-toto+json",
                               "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}]}}
    with pytest.raises(VerificationError, match="does not match what it signs|none of the 1 trusted"):
        verify_bundle(json.dumps(bundle).encode(), [public])


# -- checking the model's files ------------------------------------------------------------------


def test_check_files_names_the_first_difference(p256: tuple[PrivateKey, PublicKey]) -> None:
    private, public = p256
    signed = verify_bundle(sign_files(FILES, private), [public])
    actual = dict(FILES)
    cases: list[tuple[dict[str, str], str]] = [
        ({k: v for k, v in actual.items() if k != "config.json"}, "'config.json' is signed but missing"),
        ({**actual, "evil.pkl": sha(b"x")}, "'evil.pkl' is in the model but not in its signature"),
        ({**actual, "sub/tokenizer.json": sha(b"x")}, "'sub/tokenizer.json' differs from the signed file"),
        ({**actual, "a.pkl": sha(b"x"), "config.json": sha(b"y")}, "'a.pkl' is in the model.*; 1 more difference"),
        ({}, "'config.json' is signed but missing.*; 2 more"),
    ]
    for files, message in cases:
        with pytest.raises(VerificationError, match=message) as err:
            check_files(signed, files)
        assert err.value.exit_code == 4 and "\n" not in str(err.value)
    oci_digests = {p: f"sha256:{d}" for p, d in FILES}
    check_files(signed, oci_digests)
    # a file under the signature's ignore paths is not signed, so it is refused like any other unsigned
    # file (model_signing would skip it; an unsigned .git/config runs code on 'git status')
    for path in (".git/HEAD", ".git/config", ".gitattributes", ".github/workflows/ci.yml", ".gitignore"):
        with pytest.raises(VerificationError, match=f"'{re.escape(path)}' is in the model but not in its "
                                                    "signature \\(a path model signatures leave out"):
            check_files(signed, {**actual, path: sha(b"g")})
    with pytest.raises(VerificationError, match="'sub/.gitignore' is in the model but not in its signature \\(it"):
        check_files(signed, {**actual, "sub/.gitignore": sha(b"i")})


def test_ignored_paths_cover_their_subtree_only() -> None:
    assert is_ignored(".git", GIT_PATHS) and is_ignored(".git/objects/ab", GIT_PATHS)
    assert not is_ignored(".gitfoo", GIT_PATHS) and not is_ignored("sub/.git", GIT_PATHS)
    assert not is_ignored("x", ())


path_component = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=12,
).filter(lambda s: s not in (".", ".."))
model_paths = st.lists(st.lists(path_component, min_size=1, max_size=4).map("/".join), max_size=40, unique=True)


@given(paths=model_paths, data=st.data())
def test_property_round_trip_and_every_single_change_is_caught(paths: list[str], data: st.DataObject) -> None:
    private, public = _PROPERTY_KEY
    files = {p: sha(p.encode()) for p in paths}
    bundle = sign_files(files.items(), private, ignore_paths=())
    signed = verify_bundle(bundle, [public])
    assert signed.files == files
    # model_signing's order: PurePosixPath order, which is by components, not by string
    assert list(signed.files) == [str(p) for p in sorted(map(PurePosixPath, paths))] == sorted(paths, key=sort_key)
    check_files(signed, files)
    if paths:
        victim = data.draw(st.sampled_from(paths))
        with pytest.raises(VerificationError, match="missing"):
            check_files(signed, {p: d for p, d in files.items() if p != victim})
        with pytest.raises(VerificationError, match="differs"):
            check_files(signed, {**files, victim: sha(b"changed " + victim.encode())})
    extra = data.draw(st.lists(path_component, min_size=1, max_size=3).map("/".join))
    assume(extra not in files)
    with pytest.raises(VerificationError, match="not in its signature"):
        check_files(signed, {**files, extra: sha(b"")})


def test_many_files_and_the_empty_model(p256: tuple[PrivateKey, PublicKey]) -> None:
    private, public = p256
    many = {f"shard-{i:05d}.safetensors": sha(str(i).encode()) for i in range(20_000)}
    signed = verify_bundle(sign_files(many.items(), private), [public])
    assert signed.files == many
    empty = verify_bundle(sign_files([], private), [public])
    assert empty.files == {} and empty.root_digest == "sha256:" + sha(b"")
    with pytest.raises(VerificationError, match="'a' is in the model"):
        check_files(empty, {"a": sha(b"")})


# -- referrers and the files of a manifest ----------------------------------------------------------


def _modelpack(tmp_path: Path, files: dict[str, bytes]) -> tuple[MemoryStore, Descriptor, Manifest]:
    src = make_model(tmp_path / "src", files)
    store = MemoryStore()
    packed = modelpack.pack(list_model_files(src / "model", include_hidden=True), Metadata(format="Others"), store, name="m")
    return store, packed.manifest, Manifest.from_bytes(fetch_bytes(store, packed.manifest))


MODEL = {"model.safetensors": os.urandom(3000), "config.json": b"{}", "sub/vocab.txt": b"a\nb", "README.md": b"# m"}


def test_signature_referrer_follows_the_cosign_bundle_spec(tmp_path: Path, p256: tuple[PrivateKey, PublicKey]) -> None:
    _, subject, manifest = _modelpack(tmp_path, MODEL)
    bundle = sign_files(manifest_files(manifest) or (), p256[0])
    from datetime import datetime, timezone
    artifact = signature_artifact(subject, bundle, created=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    raw = json.loads(artifact.manifest_bytes)
    assert raw == {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                    "digest": "sha256:" + sha(bundle), "size": len(bundle)}],
        "subject": {"mediaType": mediatypes.OCI_MANIFEST, "digest": subject.digest, "size": subject.size},
        "annotations": {"dev.sigstore.bundle.content": "dsse-envelope",
                        "dev.sigstore.bundle.predicateType": "https://model_signing/signature/v1.0",
                        "org.opencontainers.image.created": "2025-01-02T03:04:05Z"},
    }
    assert artifact.config == (Descriptor.of_bytes(mediatypes.OCI_EMPTY, b"{}"), b"{}")
    assert artifact.bundle[1] == bundle
    # what an index (referrers API or the tag-schema fallback) lists for it
    assert artifact.descriptor.digest == "sha256:" + sha(artifact.manifest_bytes)
    assert is_signature(artifact.descriptor)
    assert artifact.descriptor.to_dict()["annotations"] == raw["annotations"]
    # the one graph walk sees the subject first, then the empty config and the bundle
    node = graph.parse_node(artifact.manifest_bytes)
    assert [d.digest for d in node.successors()] == [subject.digest, artifact.config[0].digest, artifact.bundle[0].digest]
    assert bundle_layer(Manifest.from_bytes(artifact.manifest_bytes), subject) == artifact.bundle[0]


def test_bundle_layer_refuses_what_is_not_this_models_signature(tmp_path: Path, p256: tuple[PrivateKey, PublicKey]) -> None:
    _, subject, manifest = _modelpack(tmp_path, MODEL)
    artifact = signature_artifact(subject, sign_files(manifest_files(manifest) or (), p256[0]))
    good = artifact.manifest
    other = Descriptor(subject.media_type, "sha256:" + "0" * 64, 10)
    layer = good.layers[0]
    cases: list[tuple[Manifest, str]] = [
        (Manifest(good.config, good.layers, artifact_type="application/x", subject=subject), "artifactType"),
        (Manifest(good.config, good.layers, artifact_type=good.artifact_type, subject=other), "subject"),
        (Manifest(good.config, good.layers, artifact_type=good.artifact_type), "subject"),
        (Manifest(good.config, (layer, layer), artifact_type=good.artifact_type, subject=subject), "2 layer"),
        (Manifest(good.config, (Descriptor("application/json", layer.digest, layer.size),),
                  artifact_type=good.artifact_type, subject=subject), "one application/vnd.dev.sigstore"),
        (Manifest(good.config, (Descriptor(layer.media_type, layer.digest, 1 << 30),),
                  artifact_type=good.artifact_type, subject=subject), "at most"),
    ]
    for bad, message in cases:
        with pytest.raises(VerificationError, match=message):
            bundle_layer(bad, subject)


def test_modelpack_files_come_from_the_manifest_alone(tmp_path: Path, p256: tuple[PrivateKey, PublicKey]) -> None:
    store, _, manifest = _modelpack(tmp_path, {**MODEL, ".gitattributes": b"*.safetensors lfs"})
    files = manifest_files(manifest)
    assert files is not None
    assert {f.path: f.sha256 for f in files} == {p: sha(d) for p, d in {**MODEL, ".gitattributes":
                                                                        b"*.safetensors lfs"}.items()}
    assert {f.path: f.size for f in files} == {p: len(d) for p, d in {**MODEL, ".gitattributes":
                                                                      b"*.safetensors lfs"}.items()}
    assert export_ignore_paths(manifest) == (*GIT_PATHS, "ormbfile.yaml")
    # a model holding a file a signature leaves out is not signed: no verifier could accept it
    with pytest.raises(InvalidArtifactError, match="the model holds '.gitattributes', which a model signature "
                                                   "leaves out"):
        sign_files(files, p256[0], ignore_paths=export_ignore_paths(manifest))
    files = tuple(f for f in files if f.path != ".gitattributes")
    signed = verify_bundle(sign_files(files, p256[0], ignore_paths=export_ignore_paths(manifest)), [p256[1]])
    assert set(signed.files) == set(MODEL) and signed.ignore_paths == (*sorted(GIT_PATHS), "ormbfile.yaml")
    check_files(signed, {f.path: f.sha256 for f in files})
    # a layer added to the manifest is a file added to the model
    added = Manifest(manifest.config, (*manifest.layers, Descriptor(
        modelpack.layer_type("weight"), "sha256:" + sha(b"evil"), 4, {modelpack.ANNOTATION_FILEPATH: "evil.pkl"})),
        artifact_type=manifest.artifact_type)
    with pytest.raises(VerificationError, match="'evil.pkl' is in the model but not in its signature"):
        check_files(signed, {f.path: f.sha256 for f in manifest_files(added) or () if f.path != ".gitattributes"})
    # a layer whose file is not knowable from the manifest: None, read the layer instead
    for media_type, digest in [(modelpack.layer_type("weight", "tar"), "sha256:" + sha(b"t")),
                               (modelpack.layer_type("weight"), "sha512:" + "0" * 128)]:
        odd = Manifest(manifest.config, (Descriptor(media_type, digest, 1, {modelpack.ANNOTATION_FILEPATH: "w"}),),
                       artifact_type=manifest.artifact_type)
        assert manifest_files(odd) is None
    hostile = Manifest(manifest.config, (Descriptor(modelpack.layer_type("weight"), "sha256:" + sha(b""), 0,
                                                    {modelpack.ANNOTATION_FILEPATH: "../../x"}),),
                       artifact_type=manifest.artifact_type)
    with pytest.raises(UnsafeArchiveError):
        manifest_files(hostile)


def test_ormb_format_files_come_from_reading_its_layer_once(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src", MODEL)
    store = MemoryStore()
    packed = ormbformat.pack(list_model_files(src / "model"), Metadata(format="Others"), store, compression="fast")
    manifest = Manifest.from_bytes(fetch_bytes(store, packed.manifest))
    assert manifest_files(manifest) is None
    assert export_ignore_paths(manifest) == GIT_PATHS
    layer = ormbformat.model_layer(manifest)
    with store.fetch(layer) as blob:
        files = tar_layer_files(blob, layer)
    assert {f.path: (f.sha256, f.size) for f in files} == {p: (sha(d), len(d)) for p, d in MODEL.items()}
    with pytest.raises(InvalidArtifactError, match="neither|exactly one"):
        manifest_files(Manifest(packed.config, ()))


def _tar(entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for entry in entries:
            if isinstance(entry, tuple):
                tar.addfile(entry[0], io.BytesIO(entry[1]))
            else:
                tar.addfile(entry)
    return out.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> Any:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, len(data), link
    return (info, data) if kind == tarfile.REGTYPE else info


def _files_of(data: bytes, layer: Descriptor | None = None) -> list[tuple[str, str]]:
    layer = layer or Descriptor.of_bytes("application/x-tar", data)
    return [(f.path, f.sha256) for f in tar_layer_files(io.BytesIO(data), layer, None)]


def test_tar_layer_files_follows_hard_links_and_refuses_symlinks_and_escapes() -> None:
    layer = _tar([_member("model/", tarfile.DIRTYPE), _member("model/a", data=b"A"),
                  _member("model/b", tarfile.LNKTYPE, link="model/a")])
    assert _files_of(layer) == [("a", sha(b"A")), ("b", sha(b"A"))]
    with pytest.raises(InvalidArtifactError, match="symlink 'l'"):
        _files_of(_tar([_member("model/l", tarfile.SYMTYPE, link="a")]))
    with pytest.raises(UnsafeArchiveError, match="hard link"):
        _files_of(_tar([_member("model/b", tarfile.LNKTYPE, link="model/zzz")]))
    with pytest.raises(UnsafeArchiveError):
        _files_of(_tar([_member("model/../../etc/x", data=b"x")]))
    with pytest.raises(UnsafeArchiveError):
        _files_of(_tar([_member("elsewhere/x", data=b"x")]))
    with pytest.raises(UnsafeArchiveError, match="special file"):
        _files_of(_tar([_member("model/fifo", tarfile.FIFOTYPE)]))


def test_tar_layer_files_signs_only_the_bytes_the_manifest_names() -> None:
    """A corrupt or swapped blob in the cache must not be hashed into a signature."""
    good = _tar([_member("model/a", data=b"A" * 1000)])
    named = Descriptor.of_bytes("application/x-tar", good)
    swapped = _tar([_member("model/a", data=b"B" * 1000)])
    with pytest.raises(IntegrityError, match="does not match"):
        _files_of(swapped, named)
    with pytest.raises(IntegrityError, match="does not match"):
        _files_of(good[:700], named)  # truncated: not a valid tar, and not the named bytes
    with pytest.raises(IntegrityError, match="more bytes than the 10240 its manifest declares"):
        _files_of(good + b"\0" * 512, named)
    with pytest.raises(UnsafeArchiveError, match="not a valid tar"):
        _files_of(b"not a tar at all" * 40)


def test_tar_layer_files_refuses_a_header_bomb_as_export_does() -> None:
    """A PAX header claiming megabytes of extended data is refused before it is read into memory (the
    phase-1 reader had its own tar loop without export's guards and read it whole)."""
    import io as _io

    raw = _io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("model/a")
        info.pax_headers = {"comment": "x" * (2 << 20)}
        tar.addfile(info, _io.BytesIO(b""))
    with pytest.raises(UnsafeArchiveError, match="extended data"):
        _files_of(raw.getvalue())


# -- the environment that says "verify" fails closed (review finding 5) ------------------------------

@given(entries=st.lists(st.sampled_from(["", " ", "\t", "k.pub", "/keys/a.pub", "~/b.pem"]), min_size=1, max_size=4),
       trust_dir=st.one_of(st.none(), st.sampled_from(["", "  ", "/trust"])))
def test_property_a_verify_environment_naming_no_key_is_a_usage_error(entries: list[str],
                                                                      trust_dir: str | None) -> None:
    """ORMB_VERIFY_KEY='' (a Kubernetes secret that did not fill in), ':', ' ', 'a.pub:' or ORMB_TRUST_DIR='':
    the old code read each as "no key" and pulled/exported without verifying.  Now: exit 2, never open."""
    environ = {VERIFY_KEY_ENV: os.pathsep.join(entries)}
    if trust_dir is not None:
        environ[TRUST_DIR_ENV] = trust_dir
    keys, directory, problem = verification_environment(environ)
    blank = any(not e.strip() for e in entries) or (trust_dir is not None and not trust_dir.strip())
    assert bool(problem) == blank
    if blank:
        with pytest.raises(UsageError) as err:
            verification_keys(env_keys=keys, env_trust_dir=directory, env_problem=problem)
        assert err.value.exit_code == 2 and "no key to verify with" in err.value.message
    assert all(str(k).strip() for k in keys)


def test_unset_verify_environment_means_no_verification_and_arguments_win(tmp_path: Path) -> None:
    assert verification_environment({}) == ((), None, "")
    assert verification_keys(env_problem="") is None
    generate_key_pair(tmp_path / "k.pem", tmp_path / "k.pub")
    keys = verification_keys([tmp_path / "k.pub"], env_problem="ORMB_VERIFY_KEY is set but empty ('')")
    assert keys is not None and len(keys) == 1  # --verify-key on the command line is used; the environment unread


# -- one rule for what a model's layers add up to: the verifier's is export's (review finding 3) ----------

_LAYER_PATHS = ["a", "b", "c/d", "c", "a/x"]


@given(layers=st.lists(st.tuples(st.sampled_from(["raw", "tar"]),
                                 st.lists(st.sampled_from(_LAYER_PATHS), min_size=1, max_size=3, unique=True),
                                 st.integers(0, 3)), min_size=1, max_size=4))
def test_property_the_verifier_accepts_exactly_the_layers_export_writes(
        layers: list[tuple[str, list[str], int]]) -> None:
    """A raw layer shadowed by a later tar layer at the same path (the old verifier merged them, last one
    winning, while export refuses two layers writing one path), two raw layers at one path, a file in one
    layer that is a directory in another: whatever the layers, the files the verifier computes are refused
    exactly when export refuses the model, and are otherwise exactly the files export writes."""
    import tempfile

    from ormb.content.target import push_bytes
    from ormb.model.export import export_model
    from ormb.signing.files import model_files
    from ormb.signing.verify import manifest_hashes
    store = MemoryStore()
    descs = []
    for kind, paths, variant in layers:
        if kind == "raw":
            for path in paths[:1]:
                data = f"{path}:{variant}".encode()
                desc = Descriptor.of_bytes(modelpack.layer_type("weight"), data, {modelpack.ANNOTATION_FILEPATH: path})
                push_bytes(store, desc, data)
                descs.append(desc)
        else:
            data = _tar([_member(p, data=f"{p}:{variant}".encode()) for p in paths])
            desc = Descriptor.of_bytes(modelpack.layer_type("weight", "tar"), data)
            push_bytes(store, desc, data)
            descs.append(desc)
    manifest = Manifest(_MODELPACK_TEMPLATE.config, tuple(descs), artifact_type=_MODELPACK_TEMPLATE.artifact_type)
    verified: dict[str, str] | None
    try:
        verified = manifest_hashes(store, manifest).digests()
        assert model_files(store, manifest).digests() == verified
    except UnsafeArchiveError:
        verified = None
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "out"
        try:
            export_model(store, manifest, dest, metadata=None)
        except UnsafeArchiveError:
            assert verified is None, f"the verifier accepted {verified}, export refused"
            return
        exported = {str(p.relative_to(dest)): sha(p.read_bytes()) for p in dest.rglob("*") if p.is_file()}
    assert verified == exported


def _modelpack_template() -> Manifest:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        return _modelpack(Path(tmp), {"w": b"w"})[2]


_MODELPACK_TEMPLATE = _modelpack_template()


class _Source:
    """A signature source over a store and a referrers list (what a registry lists, in its order)."""

    def __init__(self, store: MemoryStore, entries: list[Descriptor]) -> None:
        self.store, self.entries, self.asked = store, entries, 0

    def fetch(self, desc: Descriptor) -> Any:
        self.asked += 1
        return self.store.fetch(desc)

    def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        return [e for e in self.entries if artifact_type is None or e.artifact_type == artifact_type]


# -- file records: keyed by how a layer was read, written only after a model verified (finding 2) ----

def _polyglot(plain: list[Any], inner: list[Any]) -> bytes:
    """One blob, two archives: a plain tar holding ``plain`` whose first header (a PAX header, name
    unused) starts with a zstd skippable frame spanning the plain tar; read as zstd, the frame is
    skipped and the next frame is a tar holding ``inner``."""
    import struct

    import zstandard
    first = tarfile.TarInfo("PAXHEADER")
    first.type, first.size = tarfile.XHDTYPE, 0
    header = bytearray(first.tobuf(tarfile.USTAR_FORMAT))
    rest = _tar(plain)
    header[0:8] = struct.pack("<II", 0x184D2A50, 512 - 8 + len(rest))
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + rest + zstandard.ZstdCompressor().compress(_tar(inner))


def test_a_polyglot_layer_read_two_ways_gets_two_records(tmp_path: Path) -> None:
    """The old records were keyed by (layer digest, prefix): after a verified pull of a blob served as a plain
    'tar' layer (files X), the same blob served as 'tar+zstd' (files Y) was verified from X's record."""
    from ormb.content.target import push_bytes
    from ormb.signing.files import FileRecords, model_files
    signed, evil = b'{"trust_remote_code": false}', b'{"trust_remote_code": true}'
    blob = _polyglot([_member("config.json", data=signed)], [_member("config.json", data=evil)])
    store = MemoryStore()
    records = FileRecords(tmp_path / "records")
    found = {}
    for packing in ("tar", "tar+zstd"):
        desc = Descriptor.of_bytes(modelpack.layer_type("code", packing), blob)
        push_bytes(store, desc, blob)
        manifest = Manifest(_MODELPACK_TEMPLATE.config, (desc,), artifact_type=_MODELPACK_TEMPLATE.artifact_type)
        found[packing] = model_files(store, manifest, records).digests()
        assert model_files(store, manifest, records).digests() == found[packing]  # now from the record
    assert found == {"tar": {"config.json": sha(signed)}, "tar+zstd": {"config.json": sha(evil)}}
    assert len(list((tmp_path / "records" / "sha256").iterdir())) == 2


def test_records_of_a_refused_model_are_never_written(tmp_path: Path, p256: tuple[PrivateKey, PublicKey]) -> None:
    """A layer read while verifying is remembered only once its model verified (the old code stored what a
    refused layer held, before the check)."""
    from ormb.content.target import push_bytes
    from ormb.signing import signature_artifact
    from ormb.signing.files import FileRecords
    from ormb.signing.verify import verify_manifest
    layer_bytes = _tar([_member("a.txt", data=b"A")])
    desc = Descriptor.of_bytes(modelpack.layer_type("code", "tar"), layer_bytes)
    store = MemoryStore()
    push_bytes(store, desc, layer_bytes)
    manifest = Manifest(_MODELPACK_TEMPLATE.config, (desc,), artifact_type=_MODELPACK_TEMPLATE.artifact_type)
    data = manifest.to_bytes()
    subject = Descriptor.of_bytes(mediatypes.OCI_MANIFEST, data)
    push_bytes(store, subject, data)
    records = FileRecords(tmp_path / "records")
    for files, ok in (([("other.txt", sha(b"B"))], False), ([("a.txt", sha(b"A"))], True)):
        artifact = signature_artifact(subject, sign_files(files, p256[0]))
        for blob_desc, content in (artifact.config, artifact.bundle, (artifact.descriptor, artifact.manifest_bytes)):
            push_bytes(store, blob_desc, content)
        source = _Source(store, [artifact.descriptor])
        if ok:
            verify_manifest(source, subject, manifest, [p256[1]], what="m", records=records)
            assert len(list((tmp_path / "records" / "sha256").iterdir())) == 1
        else:
            with pytest.raises(VerificationError, match="'a.txt' is in the model but not in its signature"):
                verify_manifest(source, subject, manifest, [p256[1]], what="m", records=records)
            assert not (tmp_path / "records").exists()


# -- referrers: only signatures asked for, a bounded number read, one bundle each (findings 4 and 8) ----

def _signed_model(p256: tuple[PrivateKey, PublicKey]) -> tuple[MemoryStore, Descriptor, Manifest, Descriptor]:
    """A ModelPack manifest in a store with its genuine signature; returns the signature's index entry."""
    from ormb.content.target import push_bytes
    store, subject, manifest = MemoryStore(), *_modelpack_template_with_store()
    for blob_desc, content in _modelpack_blobs.items():
        push_bytes(store, blob_desc, content)
    artifact = signature_artifact(subject, sign_files(manifest_files(manifest) or (), p256[0]))
    for blob_desc, content in (artifact.config, artifact.bundle, (artifact.descriptor, artifact.manifest_bytes)):
        push_bytes(store, blob_desc, content)
    return store, subject, manifest, artifact.descriptor


_modelpack_blobs: dict[Descriptor, bytes] = {}


def _modelpack_template_with_store() -> tuple[Descriptor, Manifest]:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        store, subject, manifest = _modelpack(Path(tmp), {"w.bin": b"w"})
    for desc in (subject, manifest.config, *manifest.layers):
        _modelpack_blobs[Descriptor(desc.media_type, desc.digest, desc.size)] = fetch_bytes(store, desc)
    return subject, manifest


def _junk_signatures(store: MemoryStore, subject: Descriptor, count: int, *, layers: int = 1,
                     size: int = 0) -> list[Descriptor]:
    from ormb.content.target import push_bytes
    out = []
    for i in range(count):
        blobs = []
        for j in range(layers):
            data = (b'{"junk": %d, "layer": %d}' % (i, j)).ljust(size, b" ")
            desc = Descriptor.of_bytes(BUNDLE_MEDIA_TYPE, data)
            push_bytes(store, desc, data)
            blobs.append(desc)
        if layers == 1:
            artifact = signature_artifact(subject, fetch_bytes(store, blobs[0]))
            data, entry = artifact.manifest_bytes, artifact.descriptor
            push_bytes(store, *artifact.config)
        else:
            from ormb.signing.referrer import EMPTY_CONFIG, EMPTY_DESCRIPTOR
            push_bytes(store, EMPTY_DESCRIPTOR, EMPTY_CONFIG)
            node = Manifest(EMPTY_DESCRIPTOR, tuple(blobs), artifact_type=BUNDLE_MEDIA_TYPE,
                            subject=Descriptor(subject.media_type, subject.digest, subject.size))
            data = node.to_bytes()
            entry = node.descriptor({})
        push_bytes(store, Descriptor.of_bytes(mediatypes.OCI_MANIFEST, data), data)
        out.append(entry)
    return out


def test_a_genuine_signature_behind_many_junk_ones_is_found(p256: tuple[PrivateKey, PublicKey]) -> None:
    """40 junk signatures listed before the genuine one (anyone who can push may attach them, and a fallback
    index lists them in any order): the old code read 32 and said the model was not verified."""
    from ormb.signing import trusted_signatures
    store, subject, _, genuine = _signed_model(p256)
    junk = _junk_signatures(store, subject, 40)
    found = trusted_signatures(_Source(store, [*junk, genuine]), subject, [p256[1]], what="m")
    assert [s.referrer.digest for s in found] == [genuine.digest]


def test_too_many_signatures_say_which_limit_was_reached(p256: tuple[PrivateKey, PublicKey]) -> None:
    from ormb.oci.grammar import MAX_SIGNATURE_BUNDLE, MAX_SIGNATURE_BYTES, MAX_SIGNATURES
    from ormb.signing import trusted_signatures
    store, subject, _, genuine = _signed_model(p256)
    junk = _junk_signatures(store, subject, MAX_SIGNATURES + 5)
    source = _Source(store, [*junk, genuine])
    with pytest.raises(VerificationError, match=f"ormb reads at most {MAX_SIGNATURES} \\(MAX_SIGNATURES\\)") as err:
        trusted_signatures(source, subject, [p256[1]], what="m")
    assert "\n" not in str(err.value) and source.asked == 2 * MAX_SIGNATURES
    big = MAX_SIGNATURE_BYTES // MAX_SIGNATURE_BUNDLE + 2
    store, subject, _, genuine = _signed_model(p256)
    source = _Source(store, [*_junk_signatures(store, subject, big, size=MAX_SIGNATURE_BUNDLE - 4096), genuine])
    with pytest.raises(VerificationError, match="MAX_SIGNATURE_BYTES"):
        trusted_signatures(source, subject, [p256[1]], what="m")


def test_only_signatures_are_asked_for_and_a_many_layered_one_is_never_downloaded(
        p256: tuple[PrivateKey, PublicKey]) -> None:
    """300 referrers of another type and a "signature" with 200 layers: the old code fetched every listed
    manifest and would copy all 200 layers.  Now the listing asks for signatures only, and a signature
    referrer that is not exactly one bundle is refused from its manifest, its layers unread."""
    from ormb.content.target import push_bytes
    from ormb.signing import trusted_signatures
    store, subject, _, genuine = _signed_model(p256)
    others = []
    for i in range(300):
        node = Manifest(Descriptor.of_bytes(mediatypes.OCI_EMPTY, b"{}"), (), artifact_type="application/x-sbom",
                        subject=Descriptor(subject.media_type, subject.digest, subject.size), annotations={"n": str(i)})
        data = node.to_bytes()
        push_bytes(store, Descriptor.of_bytes(mediatypes.OCI_MANIFEST, data), data)
        others.append(node.descriptor({}))
    many = _junk_signatures(store, subject, 1, layers=200)
    source = _Source(store, [*others, *many, genuine])
    found = trusted_signatures(source, subject, [p256[1]], what="m")
    assert [s.referrer.digest for s in found] == [genuine.digest]
    assert source.asked == 3  # the many-layered manifest, the genuine manifest and its bundle
    source = _Source(store, [*others, *many])
    with pytest.raises(VerificationError, match="must have exactly one .* layer, and has 200 layer"):
        trusted_signatures(source, subject, [p256[1]], what="m")


# -- a ModelPack model with tar layers is checked from its manifest as far as it can say (finding 7) ----

def test_a_manifest_with_tar_layers_is_checked_before_a_layer_is_read(p256: tuple[PrivateKey, PublicKey]) -> None:
    """The old code compared nothing before downloading a ModelPack model that has a tar layer: a pusher
    who re-attached a genuine signature made every verifier download every byte before the refusal."""
    from ormb.signing import check_listed, verify_bundle
    from ormb.signing.verify import Signature
    subject, manifest = _modelpack_template_with_store()
    signed = verify_bundle(sign_files(manifest_files(manifest) or (), p256[0]), [p256[1]])
    signatures = [Signature(subject, signed)]
    (raw,) = manifest.layers
    tar = Descriptor(modelpack.layer_type("weight", "tar"), "sha256:" + sha(b"t"), 20 << 20)
    changed = Descriptor(raw.media_type, "sha256:" + sha(b"other"), raw.size, raw.annotations)
    renamed = Descriptor(raw.media_type, raw.digest, raw.size, {modelpack.ANNOTATION_FILEPATH: "x.bin"})

    def shaped(*layers: Descriptor) -> Manifest:
        return Manifest(manifest.config, layers, artifact_type=manifest.artifact_type)
    # no blob is in any store here: a refusal that needed a layer would fail differently
    for layers, message in (((raw, tar), "every signed file is in a raw layer, and the model has 1 more layer"),
                            ((changed, tar), "'w.bin' differs from the signed file"),
                            ((renamed, tar), "'x.bin' is in the model but not in its signature")):
        with pytest.raises(VerificationError, match=message):
            check_listed(signatures, shaped(*layers), what="m")
    assert check_listed(signatures, shaped(tar), what="m") is None  # the tar layer may hold w.bin: read it
    assert check_listed(signatures, shaped(raw), what="m") is not None  # every file listed: verified whole


def test_keys_on_a_read_only_mount_are_trusted_like_a_kubernetes_secret_volume(tmp_path: Path) -> None:
    """A Kubernetes Secret volume is a read-only tmpfs whose root is often world-writable with the sticky bit
    (1777), its files are links into a ``..data`` directory: nobody can replace a key on a read-only file system,
    so the rule above must not refuse it, while the same tree mounted read-write is refused.  Needs root (to mount),
    as the XFS tests do; CI runs as root."""
    import subprocess

    _, public = write_key_pair(tmp_path / "src", "k")
    mount = tmp_path / "secret"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=1777", "tmpfs", str(mount)], check=True)
    try:
        data = mount / "..2026_11_25"
        data.mkdir(mode=0o777)  # writable by all: only the read-only mount keeps the key safe
        (data / "k.pub").write_bytes(public.read_bytes())
        (data / "k.pub").chmod(0o666)
        (mount / "..data").symlink_to(data.name)
        (mount / "k.pub").symlink_to("..data/k.pub")
        with pytest.raises(KeyFileError, match="writable by"):
            load_trust_dir(mount)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        mine = load_public_key(public).fingerprint
        assert [k.fingerprint for k in load_trust_dir(mount)] == [mine]
        assert load_public_key(mount / "k.pub").fingerprint == mine
    finally:
        subprocess.run(["umount", str(mount)], check=False)
