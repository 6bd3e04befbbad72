"""Content digests: parsing, hashing, and a writer that hashes what passes through it."""

from __future__ import annotations

import hashlib
from typing import BinaryIO

from ormb.errors import IntegrityError
from ormb.oci.grammar import is_digest

__all__ = ["digest_bytes", "digest_file", "is_digest", "new_hasher", "split_digest", "validate_digest"]


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
