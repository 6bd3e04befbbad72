"""ormb: docker push/pull for machine-learning models, on any OCI registry.

The public API, hand-picked::

    import ormb
    ormb.save("./model", "localhost:5000/team/fashion:v1")
    ormb.export("localhost:5000/team/fashion:v1", "/models/fashion")
"""

from __future__ import annotations

__version__ = "0.1.0"

from ormb.api import (
    ExportResult,
    ModelDetails,
    ModelSummary,
    PruneResult,
    SaveResult,
    export,
    inspect,
    models,
    prune,
    remove,
    save,
    tag,
    version,
)
from ormb.config import Settings, load_settings
from ormb.errors import (
    IntegrityError,
    InvalidArtifactError,
    InvalidReferenceError,
    MetadataError,
    ModelFormatError,
    NotFoundError,
    OrmbError,
    StorageError,
    UnsafeArchiveError,
)
from ormb.model.ormbfile import Metadata
from ormb.oci.reference import Reference, parse_reference

__all__ = [
    "ExportResult", "IntegrityError", "InvalidArtifactError", "InvalidReferenceError", "Metadata", "MetadataError",
    "ModelDetails", "ModelFormatError", "ModelSummary", "NotFoundError", "OrmbError", "PruneResult", "Reference",
    "SaveResult", "Settings", "StorageError", "UnsafeArchiveError", "__version__", "export", "inspect",
    "load_settings", "models", "parse_reference", "prune", "remove", "save", "tag", "version",
]
