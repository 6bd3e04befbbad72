"""Signed models: the OpenSSF model-signing format (``model_signing`` 1.x), over OCI referrers.

- :mod:`ormb.signing.keys`: private keys that sign, public keys (and trust directories) that verify.
- :mod:`ormb.signing.bundle`: the bundle itself: :func:`sign_files` from (path, SHA-256) pairs,
  :func:`verify_bundle`, and :func:`check_files` against a model's actual files.
- :mod:`ormb.signing.referrer`: the bundle stored as an OCI referrer of the model manifest, and
  the file list a model's manifest gives (:func:`manifest_files`).
- :mod:`ormb.signing.files`: every file of a model with its SHA-256 (from the manifest, or by
  reading a tar layer once), and :class:`FileRecords`, the cache's memory of layers read.
- :mod:`ormb.signing.verify`: a model's signatures found, verified and compared with its files;
  :func:`catalog_status` for a registry's catalog page.

Layering: signing sits beside ``model`` (it reads model manifests) and below ``api``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# at run time each name is imported on first use (PEP 562): the CLI's start-up and the light constants
# (ormb.signing.names) do not pay for cryptography
if TYPE_CHECKING:
    from ormb.signing.bundle import (
        BUNDLE_MEDIA_TYPE,
        GIT_PATHS,
        PREDICATE_TYPE,
        SignedFile,
        SignedFiles,
        check_files,
        sign_files,
        verify_bundle,
    )
    from ormb.signing.files import FileRecords, model_files, signed_files, tar_layer_files
    from ormb.signing.keys import (
        PrivateKey,
        PublicKey,
        generate_key_pair,
        load_private_key,
        load_public_key,
        load_trust_dir,
        trusted_keys,
        verification_keys,
    )
    from ormb.signing.names import ALGORITHMS, PASSWORD_ENV
    from ormb.signing.referrer import (
        SIGNATURE_ARTIFACT_TYPE,
        SignatureArtifact,
        bundle_layer,
        export_ignore_paths,
        is_signature,
        manifest_files,
        signature_artifact,
    )
    from ormb.signing.verify import (
        Signature,
        Verified,
        catalog_status,
        check_listed,
        check_model,
        manifest_hashes,
        refuse_subject,
        trusted_signatures,
        verify_manifest,
    )

__all__ = [
    "ALGORITHMS", "BUNDLE_MEDIA_TYPE", "GIT_PATHS", "PASSWORD_ENV", "PREDICATE_TYPE", "SIGNATURE_ARTIFACT_TYPE",
    "FileRecords", "PrivateKey", "PublicKey", "Signature", "SignatureArtifact", "SignedFile", "SignedFiles",
    "Verified", "bundle_layer", "catalog_status", "check_files", "check_listed", "check_model", "export_ignore_paths",
    "generate_key_pair", "is_signature", "load_private_key", "load_public_key", "load_trust_dir", "manifest_files",
    "manifest_hashes", "model_files", "refuse_subject", "sign_files", "signature_artifact", "signed_files",
    "tar_layer_files", "trusted_keys", "trusted_signatures", "verification_keys", "verify_bundle", "verify_manifest",
]

_LAZY = {
    **dict.fromkeys(["BUNDLE_MEDIA_TYPE", "GIT_PATHS", "PREDICATE_TYPE", "SignedFile", "SignedFiles", "check_files",
                     "sign_files", "verify_bundle"], "ormb.signing.bundle"),
    **dict.fromkeys(["FileRecords", "model_files", "signed_files", "tar_layer_files"], "ormb.signing.files"),
    **dict.fromkeys(["ALGORITHMS", "PASSWORD_ENV"], "ormb.signing.names"),
    **dict.fromkeys(["PrivateKey", "PublicKey", "generate_key_pair", "load_private_key", "load_public_key",
                     "load_trust_dir", "trusted_keys", "verification_keys"], "ormb.signing.keys"),
    **dict.fromkeys(["SIGNATURE_ARTIFACT_TYPE", "SignatureArtifact", "bundle_layer", "export_ignore_paths",
                     "is_signature", "manifest_files", "signature_artifact"], "ormb.signing.referrer"),
    **dict.fromkeys(["Signature", "Verified", "catalog_status", "check_listed", "check_model", "manifest_hashes",
                     "refuse_subject", "trusted_signatures", "verify_manifest"], "ormb.signing.verify"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ormb.signing' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
