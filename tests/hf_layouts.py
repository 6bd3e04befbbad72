"""Hugging Face download layouts, built as huggingface_hub lays them out (no network)."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

SAFETENSORS = struct.pack("<Q", 2) + b"{}" + os.urandom(4096)
FILES = {"config.json": b'{"model_type": "tiny"}', "model.safetensors": SAFETENSORS,
         "tokenizer.json": b'{"version": "1.0"}', "README.md": b"---\nlicense: mit\n---\n# tiny"}


def hf_cache_snapshot(root: Path, revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """``hub/models--acme--tiny/snapshots/<revision>/``: each file a relative symlink into ``../../blobs/``."""
    repo = root / "hub" / "models--acme--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / revision
    for name, data in FILES.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot
