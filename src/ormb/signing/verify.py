"""Verifying a model: find its signatures, check them with trusted keys, compare the signed files.

The order is what keeps the check cheap and safe: (1) list the model's signature referrers and
read their bundles (a few KB each), (2) verify each bundle with the trusted keys, before anything
it says is used, (3) compare the signed file list with the model's files, which for ModelPack come
from the manifest, before a weight byte is downloaded.  Every failure is one
:class:`VerificationError` line that names the model.

Who may be hostile: the registry and anyone who can push (they choose the referrers, the bundles,
the manifest and the layers).  A registry may list any number of referrers: only signatures are asked
for (``?artifactType=``), at most ``grammar.MAX_SIGNATURES`` of them are read, ``MAX_SIGNATURE_BYTES``
in all, each with exactly one bundle layer; a refusal says which limit it reached.  A signature counts only when it verifies with a trusted key
*and* its file list is exactly the model's (same paths, same digests, none missing, none added).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from ormb.content.target import Fetcher, Readable, fetch_bytes
from ormb.errors import InvalidArtifactError, NotFoundError, OrmbError, VerificationError
from ormb.model import modelpack
from ormb.model.unpack import FileHashes
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.oci.grammar import MAX_MANIFEST, MAX_SIGNATURE_BUNDLE, MAX_SIGNATURE_BYTES, MAX_SIGNATURES
from ormb.oci.graph import Node, parse_node
from ormb.signing.bundle import SignedFile, SignedFiles, check_files, verify_bundle
from ormb.signing.files import FileRecords, model_files, union_of_layers
from ormb.signing.keys import PublicKey
from ormb.signing.referrer import SIGNATURE_ARTIFACT_TYPE, bundle_layer, is_signature, manifest_files


class SignatureSource(Fetcher, Protocol):
    """Where signatures are found: a Target that can list referrers (the cache, a registry)."""

    def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor]: ...


@dataclass(frozen=True)
class Signature:
    """A signature attached to a model whose bundle verified with a trusted key."""

    referrer: Descriptor  # the signature's manifest, as the referrers list gave it
    signed: SignedFiles
    bundle: bytes = field(repr=False, default=b"")  # as stored (what model_signing verify reads)

    @property
    def fingerprint(self) -> str:
        return self.signed.key.fingerprint


@dataclass(frozen=True)
class Verified:
    """A model whose files are exactly what a trusted key signed."""

    signature: Signature
    files: int  # files compared: every file of the model

    @property
    def fingerprint(self) -> str:
        return self.signature.fingerprint

    @property
    def key_source(self) -> str:
        return self.signature.signed.key.source


def _refusal(what: str, exc: OrmbError) -> VerificationError:
    hint = exc.hint if isinstance(exc, VerificationError) else \
        "do not use this model; ask its publisher for a model signed by a key you trust"
    return VerificationError(f"{what}: {exc.message}", hint)


def _read_signature(source: SignatureSource, entry: Descriptor, subject: Descriptor,
                    keys: Sequence[PublicKey], budget: list[int]) -> Signature:
    """Read and verify one signature referrer; ``budget`` holds the bytes still allowed (all signatures)."""
    desc = Descriptor(entry.media_type if entry.media_type in mediatypes.MANIFEST_TYPES else mediatypes.OCI_MANIFEST,
                      entry.digest, entry.size)
    _charge(budget, desc.size)
    data = fetch_bytes(source, desc, MAX_MANIFEST)
    try:
        manifest = parse_node(data, desc.media_type).to_manifest()
    except InvalidArtifactError as exc:
        raise VerificationError(f"a signature referrer is malformed: {exc.message}") from None
    layer = bundle_layer(manifest, subject)
    _charge(budget, layer.size)
    bundle = fetch_bytes(source, layer, MAX_SIGNATURE_BUNDLE)
    return Signature(entry, verify_bundle(bundle, keys), bundle)


class _OverBudget(Exception):
    """The signatures read so far hold ``grammar.MAX_SIGNATURE_BYTES``: read no more."""


def _charge(budget: list[int], size: int) -> None:
    if size > budget[0]:
        raise _OverBudget()
    budget[0] -= max(size, 0)


def refuse_subject(manifest: Manifest | Node, *, what: str) -> None:
    """Refuse a model manifest that has a ``subject``: a model is not a referrer.

    A signature names files, not a manifest, so a genuine one re-attached to the model's manifest with a
    ``subject`` added still matches; a copy follows the subject (it is part of the graph) and would
    download and store what it names, unsigned.  Checked from the manifest alone, before anything else
    is fetched (issue 14, second review, B5)."""
    if manifest.subject is not None:
        raise VerificationError(f"{what}: its manifest has a subject ({manifest.subject.digest}), which a model "
                                "manifest does not have and no signature covers",
                                "do not use this model; ask its publisher for the model without a subject")


def trusted_signatures(source: SignatureSource, subject: Descriptor, keys: Sequence[PublicKey], *,
                       what: str) -> list[Signature]:
    """The signatures of the model manifest ``subject`` that verify with one of ``keys`` (their file
    lists still to be compared with the model: :func:`check_model`).  ``what`` names the model in errors.

    Raises :class:`VerificationError` when there is none: unsigned, signed by unknown keys only,
    or only signatures that do not verify (the most telling reason is given).
    """
    if not keys:
        raise VerificationError(f"{what}: no public key to verify with", "give --verify-key KEY.pub or --trust-dir DIR")
    # ?artifactType= asks the registry for signatures only; a registry (or the fallback index) that
    # ignores it lists everything, so the type is checked here again
    entries = [r for r in source.referrers(subject.digest, SIGNATURE_ARTIFACT_TYPE) if is_signature(r)]
    if not entries:
        raise VerificationError(f"{what} is not signed: no signature is attached to its manifest {subject.digest[:19]}",
                                "sign it with 'ormb sign REF --key KEY.pem' and push it, or ask its publisher "
                                "for a signed model")
    found: list[Signature] = []
    refusals: list[VerificationError] = []
    budget = [MAX_SIGNATURE_BYTES]
    read = 0
    limit = ""
    for entry in entries:
        if read >= MAX_SIGNATURES:
            limit = f"it lists {len(entries)} signatures and ormb reads at most {MAX_SIGNATURES} (MAX_SIGNATURES)"
            break
        read += 1
        try:
            found.append(_read_signature(source, entry, subject, keys, budget))
        except _OverBudget:
            limit = (f"the first {read - 1} of its {len(entries)} signatures hold the {MAX_SIGNATURE_BYTES >> 20} MiB "
                     "ormb reads at most (MAX_SIGNATURE_BYTES)")
            break
        except (VerificationError, InvalidArtifactError, NotFoundError) as exc:
            refusals.append(_refusal(what, exc))
        except OrmbError as exc:  # IntegrityError: a bundle that is not the bytes its referrer names
            if exc.exit_code != 4:
                raise
            refusals.append(_refusal(what, exc))
    if found:
        return found
    if limit:
        raise VerificationError(f"{what}: no signature by a trusted key among those read: {limit}",
                                "someone attached many signatures to this model (anyone who can push may); remove "
                                "the ones that are not yours, or ask the registry's owner to")
    # An unknown signer is the common, benign case; a signature that fails for a trusted key says more.
    telling = [r for r in refusals if "unknown key" not in r.message and "none of the" not in r.message]
    raise (telling or refusals)[0]


def check_model(signatures: Sequence[Signature], actual: FileHashes | Mapping[str, str], *, what: str,
                complete: bool = True) -> Verified:
    """The first of ``signatures`` whose file list is exactly ``actual`` (path -> SHA-256, or a
    :class:`FileHashes` with the model's links); else the first difference, as a refusal."""
    links: tuple[str, ...] = ()
    if isinstance(actual, FileHashes):
        links = tuple(sorted(actual.links))
        actual = actual.digests()
    first: VerificationError | None = None
    for signature in signatures:
        try:
            if links:
                raise VerificationError(f"the model holds the symbolic link {links[0]!r}, which a "
                                        "signature cannot cover", "do not use this model")
            check_files(signature.signed, actual, complete=complete)
        except VerificationError as exc:
            first = first or _refusal(what, exc)
            continue
        return Verified(signature, len(actual))
    assert first is not None, "check_model needs at least one signature"
    raise first


def verify_manifest(source: SignatureSource, subject: Descriptor, manifest: Manifest, keys: Sequence[PublicKey], *,
                    what: str, files_from: Fetcher | None = None, records: FileRecords | None = None) -> Verified:
    """Verify the model ``manifest`` (its descriptor ``subject``) with signatures from ``source``.

    The model's files come from the manifest when it says them (ModelPack raw layers), else from
    reading its layers from ``files_from`` (default ``source``), with ``records`` as a memory.
    """
    refuse_subject(manifest, what=what)
    signatures = trusted_signatures(source, subject, keys, what=what)
    pending = records.pending() if records is not None else None
    verified = check_model(signatures, manifest_hashes(files_from or source, manifest, pending), what=what)
    if pending is not None:
        pending.commit()  # what a refused model's layers hold is never remembered
    return verified


def check_listed(signatures: Sequence[Signature], manifest: Manifest, *, what: str) -> Verified | None:
    """The check before any layer is read: compare the signed files with what the manifest says.

    A manifest that lists every file (ModelPack raw layers) is compared whole: the :class:`Verified` result.
    One that keeps some files in tar (or compressed) layers is checked as far as it can say, and None is
    returned when that part matches (the layers are then read and compared whole): every raw layer must
    be a signed file with its digest, and a model whose raw layers already hold every signed file may not
    have other layers (they could only add unsigned files).  The ormb format (one tar layer): None.
    """
    listed = manifest_files(manifest)
    if listed is not None:
        return check_model(signatures, listed_hashes(listed), what=what)
    if not modelpack.is_modelpack(manifest):
        return None
    raw: list[SignedFile] = []
    other = 0
    for item in modelpack.layer_files(manifest):
        algorithm, _, hexpart = item.descriptor.digest.partition(":")
        if item.packing == "raw" and item.path is not None and algorithm == "sha256":
            raw.append(SignedFile(str(item.path), hexpart, item.descriptor.size))
        else:
            other += 1
    present = listed_hashes(raw).digests()
    first: VerificationError | None = None
    for signature in signatures:
        try:
            check_files(signature.signed, present, complete=False)
            if other and set(signature.signed.files) <= set(present):
                raise VerificationError(f"every signed file is in a raw layer, and the model has {other} more "
                                        "layer(s), which could only add files its signature does not list")
        except VerificationError as exc:
            first = first or _refusal(what, exc)
            continue
        return None
    assert first is not None, "check_listed needs at least one signature"
    raise first


def listed_hashes(listed: Sequence[SignedFile]) -> FileHashes:
    """The files a manifest lists (one raw layer each), put together by export's rule: one path is
    written by one layer only (:func:`union_of_layers`), so two layers at one path are refused."""
    layers = []
    for item in listed:
        one = FileHashes()
        one.file(item.path, item.sha256, item.size or 0)
        layers.append((f"the layer of {item.path}", one))
    return union_of_layers(layers)


def manifest_hashes(source: Fetcher, manifest: Manifest, records: FileRecords | None = None) -> FileHashes:
    """The model's files with their digests: from the manifest alone where it can say, else read."""
    listed = manifest_files(manifest)
    if listed is None:
        return model_files(source, manifest, records)
    return listed_hashes(listed)


def first_bundle(source: SignatureSource, subject: Descriptor, *, what: str) -> bytes:
    """The bundle of the model's first signature, unverified (to hand to another verifier)."""
    for entry in source.referrers(subject.digest, SIGNATURE_ARTIFACT_TYPE):
        if is_signature(entry):
            desc = Descriptor(mediatypes.OCI_MANIFEST, entry.digest, entry.size)
            manifest = parse_node(fetch_bytes(source, desc, MAX_MANIFEST), desc.media_type).to_manifest()
            return fetch_bytes(source, bundle_layer(manifest, subject), MAX_SIGNATURE_BUNDLE)
    raise NotFoundError(f"{what} has no signature", "sign it with 'ormb sign REF --key KEY.pem'")


class _Listed:
    """A :class:`SignatureSource` over a fetcher and a referrers list someone else made (the catalog)."""

    def __init__(self, fetcher: Fetcher, referrers: Sequence[Descriptor]) -> None:
        self._fetcher, self._referrers = fetcher, list(referrers)

    def fetch(self, desc: Descriptor) -> AbstractContextManager[Readable]:
        return self._fetcher.fetch(desc)

    def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        return [r for r in self._referrers if artifact_type is None or r.artifact_type == artifact_type]


def catalog_status(fetcher: Fetcher, manifest_desc: Descriptor, manifest: Manifest, referrers: Sequence[Descriptor],
                   trusted_keys: Sequence[PublicKey], *, read_layers: bool = False,
                   records: FileRecords | None = None) -> tuple[str | None, str]:
    """For a registry's catalog page: (fingerprint of the trusted key whose signature verifies and
    matches the model's files, ``""``) or (None, why not: one line for a tooltip).

    ``fetcher`` reads the repository's blobs (the signature manifests and bundles: a few KB each);
    ``referrers`` is what the registry lists for ``manifest_desc``.  The files are compared from the
    manifest (ModelPack); a model whose files are inside a tar layer (the ormb format) is compared
    only with ``read_layers`` (it reads the whole layer; ``records`` remembers the result).
    """
    if not trusted_keys:
        return None, "no trusted keys are configured"
    what = "the model"
    source = _Listed(fetcher, referrers)
    try:
        refuse_subject(manifest, what=what)
        signatures = trusted_signatures(source, manifest_desc, trusted_keys, what=what)
        listed = manifest_files(manifest)
        if listed is None and not read_layers:
            return None, (f"signed by key {signatures[0].fingerprint[:16]}, but its files were not compared: "
                          "they are inside a tar layer")
        pending = records.pending() if records is not None else None
        verified = check_model(signatures, manifest_hashes(fetcher, manifest, pending), what=what)
        if pending is not None:
            pending.commit()
    except OrmbError as exc:
        return None, exc.message
    return verified.fingerprint, ""
