"""A snapshot of a directory tree, for tests that check an export left a place exactly as it was."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def snapshot(root: Path) -> dict[str, object]:
    """Everything under ``root``, links not followed: a link's target; a directory's inode, mode and owner; a
    file's SHA-256, inode, link count, mode and owner.  Two snapshots are equal only if nothing was added,
    removed, replaced, rewritten, re-linked, re-moded or given away."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            key = str(path.relative_to(root))
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[key] = ("dir", st.st_ino, mode, st.st_uid)
            else:
                out[key] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), st.st_ino, st.st_nlink, mode,
                            st.st_uid)
    return out
