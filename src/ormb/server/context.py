"""What every handler is given: the storage, the authorisation decision, the settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ormb.server.authz import Authoriser
from ormb.server.http import Request, Response
from ormb.server.names import RegistryNames
from ormb.server.storage_api import Storage


@dataclass
class Context:
    storage: Storage
    authz: Authoriser
    ui: bool = True  # serve the web catalog at /
    sparse: bool = False  # accept manifests whose blobs or child manifests were not pushed
    names: RegistryNames = field(default_factory=RegistryNames)  # what the catalog calls this registry


Handler = Callable[[Context, Request, str, str], Response]  # (context, request, repository, path argument)
