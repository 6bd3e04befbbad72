"""Content digests: parsing, hashing, and a writer that hashes what passes through it."""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO

from ormb.errors import IntegrityError

_ALGORITHMS = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^(sha256|sha512):([a-f0-9]+)$")


def is_digest(value: str) -> bool:
    match = _DIGEST_RE.match(value)
    return bool(match) and len(match.group(2)) == _ALGORITHMS[match.group(1)]  # type: ignore[union-attr]


def validate_digest(value: str) -> str:
    """Return ``value`` if it is a well-formed sha256/sha512 digest, else raise."""
    if not is_digest(value):
        raise IntegrityError(
            f"invalid digest {value!r}", "a digest looks like sha256:<64 lowercase hex characters>"
        )
    return value


def split_digest(value: str) -> tuple[str, str]:
    algorithm, _, hexpart = validate_digest(value).partition(":")
    return algorithm, hexpart


def new_hasher(digest: str = "sha256:") -> hashlib._Hash:
    algorithm = digest.partition(":")[0] or "sha256"
    return hashlib.new(algorithm)


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def digest_file(stream: BinaryIO, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> tuple[str, int]:
    """Hash a stream to its end; return (digest, size)."""
    hasher = hashlib.new(algorithm)
    size = 0
    while chunk := stream.read(chunk_size):
        hasher.update(chunk)
        size += len(chunk)
    return f"{algorithm}:{hasher.hexdigest()}", size
