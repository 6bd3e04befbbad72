"""The files of a model directory, listed the same way on every machine."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ormb.errors import ModelFormatError


@dataclass(frozen=True)
class ModelFile:
    relative: PurePosixPath  # path below model/, with '/' separators
    path: Path  # where it is on disk
    size: int
    executable: bool

    @property
    def mode(self) -> int:
        return 0o755 if self.executable else 0o644


@dataclass(frozen=True)
class FileListing:
    files: tuple[ModelFile, ...]
    skipped: tuple[str, ...]  # what was left out and why, for the caller to show

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def list_model_files(model_dir: Path) -> FileListing:
    """Regular files below ``model_dir`` sorted by path; symlinks to files count as files.

    Symlinks to directories, sockets and devices are skipped and reported in ``skipped``.
    """
    if not model_dir.is_dir():
        raise ModelFormatError(f"{model_dir} is not a directory")
    files: list[ModelFile] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(model_dir, onerror=_raise):
        base = Path(dirpath)
        for dirname in list(dirnames):
            if (base / dirname).is_symlink():
                skipped.append(f"{_rel(model_dir, base / dirname)}: symlink to a directory")
                dirnames.remove(dirname)
        for filename in filenames:
            path = base / filename
            try:
                info = path.stat()
            except OSError:
                skipped.append(f"{_rel(model_dir, path)}: broken symlink")
                continue
            if not stat.S_ISREG(info.st_mode):
                skipped.append(f"{_rel(model_dir, path)}: not a regular file")
                continue
            files.append(ModelFile(_rel(model_dir, path), path, info.st_size, bool(info.st_mode & 0o111)))
    files.sort(key=lambda f: str(f.relative).encode("utf-8", "surrogateescape"))
    return FileListing(tuple(files), tuple(sorted(skipped)))


def _rel(root: Path, path: Path) -> PurePosixPath:
    return PurePosixPath(path.relative_to(root).as_posix())


def _raise(error: OSError) -> None:
    raise ModelFormatError(f"cannot read {error.filename}: {error.strerror}", "check the directory's permissions")
