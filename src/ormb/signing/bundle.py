"""The OpenSSF model-signing format (``model_signing`` 1.x, key signing), written and checked.

A signature is a Sigstore bundle v0.3 (``application/vnd.dev.sigstore.bundle.v0.3+json``)::

    {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
     "verificationMaterial": {"publicKey": {"hint": <key fingerprint>}, "tlogEntries": []},
     "dsseEnvelope": {"payload": <base64 statement>, "payloadType": "application/vnd.in-toto+json",
                      "signatures": [{"sig": <base64 signature over the DSSE PAE>, "keyid": ""}]}}

whose payload is an in-toto Statement v1::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": <model name>, "digest": {"sha256": <root digest>}}],
     "predicateType": "https://model_signing/signature/v1.0",
     "predicate": {"serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": false,
                                     "ignore_paths": [".git", ...]},
                   "resources": [{"name": "dir/file", "algorithm": "sha256", "digest": <hex>}, ...]}}

``resources`` has one entry per file, its path relative to the model directory, sorted by path
components as ``model_signing`` sorts them; the root digest is the SHA-256 of the resources'
raw digests concatenated in that order.  Files under ``ignore_paths`` (relative to the model
directory) are not signed: ``model_signing`` skips them on both sides.  ormb does not: it refuses to
sign a model that holds such a file, and a verifier refuses a model holding any file the signature
does not list, ignored path or not (a ``.git/config`` left unsigned runs code on ``git status``).  The signature is over the DSSE pre-authentication
encoding ``DSSEv1 <len type> <type> <len payload> <payload>``: ECDSA with SHA-256/384/512 by
curve (DER), or Ed25519.

Only the signing *input* differs from ``model_signing``: it hashes a directory, ormb is given
the (path, SHA-256) list, which it knows from a manifest without reading a weight byte.

Verifying checks the signature before reading anything the payload says, then the payload
strictly (one subject, the ``files`` serialization with SHA-256, canonical unique paths, the
root digest); every failure is a one-line :class:`VerificationError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ormb.errors import InvalidArtifactError, VerificationError
from ormb.oci.descriptor import load_json
from ormb.oci.grammar import MAX_SIGNATURE_BUNDLE, MAX_TAR_ENTRY_NAME
from ormb.signing.keys import PrivateKey, PublicKey

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
OLD_PREDICATE_TYPE = "https://model_signing/Digests/v0.1"  # model_signing < 1.0; not accepted
# What model_signing leaves out by default (--ignore-git-paths), relative to the model directory.
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")

_HEX64 = re.compile(r"[0-9a-f]{64}\Z", re.ASCII)


@dataclass(frozen=True)
class SignedFile:
    """A file of a model: its path relative to the model directory, its SHA-256 (hex), its size if known."""

    path: str
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class SignedFiles:
    """What a verified signature says: who signed (``key``, one of the trusted keys) and which files."""

    key: PublicKey
    files: Mapping[str, str]  # path -> SHA-256 hex, in the signed order
    ignore_paths: tuple[str, ...]
    name: str  # the model name the signer gave; informative only
    root_digest: str  # sha256:<hex> over all file digests, the statement's subject


def sort_key(path: str) -> tuple[str, ...]:
    """The order of ``resources``: by path components, as ``model_signing`` sorts PurePosixPaths
    (``a/b`` before ``a-b``, which plain string order would reverse)."""
    return tuple(path.split("/"))


def path_problem(path: object) -> str | None:
    """Why ``path`` is not a canonical relative POSIX path (what a model directory can hold), else None."""
    if not isinstance(path, str) or not path:
        return "is empty or not a string"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_TAR_ENTRY_NAME:
        return f"is longer than {MAX_TAR_ENTRY_NAME} bytes"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (a file name in an unknown encoding)"
    if "\x00" in path:
        return "contains a NUL character"
    if path.startswith("/"):
        return "is absolute"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "is not canonical (an empty, '.' or '..' component)"
    return None


def _hex_digest(value: str, where: str) -> str:
    """``sha256:<hex>`` or ``<hex>`` -> ``<hex>``."""
    hexpart = value[7:] if value.startswith("sha256:") else value
    if not _HEX64.match(hexpart):
        raise InvalidArtifactError(f"{where} has no SHA-256 digest (got {value[:80]!r})",
                                   "model_signing signs SHA-256 digests of whole files")
    return hexpart


def is_ignored(path: str, ignore_paths: Iterable[str]) -> bool:
    """True when ``path`` is an ignored path or lies below one (``.git`` covers ``.git/config``)."""
    return any(path == p or path.startswith(p + "/") for p in ignore_paths)


def pae(payload: bytes, payload_type: str = DSSE_PAYLOAD_TYPE) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def statement(files: Iterable[SignedFile | tuple[str, str] | tuple[str, str, int | None]], *,
              name: str = "model", ignore_paths: Iterable[str] = GIT_PATHS) -> bytes:
    """The in-toto statement (DSSE payload) for ``files``, recording ``ignore_paths`` as ``model_signing``
    does.  A file under an ignored path is refused: the signature could not cover it, and a verifier
    refuses a model holding a file its signature does not list."""
    ignored = sorted(set(ignore_paths))
    for path in ignored:
        problem = path_problem(path)
        if problem:
            raise InvalidArtifactError(f"the ignored path {path!r} {problem}")
    entries: dict[str, str] = {}
    for item in files:
        entry = item if isinstance(item, SignedFile) else SignedFile(*item)
        problem = path_problem(entry.path)
        if problem:
            raise InvalidArtifactError(f"cannot sign the file path {entry.path!r}: it {problem}")
        if entry.path in entries:
            raise InvalidArtifactError(f"the file path {entry.path!r} is listed twice; a model cannot hold it twice")
        if is_ignored(entry.path, ignored):
            raise InvalidArtifactError(f"the model holds {entry.path!r}, which a model signature leaves out "
                                       f"({', '.join(ignored)} are never signed), so no verifier would accept it",
                                       "save the model without it (git files do not belong in a model), then sign")
        entries[entry.path] = _hex_digest(entry.sha256, f"the file {entry.path!r}")
    resources = [{"name": p, "algorithm": "sha256", "digest": entries[p]} for p in sorted(entries, key=sort_key)]
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    serialization: dict[str, Any] = {"method": "files", "hash_type": "sha256", "allow_symlinks": False}
    if ignored:
        serialization["ignore_paths"] = ignored
    body = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"serialization": serialization, "resources": resources},
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign_files(files: Iterable[SignedFile | tuple[str, str] | tuple[str, str, int | None]], key: PrivateKey, *,
               name: str = "model", ignore_paths: Iterable[str] = GIT_PATHS) -> bytes:
    """A model-signing bundle (JSON bytes) over ``files``: (path, SHA-256 as hex or ``sha256:<hex>``, size?).

    Paths are relative to the directory a verifier will check (``model_signing verify key ... DIR``);
    ``name`` is informative (model_signing uses the directory's name).
    """
    payload = statement(files, name=name, ignore_paths=ignore_paths)
    signature = key.sign(pae(payload))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key.public.fingerprint}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": DSSE_PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
        },
    }
    return json.dumps(bundle, separators=(",", ":")).encode("utf-8")


# -- verifying ---------------------------------------------------------------------------------


def _malformed(what: str) -> VerificationError:
    return VerificationError(f"the signature is malformed: {what}",
                             "it was not made by ormb or model_signing 1.x; ask for a new signature")


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(f"{where} is not a JSON object")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _malformed(f"{where} is not a string")
    return value


def _b64(value: Any, where: str) -> bytes:
    text = _string(value, where)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(f"{where} is not base64") from None


def _short(fingerprint: str) -> str:
    return fingerprint[:16]


def _envelope(bundle: bytes) -> tuple[str | None, bytes, bytes]:
    """(key hint, payload, signature) of a key-signed bundle, checked for shape only."""
    if len(bundle) > MAX_SIGNATURE_BUNDLE:
        raise _malformed(f"it is {len(bundle)} bytes, more than the {MAX_SIGNATURE_BUNDLE} a signature may have")
    try:
        raw = _object(load_json(bundle, "signature"), "the bundle")
    except InvalidArtifactError as exc:
        raise _malformed(exc.message) from None
    media_type = raw.get("mediaType")
    if media_type != BUNDLE_MEDIA_TYPE:
        raise _malformed(f"its mediaType is {str(media_type)[:80]!r}, not {BUNDLE_MEDIA_TYPE}")
    material = _object(raw.get("verificationMaterial"), "verificationMaterial")
    if "publicKey" not in material:
        kinds = ", ".join(sorted(k for k in material if k != "tlogEntries")) or "nothing"
        raise VerificationError(f"the signature is not a key signature (its verification material is {kinds})",
                                "ormb verifies signatures made with a key (model_signing sign key / ormb sign --key)")
    hint = _object(material["publicKey"], "verificationMaterial.publicKey").get("hint")
    if hint is not None and (not isinstance(hint, str) or not _HEX64.match(hint)):
        raise _malformed("publicKey.hint is not a key fingerprint")
    if "messageSignature" in raw:
        raise _malformed("it signs a single message, not a DSSE envelope with a model's file list")
    envelope = _object(raw.get("dsseEnvelope"), "dsseEnvelope")
    if envelope.get("payloadType") != DSSE_PAYLOAD_TYPE:
        raise _malformed(f"its payloadType is {str(envelope.get('payloadType'))[:80]!r}, not {DSSE_PAYLOAD_TYPE}")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or len(signatures) != 1:
        raise _malformed("the envelope must hold exactly one signature")
    signature = _b64(_object(signatures[0], "signatures[0]").get("sig"), "signatures[0].sig")
    return hint, _b64(envelope.get("payload"), "the payload"), signature


def _signer(hint: str | None, payload: bytes, signature: bytes, keys: Sequence[PublicKey]) -> PublicKey:
    if not keys:
        raise VerificationError("no public key to verify the signature with", "give --key KEY.pub or --trust-dir DIR")
    candidates = [k for k in keys if k.fingerprint == hint] if hint else list(keys)
    if not candidates:
        raise VerificationError(f"the model is signed by an unknown key (fingerprint {_short(hint or '')}), "
                                f"not by any of the {len(keys)} trusted key(s)",
                                "if you trust that key, add its public key with --key or --trust-dir")
    signed = pae(payload)
    for key in candidates:
        if key.verify(signature, signed):
            return key
    if hint:
        raise VerificationError(f"the signature by key {_short(hint)} does not match what it signs: "
                                "the signature or its file list was altered",
                                "do not use this model; ask its publisher to sign it again")
    raise VerificationError(f"the signature was made by none of the {len(keys)} trusted key(s)",
                            "if you trust its signer, add the public key with --key or --trust-dir")


def _files(predicate: dict[str, Any]) -> tuple[dict[str, str], tuple[str, ...]]:
    serialization = _object(predicate.get("serialization"), "predicate.serialization")
    method, hash_type = serialization.get("method"), serialization.get("hash_type")
    if method != "files":
        raise VerificationError(f"the signature uses the {str(method)[:40]!r} serialization; ormb checks 'files'",
                                "sign whole files: model_signing sign key without --shard, or ormb sign")
    if hash_type != "sha256":
        raise VerificationError(f"the signature uses the hash {str(hash_type)[:40]!r}; ormb checks SHA-256, "
                                "the digest OCI registries verify", "sign with model_signing's default hash (sha256)")
    ignore_raw = serialization.get("ignore_paths", [])
    if not isinstance(ignore_raw, list):
        raise _malformed("ignore_paths is not a list")
    ignore_paths = []
    for item in ignore_raw:
        problem = path_problem(item)
        if problem:
            raise _malformed(f"the ignored path {str(item)[:80]!r} {problem}")
        ignore_paths.append(str(item))
    resources = predicate.get("resources")
    if not isinstance(resources, list):
        raise _malformed("predicate.resources is not a list")
    files: dict[str, str] = {}
    for i, item in enumerate(resources):
        resource = _object(item, f"resources[{i}]")
        path, algorithm, digest = resource.get("name"), resource.get("algorithm"), resource.get("digest")
        problem = path_problem(path)
        if problem:
            raise _malformed(f"the file path {str(path)[:80]!r} {problem}")
        assert isinstance(path, str)
        if algorithm != "sha256" or not isinstance(digest, str) or not _HEX64.match(digest):
            raise _malformed(f"the file {path!r} has no SHA-256 digest")
        if path in files:
            raise _malformed(f"the file {path!r} is listed twice")
        files[path] = digest
    return files, tuple(ignore_paths)


def _statement(payload: bytes) -> tuple[str, str, dict[str, str], tuple[str, ...]]:
    """(name, root digest hex, files, ignore paths) of a model-signing statement, checked strictly."""
    try:
        statement_raw = _object(load_json(payload, "signed statement"), "the signed statement")
    except InvalidArtifactError as exc:
        raise _malformed(exc.message) from None
    if statement_raw.get("_type") != STATEMENT_TYPE:
        raise _malformed(f"the payload is not an in-toto {STATEMENT_TYPE}")
    predicate_type = statement_raw.get("predicateType")
    if predicate_type == OLD_PREDICATE_TYPE:
        raise VerificationError("the signature was made by model_signing before 1.0, whose format does not "
                                "cover the whole model", "sign the model again with model_signing 1.x or ormb")
    if predicate_type != PREDICATE_TYPE:
        raise _malformed(f"its predicateType is {str(predicate_type)[:80]!r}, not {PREDICATE_TYPE}")
    subjects = statement_raw.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1:
        raise _malformed("the statement must have exactly one subject")
    subject = _object(subjects[0], "subject[0]")
    name = _string(subject.get("name", ""), "subject[0].name")
    root = _object(subject.get("digest"), "subject[0].digest").get("sha256")
    if not isinstance(root, str) or not _HEX64.match(root):
        raise _malformed("the subject has no SHA-256 digest")
    files, ignore_paths = _files(_object(statement_raw.get("predicate"), "predicate"))
    computed = hashlib.sha256(b"".join(bytes.fromhex(d) for d in files.values())).hexdigest()
    if computed != root:
        raise _malformed("the subject digest is not the digest of the file list")
    return name, root, files, ignore_paths


@dataclass(frozen=True)
class UnverifiedSignature:
    """What a bundle claims, read WITHOUT checking its signature: for a first look (``ormb sign --attach``
    checks that a signature was made over this model before storing it), never for a decision."""

    key_hint: str | None
    files: Mapping[str, str]
    ignore_paths: tuple[str, ...]


def read_unverified(bundle: bytes) -> UnverifiedSignature:
    """The key hint and file list a bundle claims; its shape is checked, its signature is not."""
    hint, payload, _ = _envelope(bundle)
    _, _, files, ignore_paths = _statement(payload)
    return UnverifiedSignature(hint, files, ignore_paths)


def verify_bundle(bundle: bytes, keys: Sequence[PublicKey]) -> SignedFiles:
    """Check that ``bundle`` is a model signature by one of ``keys``; return what it signs.

    Raises :class:`VerificationError` (exit code 4) for a malformed bundle, a key not among
    ``keys``, a signature that does not verify, or a payload that is not a model_signing 1.x
    ``files``/SHA-256 statement.  The file list still has to be compared with the model:
    :func:`check_files`.
    """
    hint, payload, signature = _envelope(bundle)
    key = _signer(hint, payload, signature, keys)
    # Only now, with the signature verified, is the payload's content read.
    name, root, files, ignore_paths = _statement(payload)
    return SignedFiles(key, files, ignore_paths, name, f"sha256:{root}")


def check_files(signed: SignedFiles, actual: Mapping[str, str], *, complete: bool = True) -> None:
    """Check that ``actual`` (path -> SHA-256, hex or ``sha256:<hex>``) holds exactly the signed files.

    Every file of ``actual`` must be signed, including one under the signature's ignore paths
    (``model_signing verify`` would skip it; ormb refuses it: an unsigned ``.git/config`` runs code).
    ``actual`` holds the files of the model's layers only: the ``ormbfile.yaml`` ormb's export
    writes is not one of them.  Raises :class:`VerificationError` naming the first difference in
    path order.  With ``complete=False`` (a part of a model: ``export --include``) signed files may
    be missing, but every file present must be signed, with its digest.
    """
    compare_files(signed.files, signed.ignore_paths, actual, complete=complete)


def compare_files(signed_files: Mapping[str, str], ignore_paths: Iterable[str], actual: Mapping[str, str], *,
                  complete: bool = True) -> None:
    """:func:`check_files` over a file list and its ignore paths."""
    ignore_paths = tuple(ignore_paths)
    present = {path: digest[7:] if digest.startswith("sha256:") else digest for path, digest in actual.items()}
    differences: list[tuple[tuple[str, ...], str]] = []
    for path in set(signed_files) | set(present):
        if path not in present:
            if not complete:
                continue
            differences.append((sort_key(path), f"{path!r} is signed but missing from the model"))
        elif path not in signed_files:
            left_out = " (a path model signatures leave out; a signed model must not hold it)" \
                if is_ignored(path, ignore_paths) else ""
            differences.append((sort_key(path), f"{path!r} is in the model but not in its signature{left_out}"))
        elif present[path] != signed_files[path]:
            differences.append((sort_key(path), f"{path!r} differs from the signed file "
                                                f"(sha256 {present[path][:12]}, signed {signed_files[path][:12]})"))
    if differences:
        differences.sort()
        more = f"; {len(differences) - 1} more difference(s)" if len(differences) > 1 else ""
        raise VerificationError(f"the model does not match its signature: {differences[0][1]}{more}",
                                "it was changed after signing; do not use it, or sign it again if the change is yours")
