"""How to reach registries: the options every command that talks to a registry takes.

Apart from :mod:`ormb.registry.transport` so that the CLI can build them without importing urllib3
(start-up: ``ormb --help`` must not pay for the HTTP stack).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TransportOptions:
    """How to reach registries.  ``plain_http=None`` means: plain HTTP for loopback only."""

    plain_http: bool | None = None
    insecure: bool = False
    ca_file: str | None = None
    retries: int = 4
    backoff: float = 0.5
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    chunk_size: int | None = None  # chunked uploads of this size for every blob
    chunked_above: int | None = 4 << 30  # blobs larger than this are uploaded in chunks (None: never)
    concurrency: int = 4
