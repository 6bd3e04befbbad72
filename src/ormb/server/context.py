"""What every handler is given: the storage, the authorisation decision, the settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ormb.server.authz import Authoriser
from ormb.server.http import Request, Response
from ormb.server.names import RegistryNames
from ormb.server.storage_api import Storage
from ormb.signing.keys import PublicKey


@dataclass
class Context:
    storage: Storage
    authz: Authoriser
    ui: bool = True  # serve the web catalog at /
    sparse: bool = False  # accept manifests whose blobs or child manifests were not pushed
    names: RegistryNames = field(default_factory=RegistryNames)  # what the catalog calls this registry
    trusted_keys: tuple[PublicKey, ...] = ()  # whose signatures the catalog shows as "signed" (--trust-key/--trust-dir)
    file_records: Path | None = None  # where the catalog remembers the files of tar layers it hashed for a signature


Handler = Callable[[Context, Request, str, str], Response]  # (context, request, repository, path argument)
