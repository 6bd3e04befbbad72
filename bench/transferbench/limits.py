"""The local limits, run as their own processes so they are measured like every tool.

    python limits.py sha256 FILE...               read + SHA-256 with hashlib (1 MiB readinto), print digests
    python limits.py copy_file_range DIR FILE...  copy each FILE into DIR with os.copy_file_range (in-kernel)
"""

from __future__ import annotations

import hashlib
import os
import sys

CHUNK = 1 << 20


def sha256(path: str) -> str:
    hasher = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            hasher.update(view[:n])
    return hasher.hexdigest()


def copy_file_range(source: str, directory: str) -> None:
    with open(source, "rb") as src, open(os.path.join(directory, os.path.basename(source)), "wb") as dst:
        left = os.fstat(src.fileno()).st_size
        while left > 0:
            n = os.copy_file_range(src.fileno(), dst.fileno(), min(left, 1 << 30))
            if n == 0:
                raise OSError(f"copy_file_range stopped early on {source}")
            left -= n


def main(argv: list[str]) -> None:
    if argv[0] == "sha256":
        for path in argv[1:]:
            print(sha256(path), path)
    elif argv[0] == "copy_file_range":
        os.makedirs(argv[1], exist_ok=True)
        for path in argv[2:]:
            copy_file_range(path, argv[1])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
