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
    hidden: tuple[str, ...] = ()  # hidden files and directories left out (".git/", ".DS_Store")
    outside: tuple[str, ...] = ()  # "path -> target" of links followed out of the directory, for the user to see

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def is_hidden(name: str) -> bool:
    return name.startswith(".") and name not in (".", "..")


def list_model_files(model_dir: Path, *, include_hidden: bool = False, exclude: tuple[str, ...] = ()) -> FileListing:
    """Regular files below ``model_dir`` sorted by path; symlinks to files count as the files they name.

    Symlinks to files are followed, so a Hugging Face cache snapshot (``snapshots/<rev>/``, whose
    files are links into ``../../blobs/``) saves as the real files.  Hidden files and directories
    (a name starting with ``.``: ``.git/``, ``.cache/`` of a ``--local-dir`` download, ``.DS_Store``)
    are left out, as modctl and Docker Model Runner do, and listed in ``hidden``; ``include_hidden``
    keeps them.  ``exclude`` names top-level entries to leave out silently (``ormbfile.yaml`` when
    the files sit beside it).  Symlinks to directories, sockets and devices are skipped and
    reported in ``skipped``.  A link that leads out of ``model_dir`` is followed and reported in
    ``outside``: what it names is packed, and may be pushed, so the user should see it.
    """
    if not model_dir.is_dir():
        raise ModelFormatError(f"{model_dir} is not a directory")
    files: list[ModelFile] = []
    skipped: list[str] = []
    hidden: list[str] = []
    outside: list[str] = []
    root = os.path.realpath(model_dir)
    for dirpath, dirnames, filenames in os.walk(model_dir, onerror=_raise):
        base = Path(dirpath)
        top = base == model_dir
        for dirname in sorted(dirnames):
            if not include_hidden and is_hidden(dirname):
                hidden.append(f"{_rel(model_dir, base / dirname)}/")
                dirnames.remove(dirname)
            elif (base / dirname).is_symlink():
                skipped.append(f"{_rel(model_dir, base / dirname)}: symlink to a directory")
                dirnames.remove(dirname)
        for filename in filenames:
            path = base / filename
            if top and filename in exclude:
                continue
            if not include_hidden and is_hidden(filename):
                hidden.append(str(_rel(model_dir, path)))
                continue
            try:
                info = path.stat()
            except OSError:
                skipped.append(f"{_rel(model_dir, path)}: broken symlink")
                continue
            if not stat.S_ISREG(info.st_mode):
                skipped.append(f"{_rel(model_dir, path)}: not a regular file")
                continue
            if path.is_symlink():
                target = os.path.realpath(path)
                if os.path.commonpath([root, target]) != root:
                    outside.append(f"{_rel(model_dir, path)} -> {target}")
            files.append(ModelFile(_rel(model_dir, path), path, info.st_size, bool(info.st_mode & 0o111)))
    files.sort(key=lambda f: str(f.relative).encode("utf-8", "surrogateescape"))
    return FileListing(tuple(files), tuple(sorted(skipped)), tuple(sorted(hidden)), tuple(sorted(outside)))


def _rel(root: Path, path: Path) -> PurePosixPath:
    return PurePosixPath(path.relative_to(root).as_posix())


def _raise(error: OSError) -> None:
    raise ModelFormatError(f"cannot read {error.filename}: {error.strerror}", "check the directory's permissions")
