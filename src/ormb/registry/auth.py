"""Auth challenges (``WWW-Authenticate``): Basic, and Bearer tokens per scope.

A token is cached per (realm, service, scope): a pull token is never reused for a push
(a known oras-py bug), and a token is fetched again shortly before it expires.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from dataclasses import dataclass

from ormb.registry.credentials import Credential

_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
DEFAULT_TOKEN_LIFETIME = 60
EXPIRY_MARGIN = 10


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer", lower case
    params: dict[str, str]

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` header, or None when there is none."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()})


def basic_header(credential: Credential) -> str:
    return "Basic " + base64.b64encode(f"{credential.username}:{credential.password}".encode()).decode()


@dataclass
class _Token:
    value: str
    expires: float


class TokenCache:
    """Bearer tokens by (realm, service, scope); thread-safe."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._lock = threading.Lock()

    def get(self, realm: str, service: str, scope: str) -> str | None:
        with self._lock:
            token = self._tokens.get((realm, service, scope))
        if token is None or token.expires - EXPIRY_MARGIN <= time.monotonic():
            return None
        return token.value

    def put(self, realm: str, service: str, scope: str, value: str, lifetime: float | None) -> None:
        expires = time.monotonic() + (lifetime if lifetime and lifetime > 0 else DEFAULT_TOKEN_LIFETIME)
        with self._lock:
            self._tokens[(realm, service, scope)] = _Token(value, expires)

    def drop(self, realm: str, service: str, scope: str) -> None:
        with self._lock:
            self._tokens.pop((realm, service, scope), None)
