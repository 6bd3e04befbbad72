"""A signature stored next to its model as an OCI referrer, and the file list a model signs.

The referrer follows the cosign bundle specification (sigstore/cosign specs/BUNDLE_SPEC.md),
so ``cosign``, ``oras discover`` and any OCI 1.1 registry see it for what it is::

    {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
     "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:44136f...", "size": 2},
     "layers": [{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "digest": <bundle>, "size": n}],
     "subject": {"mediaType": <model manifest type>, "digest": <model manifest digest>, "size": n},
     "annotations": {"dev.sigstore.bundle.content": "dsse-envelope",
                     "dev.sigstore.bundle.predicateType": "https://model_signing/signature/v1.0",
                     "org.opencontainers.image.created": <RFC 3339>}}

The registry lists it under the model's digest (referrers API, or the ``sha256-<hex>`` tag
of the fallback schema), with the annotations copied into the index entry.

Which files a model signs, "as they are laid out on export": for ModelPack, the raw layers,
each at its ``org.cncf.model.filepath``, relative to the export directory; a raw layer's digest
*is* its file's SHA-256, so the list comes from the manifest without reading a weight byte
(:func:`manifest_files`).  For the ormb format the files are inside one tar+gzip layer and
relative to the export directory's ``model/``; the manifest does not say their digests, so
they come from reading the layer once (:mod:`ormb.signing.files`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from ormb.errors import InvalidArtifactError, VerificationError
from ormb.model import modelpack, ormbformat
from ormb.model.ormbfile import FILENAME as ORMBFILE
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.oci.grammar import MAX_SIGNATURE_BUNDLE, MAX_SIGNATURE_CONFIG
from ormb.signing.bundle import BUNDLE_MEDIA_TYPE, GIT_PATHS, PREDICATE_TYPE, SignedFile

SIGNATURE_ARTIFACT_TYPE = BUNDLE_MEDIA_TYPE
EMPTY_CONFIG = b"{}"
EMPTY_DESCRIPTOR = Descriptor.of_bytes(mediatypes.OCI_EMPTY, EMPTY_CONFIG)
ANNOTATION_CONTENT = "dev.sigstore.bundle.content"
ANNOTATION_PREDICATE_TYPE = "dev.sigstore.bundle.predicateType"

# What a verifier of an exported ModelPack directory must not count: ormb writes ormbfile.yaml
# beside the files.  (An ormb-format export keeps ormbfile.yaml outside model/, the signed root.)
MODELPACK_EXPORT_IGNORE = (*GIT_PATHS, ORMBFILE)
ORMB_EXPORT_IGNORE = GIT_PATHS


@dataclass(frozen=True)
class SignatureArtifact:
    """The referrer manifest and the two blobs it needs, ready to push to any Target."""

    manifest: Manifest
    manifest_bytes: bytes
    descriptor: Descriptor  # with artifactType and annotations, as an index lists it
    config: tuple[Descriptor, bytes]
    bundle: tuple[Descriptor, bytes]


def signature_artifact(subject: Descriptor, bundle: bytes, created: datetime | None = None) -> SignatureArtifact:
    """The referrer that stores ``bundle`` for the model manifest ``subject``."""
    if len(bundle) > MAX_SIGNATURE_BUNDLE:
        raise InvalidArtifactError(f"the signature is {len(bundle)} bytes; at most {MAX_SIGNATURE_BUNDLE} are allowed")
    when = (created or datetime.now(timezone.utc)).astimezone(timezone.utc)
    annotations = {
        ANNOTATION_CONTENT: "dsse-envelope",
        ANNOTATION_PREDICATE_TYPE: PREDICATE_TYPE,
        mediatypes.ANNOTATION_CREATED: when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    layer = Descriptor.of_bytes(BUNDLE_MEDIA_TYPE, bundle)
    manifest = Manifest(
        config=EMPTY_DESCRIPTOR,
        layers=(layer,),
        artifact_type=SIGNATURE_ARTIFACT_TYPE,
        subject=Descriptor(subject.media_type, subject.digest, subject.size),
        annotations=annotations,
    )
    data = manifest.to_bytes()
    return SignatureArtifact(manifest, data, manifest.descriptor(annotations), (EMPTY_DESCRIPTOR, EMPTY_CONFIG),
                             (layer, bundle))


def is_signature(entry: Descriptor) -> bool:
    """True for a referrers-index entry that is a Sigstore bundle (ours, model_signing's or cosign's)."""
    return entry.artifact_type == SIGNATURE_ARTIFACT_TYPE


def bundle_layer(manifest: Manifest, subject: Descriptor) -> Descriptor:
    """The bundle blob of a signature referrer, after checking that it is one, and for ``subject``."""
    if manifest.artifact_type != SIGNATURE_ARTIFACT_TYPE:
        raise VerificationError(f"the referrer has the artifactType {manifest.artifact_type!r}, not a signature's",
                                "it is not a signature")
    if manifest.subject is None or manifest.subject.digest != subject.digest:
        raise VerificationError("the signature's subject is not this model's manifest",
                                "a registry or a pusher mixed up signatures; do not use this model")
    problem = shape_problem(manifest)
    if problem:
        raise VerificationError(f"the signature referrer {problem}", "it is not a signature ormb can read")
    return manifest.layers[0]


def shape_problem(manifest: Manifest) -> str:
    """What makes ``manifest`` not a signature referrer's shape (``""`` if nothing): exactly one layer, the
    bundle, at most ``grammar.MAX_SIGNATURE_BUNDLE`` bytes, and a config of a few bytes.  Checked before
    anything it names is downloaded: a "signature" with a thousand layers is never fetched."""
    if len(manifest.layers) != 1 or manifest.layers[0].media_type != BUNDLE_MEDIA_TYPE:
        return f"must have exactly one {BUNDLE_MEDIA_TYPE} layer, and has {len(manifest.layers)} layer(s)"
    if manifest.layers[0].size > MAX_SIGNATURE_BUNDLE:
        return f"names a bundle of {manifest.layers[0].size} bytes; at most {MAX_SIGNATURE_BUNDLE} are allowed"
    if manifest.config.size > MAX_SIGNATURE_CONFIG:
        return f"has a config of {manifest.config.size} bytes; at most {MAX_SIGNATURE_CONFIG} are allowed"
    return ""


def manifest_files(manifest: Manifest) -> tuple[SignedFile, ...] | None:
    """The files a model's signature lists, from its manifest alone; None when the manifest cannot
    say (the ormb format, or a ModelPack with tar layers): then read the layers, see the module doc.

    ModelPack: every raw layer's path and digest (a raw layer's digest is its file's SHA-256).
    """
    if not modelpack.is_modelpack(manifest):
        ormbformat.model_layer(manifest)  # raises InvalidArtifactError for what is neither format
        return None
    files = []
    for item in modelpack.layer_files(manifest):
        if item.packing != "raw" or item.path is None:
            return None
        algorithm, _, hexpart = item.descriptor.digest.partition(":")
        if algorithm != "sha256":
            return None
        files.append(SignedFile(str(item.path), hexpart, item.descriptor.size))
    return tuple(files)


def export_ignore_paths(manifest: Manifest) -> tuple[str, ...]:
    """The ``ignore_paths`` to sign with, so ``model_signing verify`` accepts an exported directory."""
    return MODELPACK_EXPORT_IGNORE if modelpack.is_modelpack(manifest) else ORMB_EXPORT_IGNORE
