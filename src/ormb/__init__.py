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

from typing import TYPE_CHECKING, Any

from ormb._version import __version__
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

if TYPE_CHECKING:  # what type checkers (and the architecture test) see; at run time each name is imported on use
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
    from ormb.model.ormbfile import Metadata
    from ormb.oci.reference import Reference, parse_reference
    from ormb.registry.credentials import Credential
    from ormb.registry.options import TransportOptions

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

# name -> the module it comes from, imported on first use (PEP 562): `import ormb` and the CLI's start-up
# do not pay for pydantic, urllib3 and the packers until something needs them (the errors are light: above)
_LAZY = {
    **dict.fromkeys(["ExportResult", "KeyResult", "ModelDetails", "ModelSummary", "PruneResult", "SaveResult",
                     "SignResult", "TransferResult", "VerifyResult", "export", "generate_key", "init", "inspect",
                     "inspect_remote", "login", "logout", "models", "prune", "pull", "push", "remove", "save", "sign",
                     "tag", "tags", "verify", "version"], "ormb.api"),
    **dict.fromkeys(["Settings", "load_settings"], "ormb.config"),
    "Metadata": "ormb.model.ormbfile",
    "Reference": "ormb.oci.reference",
    "parse_reference": "ormb.oci.reference",
    "Credential": "ormb.registry.credentials",
    "TransportOptions": "ormb.registry.options",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ormb' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later look-ups find it without coming here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
