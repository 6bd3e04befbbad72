"""ormb: docker push/pull for machine-learning models, on any OCI registry.

The public API, hand-picked::

    import ormb
    ormb.save("./model", "localhost:5000/team/fashion:v1")
    ormb.push("localhost:5000/team/fashion:v1")
    ormb.pull("localhost:5000/team/fashion:v1")
    ormb.export("localhost:5000/team/fashion:v1", "/models/fashion")
    ormb.sign("localhost:5000/team/fashion:v1", "team.pem")          # then push carries the signature
    ormb.pull("localhost:5000/team/fashion:v1", verify_key="team.pub")
"""

from __future__ import annotations

from ormb._version import __version__
from ormb.api import (
    ExportResult,
    KeyResult,
    ModelDetails,
    ModelSummary,
    PruneResult,
    SaveResult,
    SignResult,
    TransferResult,
    VerifyResult,
    export,
    generate_key,
    init,
    inspect,
    inspect_remote,
    login,
    logout,
    models,
    prune,
    pull,
    push,
    remove,
    save,
    sign,
    tag,
    tags,
    verify,
    version,
)
from ormb.config import Settings, load_settings
from ormb.errors import (
    AuthenticationError,
    IntegrityError,
    InvalidArtifactError,
    InvalidReferenceError,
    KeyFileError,
    MetadataError,
    ModelFormatError,
    NetworkError,
    NotFoundError,
    OrmbError,
    PermissionDeniedError,
    RegistryError,
    StorageError,
    UnsafeArchiveError,
    UsageError,
    VerificationError,
)
from ormb.model.ormbfile import Metadata
from ormb.oci.reference import Reference, parse_reference
from ormb.registry.credentials import Credential
from ormb.registry.transport import TransportOptions

__all__ = [
    "AuthenticationError", "Credential", "ExportResult", "IntegrityError", "InvalidArtifactError",
    "InvalidReferenceError", "KeyFileError", "KeyResult", "Metadata", "MetadataError", "ModelDetails",
    "ModelFormatError", "ModelSummary", "NetworkError", "NotFoundError", "OrmbError", "PermissionDeniedError",
    "PruneResult", "Reference", "RegistryError", "SaveResult", "Settings", "SignResult", "StorageError",
    "TransferResult", "TransportOptions", "UnsafeArchiveError", "UsageError", "VerificationError", "VerifyResult",
    "__version__", "export", "generate_key", "init", "inspect", "inspect_remote", "load_settings", "login",
    "logout", "models", "parse_reference", "prune", "pull", "push", "remove", "save", "sign", "tag", "tags",
    "verify", "version",
]
