"""A staging directory inside the export destination, written only through directory descriptors.

Who may be hostile: the layers (anyone who can push to a registry the user pulls from) and other
local users who can write into the destination.  What this module promises: nothing outside the
destination is created, written, linked or removed, whatever the layers hold and whatever links
are planted in the destination; and the destination either receives the whole export or is left as
it was.  How:

- The destination is opened once (the user's own path, links in it followed as the user meant);
  from then on every name is looked up relative to a directory descriptor.  The staging directory
  is made inside it with mode 0700, so no other user can plant anything in it.
- Directories are walked one component at a time with ``O_DIRECTORY | O_NOFOLLOW``: a symlink on
  the way is refused, never followed.  Files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``.
  Nothing is ever written through a link; a later entry of a tar layer replaces an earlier file or
  link of the same layer (``unlinkat``), never a directory and never another layer's entry.
  Every directory made is charged to the export's :class:`~ormb.model.budget.ExpansionBudget`.
- A symlink is accepted only if, resolved at the end against what is on disk in the staging tree,
  it reaches an existing entry inside it; every component of that resolution was written by this
  export, so after the move it resolves the same way inside the destination.
- A hard link must end at a regular file this layer created, checked by the inode it resolves to.
- The move into place is checked first (a directory where a file goes, a directory the user may not
  write, a file system mounted inside the destination, another user's file in a sticky directory),
  so those move nothing.  Then it renames entry by entry between directory descriptors: a new entry
  with ``renameat2(RENAME_NOREPLACE)`` (a directory that appeared meanwhile, another export's, is
  merged into), an existing one with ``RENAME_EXCHANGE`` (atomic: the old entry lands in staging, a
  link planted in the destination is swapped out, not followed).  Every rename is journaled; if one
  fails, the journal is undone in reverse and the destination is as it was.  Where ``renameat2`` is
  missing, the old entry is moved to a backup directory inside staging first (the same journal).
- Each staging directory is locked (``flock``) while its export runs and holds a marker file made
  with ``O_EXCL`` after the lock, named like the directory.  The next export into the destination
  removes a staging directory only if it is provably an abandoned one of this user's: a directory
  owned by the effective uid, mode 0700, holding its marker (a regular file of the same owner), and
  nobody holds its lock.  Anything else of that name is left alone.  The destination itself is
  never locked, so no other user can make an export wait.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import stat
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ormb.errors import OrmbError, StorageError, UnsafeArchiveError
from ormb.model.budget import ExpansionBudget

Parts = tuple[str, ...]

STAGING_PREFIX = ".ormb-export-"
MAX_DEPTH = 128  # path components below the destination; deeper paths are refused (no model needs them)
MAX_LINK_HOPS = 40  # symlinks followed while resolving one, as Linux allows (ELOOP)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIRS = 64  # directory descriptors kept open while writing

RENAME_NOREPLACE = 1  # linux/fs.h
RENAME_EXCHANGE = 2


def _load_renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28, some musl)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()
_HAVE_RENAMEAT2 = _RENAMEAT2 is not None


def _renameat(src_fd: int, src: str, dst_fd: int, dst: str, flags: int = 0) -> None:
    """``renameat2(src_fd, src, dst_fd, dst, flags)``; ``flags`` 0 is ``renameat``.  Every rename of the move
    into place goes through here."""
    if not flags:
        os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return
    if _RENAMEAT2 is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), src)
    if _RENAMEAT2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), src)


def _unsafe(message: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{message}; refusing")


def _check_name(parts: Parts) -> None:
    """A name at the top that the next export would take for an abandoned staging directory is refused."""
    if parts and parts[0].startswith(STAGING_PREFIX):
        raise _unsafe(f"the name {parts[0]!r} is reserved for ormb's staging directories")


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


# What a journal entry of the move says was done, so that it can be undone
_NEW, _EXCHANGED, _BACKED_UP = "new", "exchanged", "backed up"


class StagingTree:
    """The staging root as a directory descriptor, and every operation an export needs below it.

    Paths are tuples of names (``("model", "w.bin")``); the caller has removed ``.``, ``..`` and
    empty names.  Methods raise :class:`UnsafeArchiveError` for what the content asks that is not
    allowed and :class:`StorageError` (naming the path in the destination) for what the disk refuses.
    """

    def __init__(self, root_fd: int, shown_as: Path, budget: ExpansionBudget | None = None, marker: str = "") -> None:
        self.root_fd = root_fd
        self.marker = marker  # the staging directory's name in the destination
        self.budget = budget or ExpansionBudget()
        self._shown_as = shown_as
        self._backup_name = marker + ".old"  # where replaced entries wait when renameat2 is missing
        self._private = frozenset({marker, self._backup_name}) if marker else frozenset()  # staging's own names
        self._dirs: OrderedDict[Parts, int] = OrderedDict()
        self._symlinks: set[Parts] = set()
        self._layer: set[Parts] | None = None  # files and links the current tar layer made (it may replace them)
        self._exchange = _HAVE_RENAMEAT2
        self._backups = 0

    def show(self, parts: Parts) -> str:
        """Where ``parts`` will be in the destination, for messages."""
        return str(self._shown_as.joinpath(*parts))

    def _storage_error(self, parts: Parts, exc: OSError) -> StorageError | UnsafeArchiveError:
        if exc.errno in (errno.ENAMETOOLONG, errno.EILSEQ):
            return _unsafe(f"the path {'/'.join(parts)!r} is not a valid name on this file system ({exc.strerror})")
        return StorageError(f"cannot write {self.show(parts)}: {exc.strerror}")

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def begin_layer(self, replaceable: bool) -> None:
        """A new layer starts: with ``replaceable`` (a tar layer) a later entry may replace an earlier
        file or link of the same layer, as tar does; an entry of another layer is never replaced."""
        self._layer = set() if replaceable else None

    # -- directories ---------------------------------------------------------------------------

    def directory(self, parts: Parts, *, create: bool = True) -> int:
        """A descriptor of the directory at ``parts``, made if needed; owned by the tree (do not close).

        Valid until the next call into the tree.  A symlink or a file on the way is refused.
        """
        if not parts:
            return self.root_fd
        if len(parts) > MAX_DEPTH:
            raise _unsafe(f"the path {'/'.join(parts[:8])}/... is deeper than {MAX_DEPTH} directories")
        fd = self._dirs.get(parts)
        if fd is not None:
            self._dirs.move_to_end(parts)
            return fd
        _check_name(parts)
        parent = self.directory(parts[:-1], create=create)
        fd = self._open_dir(parent, parts, create)
        self._dirs[parts] = fd
        if len(self._dirs) > _OPEN_DIRS:
            os.close(self._dirs.popitem(last=False)[1])
        return fd

    def _open_dir(self, parent: int, parts: Parts, create: bool) -> int:
        name = parts[-1]
        for attempt in range(2):
            try:
                return os.open(name, _DIR, dir_fd=parent)
            except FileNotFoundError:
                if not create or attempt:
                    raise _unsafe(f"{'/'.join(parts)} is not a directory this export wrote") from None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    kind = "a symbolic link" if self._is_link(parent, name) else "a file"
                    raise _unsafe(f"{'/'.join(parts)} is {kind}; nothing is written through it") from None
                raise self._storage_error(parts, exc) from None
            self.budget.entry("/".join(parts))  # charged before it is made: a layer of deep paths stops here
            try:
                os.mkdir(name, 0o755, dir_fd=parent)
            except FileExistsError:
                pass  # made meanwhile: open it (and check it) again
            except OSError as exc:
                raise self._storage_error(parts, exc) from None
        raise AssertionError("unreachable")

    @staticmethod
    def _is_link(parent: int, name: str) -> bool:
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def _make_room(self, parent: int, parts: Parts) -> None:
        """Remove the file or link at ``parts`` so a later entry of the same tar layer can take its place;
        never a directory, never another layer's entry."""
        name = parts[-1]
        try:
            there = _lstat(name, parent)
        except OSError as exc:
            raise self._storage_error(parts, exc) from None
        if there is None:
            return
        if stat.S_ISDIR(there.st_mode):
            raise _unsafe(f"an entry would replace the directory {'/'.join(parts)} with a file or link")
        if self._layer is None or parts not in self._layer:
            raise _unsafe(f"two layers write {'/'.join(parts)}")
        try:
            os.unlink(name, dir_fd=parent)
        except OSError as exc:
            raise self._storage_error(parts, exc) from None
        self._symlinks.discard(parts)

    def _made(self, parts: Parts) -> None:
        if self._layer is not None:
            self._layer.add(parts)

    # -- files and links -----------------------------------------------------------------------

    def create_file(self, parts: Parts, mode: int = 0o666) -> int:
        """A new regular file at ``parts`` opened for writing (the caller closes it).

        An earlier file or link of the same tar layer at ``parts`` goes first (a later tar entry wins);
        anything else there (another layer's, a directory) is refused.
        """
        _check_name(parts)
        parent = self.directory(parts[:-1])
        for attempt in range(2):
            try:
                fd = os.open(parts[-1], _NEW_FILE, mode, dir_fd=parent)
            except FileExistsError:
                if attempt:
                    raise _unsafe(f"two entries or layers write {'/'.join(parts)}") from None
                self._make_room(parent, parts)
                continue
            except OSError as exc:
                raise self._storage_error(parts, exc) from None
            self._made(parts)
            return fd
        raise AssertionError("unreachable")

    def symlink(self, parts: Parts, target: str) -> None:
        """A symlink at ``parts``; whether it stays inside is checked by :meth:`check_links` at the end."""
        if not target or target.startswith("/") or "\0" in target:
            raise _unsafe(f"{'/'.join(parts)} is a symbolic link to {target!r}, an absolute or empty path")
        _check_name(parts)
        parent = self.directory(parts[:-1])
        for attempt in range(2):
            try:
                os.symlink(target, parts[-1], dir_fd=parent)
                break
            except FileExistsError:
                if attempt:
                    raise _unsafe(f"two entries write {'/'.join(parts)}") from None
                self._make_room(parent, parts)
            except OSError as exc:
                raise self._storage_error(parts, exc) from None
        self._symlinks.add(parts)
        self._made(parts)

    def hard_link(self, parts: Parts, source: Parts, inodes: set[tuple[int, int]]) -> None:
        """A hard link at ``parts`` to ``source``, which must be a regular file whose inode is in ``inodes``."""
        refused = _unsafe(f"{'/'.join(parts)} is a hard link to {'/'.join(source)}, which is not a file "
                          "written before it in the same layer")
        try:
            source_parent = os.dup(self.directory(source[:-1], create=False))
        except UnsafeArchiveError:
            raise refused from None
        try:
            _check_name(parts)
            parent = self.directory(parts[:-1])
            for attempt in range(2):
                try:  # linkat without AT_SYMLINK_FOLLOW: a link at ``source`` is linked itself, then refused
                    os.link(source[-1], parts[-1], src_dir_fd=source_parent, dst_dir_fd=parent,
                            follow_symlinks=False)
                    break
                except FileExistsError:
                    if attempt:
                        raise refused from None
                    self._make_room(parent, parts)
                except OSError as exc:
                    if exc.errno == errno.EMLINK:
                        raise _unsafe(f"{'/'.join(parts)} is one hard link to {'/'.join(source)} too many: the "
                                      "file system allows no more hard links to one file") from None
                    if exc.errno in (errno.ENOENT, errno.EPERM, errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
                        raise refused from None
                    raise self._storage_error(parts, exc) from None
            made = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISREG(made.st_mode) or (made.st_dev, made.st_ino) not in inodes:
                os.unlink(parts[-1], dir_fd=parent)
                raise refused
        finally:
            os.close(source_parent)
        self._symlinks.discard(parts)
        self._made(parts)

    def write_metadata(self, parts: Parts, data: bytes) -> None:
        """``data`` at ``parts``, where no layer may have put anything: written under a fresh name
        (``O_EXCL | O_NOFOLLOW``), then renamed into place."""
        parent = self.directory(parts[:-1])
        if _lstat(parts[-1], parent) is not None:
            raise UnsafeArchiveError(f"a layer writes {'/'.join(parts)}, where the export writes the model's metadata; "
                                     "refusing", "export with --no-metadata to keep the layer's file; nothing was written")
        fresh = f".{parts[-1]}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(fresh, _NEW_FILE, 0o666, dir_fd=parent)
        except OSError as exc:
            raise self._storage_error(parts, exc) from None
        try:
            try:
                with open(fd, "wb", closefd=False) as out:
                    out.write(data)
            finally:
                os.close(fd)
            os.rename(fresh, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
        except OSError as exc:
            try:
                os.unlink(fresh, dir_fd=parent)
            except OSError:
                pass
            raise self._storage_error(parts, exc) from None

    # -- the check at the end ------------------------------------------------------------------

    def keep_only(self, files: Iterable[Parts], mode: int) -> None:
        """For a verified export: make the tree exactly ``files`` (the checked ones), each with the
        permission bits ``mode``, and the directories they are in.

        A directory a layer made that holds none of them (an empty ``.git/``, ``hooks/``) goes; a file's
        mode is ``mode`` whatever the layer said (a signature records no modes, so exec or set-uid bits
        from an unsigned layer are not kept).  Anything else (a file not in ``files``, a link) is refused.
        """
        wanted = set(files)
        needed = {f[:end] for f in wanted for end in range(1, len(f))}
        self.close()  # the cached descriptors may name directories removed here
        self._keep(self.root_fd, (), wanted, needed, mode)

    def _keep(self, fd: int, parts: Parts, wanted: set[Parts], needed: set[Parts], mode: int) -> None:
        try:
            entries = _entries(fd)
        except OSError as exc:
            raise self._storage_error(parts, exc) from None
        for name, is_dir in sorted(entries):
            if not parts and name in self._private:
                continue
            here = (*parts, name)
            try:
                if is_dir:
                    child = os.open(name, _DIR, dir_fd=fd)
                    try:
                        self._keep(child, here, wanted, needed, mode)
                    finally:
                        os.close(child)
                    if here not in needed:  # empty now: a file in it would be wanted, and it needed
                        os.rmdir(name, dir_fd=fd)
                    continue
                if here not in wanted:
                    raise _unsafe(f"{'/'.join(here)} was written but is not a checked file")
                file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
                try:
                    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
                        raise _unsafe(f"{'/'.join(here)} is not a regular file")
                    os.fchmod(file_fd, mode)
                finally:
                    os.close(file_fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _unsafe(f"{'/'.join(here)} is a symbolic link") from None
                raise self._storage_error(here, exc) from None

    def check_links(self) -> None:
        """Every symlink of the tree must resolve, on disk, to an existing entry inside the tree."""
        for parts in sorted(self._symlinks):
            self._resolve(parts)

    def _resolve(self, parts: Parts) -> None:
        where: list[str] = list(parts[:-1])  # the directory the next component is looked up in
        parent = self.directory(tuple(where), create=False)
        try:
            pending = os.readlink(parts[-1], dir_fd=parent).split("/")
        except OSError as exc:
            raise self._storage_error(parts, exc) from None
        hops = 1
        shown = "/".join(parts)
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if not where:
                    raise _unsafe(f"the symbolic link {shown} points outside the destination")
                where.pop()
                continue
            directory = self.directory(tuple(where), create=False)
            try:
                mode = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode
            except (FileNotFoundError, NotADirectoryError):
                raise _unsafe(f"the symbolic link {shown} points to nothing this export wrote") from None
            except OSError as exc:
                raise self._storage_error(parts, exc) from None
            if stat.S_ISLNK(mode):
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise _unsafe(f"the symbolic link {shown} is part of a loop or a chain too long")
                try:
                    target = os.readlink(name, dir_fd=directory)
                except OSError as exc:
                    raise self._storage_error(parts, exc) from None
                if target.startswith("/"):
                    raise _unsafe(f"the symbolic link {shown} leads to the absolute path {target!r}")
                pending[:0] = target.split("/")
            elif stat.S_ISDIR(mode):
                where.append(name)
            elif pending:
                raise _unsafe(f"the symbolic link {shown} goes through the file {name}")

    # -- moving into place ---------------------------------------------------------------------

    def move_into(self, dest_fd: int) -> None:
        """Move everything staged into the directory ``dest_fd``: files and links replace what is there,
        directories merge.  All or nothing: a check first finds what would stop the move (nothing moves),
        then the renames are journaled and undone if one of them fails."""
        self.close()
        self._check_move(self.root_fd, dest_fd, (), os.fstat(self.root_fd).st_dev)
        journal: list[tuple[Parts, str, str]] = []
        try:
            self._move(self.root_fd, dest_fd, (), journal)
        except (OrmbError, OSError) as exc:
            left = self._undo(journal, dest_fd)
            error = exc if isinstance(exc, OrmbError) else StorageError(f"cannot move into {self.show(())}: {exc}")
            if not journal:
                raise error from None
            undone = (f"{left} of the entries moved before could not be put back" if left else
                      "the destination was put back as it was")
            raise StorageError(f"{error.message}; {undone}", error.hint) from None

    def _check_move(self, src: int, dst: int, parts: Parts, device: int) -> None:
        """Find what would stop the move before anything moves: a directory where a file goes, a
        directory the user may not write, a file system mounted inside the destination (rename(2) cannot
        cross it), another user's entry in a sticky directory (the user may not replace it)."""
        try:
            entries = _entries(src)
            there_dir = os.fstat(dst)
        except OSError as exc:
            raise self._storage_error(parts, exc) from None
        entries = [(name, is_dir) for name, is_dir in entries if parts or name not in self._private]
        if not entries:
            return
        if there_dir.st_dev != device:
            raise StorageError(f"cannot export into {self.show(parts)}: another file system is mounted there",
                               "export into a directory with no file system mounted inside it")
        if not os.access(".", os.W_OK | os.X_OK, dir_fd=dst, effective_ids=True):
            raise StorageError(f"cannot write in {self.show(parts)}: {os.strerror(errno.EACCES)}")
        euid = os.geteuid()
        sticky = bool(there_dir.st_mode & stat.S_ISVTX) and euid != 0
        for name, is_dir in entries:
            here = (*parts, name)
            try:
                there = _lstat(name, dst)
            except OSError as exc:
                raise self._storage_error(here, exc) from None
            if there is None:
                continue
            if stat.S_ISDIR(there.st_mode):
                if not is_dir:
                    raise StorageError(f"cannot export {self.show(here)}: a directory of that name is in the way",
                                       "move it away first")
                with self._both(src, dst, here) as (src_child, dst_child):
                    self._check_move(src_child, dst_child, here, device)
                continue
            if sticky and there.st_uid not in (euid, there_dir.st_uid):
                raise StorageError(f"cannot replace {self.show(here)}: it belongs to another user (uid "
                                   f"{there.st_uid}) and {self.show(parts)} is sticky",
                                   "ask its owner to remove it, or export somewhere else")

    def _move(self, src: int, dst: int, parts: Parts, journal: list[tuple[Parts, str, str]]) -> None:
        try:
            entries = _entries(src)
        except OSError as exc:
            raise self._storage_error(parts, exc) from None
        for name, is_dir in entries:
            if not parts and name in self._private:
                continue
            here = (*parts, name)
            try:
                there = _lstat(name, dst)
                if there is None:
                    if self._place(src, dst, name, is_dir):
                        journal.append((here, _NEW, ""))
                        continue
                    there = _lstat(name, dst)  # another export's, made meanwhile
                    if there is None:
                        raise OSError(errno.EAGAIN, "it appeared and vanished while it was moved")
                if stat.S_ISDIR(there.st_mode):
                    if not is_dir:
                        raise StorageError(f"cannot export {self.show(here)}: a directory of that name is in the "
                                           "way", "move it away first")
                    with self._both(src, dst, here) as (src_child, dst_child):
                        self._move(src_child, dst_child, here, journal)
                    continue
                self._replace(src, dst, here, journal)
            except OrmbError:
                raise
            except OSError as exc:
                if exc.errno == errno.EXDEV:
                    raise StorageError(f"cannot move {self.show(here)} into place: another file system is mounted "
                                       "on the way", "export into a directory with no file system mounted inside it") from None
                raise StorageError(f"cannot move {self.show(here)} into place: {exc.strerror}") from None

    def _place(self, src: int, dst: int, name: str, is_dir: bool) -> bool:
        """Rename ``name`` into ``dst`` where nothing is; False if something is there after all."""
        if self._exchange:
            try:
                _renameat(src, name, dst, name, RENAME_NOREPLACE)
                return True
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    return False
                if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                self._exchange = False  # this file system (or libc) cannot: plain renames from here on
        try:
            _renameat(src, name, dst, name)
        except OSError as exc:
            if is_dir and exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False  # a directory that is not empty, made meanwhile: merge into it
            raise
        return True

    def _replace(self, src: int, dst: int, here: Parts, journal: list[tuple[Parts, str, str]]) -> None:
        """Put the staged entry at ``here`` in place of the file or link the destination has there."""
        name = here[-1]
        if self._exchange:
            try:
                _renameat(src, name, dst, name, RENAME_EXCHANGE)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                self._exchange = False
            else:
                journal.append((here, _EXCHANGED, ""))
                back = _lstat(name, src)  # what was swapped out: a directory put there meanwhile is not ours to remove
                if back is not None and stat.S_ISDIR(back.st_mode):
                    raise StorageError(f"cannot export {self.show(here)}: a directory of that name appeared in the "
                                       "way", "move it away first")
                return
        backup = str(self._backups)
        self._backups += 1
        backups = self._backup_directory()
        try:
            _renameat(dst, name, backups, backup)
            journal.append((here, _BACKED_UP, backup))
            _renameat(src, name, dst, name)
            journal.append((here, _NEW, ""))
        finally:
            os.close(backups)

    def _backup_directory(self) -> int:
        """Where replaced entries wait (without renameat2) until the move is done; inside staging."""
        try:
            os.mkdir(self._backup_name, 0o700, dir_fd=self.root_fd)
        except FileExistsError:
            pass
        return os.open(self._backup_name, _DIR, dir_fd=self.root_fd)

    def _undo(self, journal: list[tuple[Parts, str, str]], dest_fd: int) -> int:
        """Undo the journal, last rename first; returns how many entries could not be put back."""
        failed = 0
        for here, what, backup in reversed(journal):
            opened: list[int] = []
            try:
                staged = _open_path(self.root_fd, here[:-1], opened)
                placed = _open_path(dest_fd, here[:-1], opened)
                if what == _NEW:
                    _renameat(placed, here[-1], staged, here[-1])
                elif what == _EXCHANGED:
                    _renameat(staged, here[-1], placed, here[-1], RENAME_EXCHANGE)
                else:
                    backups = _open_path(self.root_fd, (self._backup_name,), opened)
                    _renameat(backups, backup, placed, here[-1])
            except OSError:
                failed += 1
            finally:
                for fd in opened:
                    os.close(fd)
        return failed

    @contextmanager
    def _both(self, src: int, dst: int, here: Parts) -> Iterator[tuple[int, int]]:
        """The directory ``here`` in staging and in the destination, both opened with ``O_NOFOLLOW``."""
        try:
            src_child = os.open(here[-1], _DIR, dir_fd=src)
        except OSError as exc:
            raise self._storage_error(here, exc) from None
        try:
            try:
                dst_child = os.open(here[-1], _DIR, dir_fd=dst)
            except OSError as exc:  # replaced by a link since it was looked at: not followed
                raise self._storage_error(here, exc) from None
            try:
                yield src_child, dst_child
            finally:
                os.close(dst_child)
        finally:
            os.close(src_child)


def _open_path(root: int, parts: Parts, opened: list[int]) -> int:
    """The directory at ``parts`` below ``root``, each component opened with ``O_NOFOLLOW``; every
    descriptor opened is appended to ``opened`` (the caller closes them)."""
    fd = root
    for name in parts:
        fd = os.open(name, _DIR, dir_fd=fd)
        opened.append(fd)
    return fd


def _entries(fd: int) -> list[tuple[str, bool]]:
    with os.scandir(fd) as it:
        return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]


def clear_directory(fd: int) -> None:
    """Remove everything inside the open directory ``fd``, never following a link.

    Raises OSError when something cannot be removed.  Iterative: a deep tree planted by someone
    else costs no recursion; past ``MAX_DEPTH`` (deeper than any export writes) it stops.
    """
    stack: list[tuple[int, str, list[tuple[str, bool]]]] = [(fd, "", _entries(fd))]
    try:
        while stack:
            current, own_name, entries = stack[-1]
            if entries:
                child, is_dir = entries.pop()
                if not is_dir:
                    os.unlink(child, dir_fd=current)
                    continue
                if len(stack) > MAX_DEPTH + 8:
                    raise OSError(errno.ELOOP, "too deep to remove", child)
                child_fd = os.open(child, _DIR, dir_fd=current)
                try:
                    stack.append((child_fd, child, _entries(child_fd)))
                except BaseException:
                    os.close(child_fd)
                    raise
                continue
            stack.pop()
            if stack:  # a child directory, now empty
                os.close(current)
                os.rmdir(own_name, dir_fd=stack[-1][0])
    finally:
        for current, _, _ in stack[1:]:
            os.close(current)


def _same(fd: int, parent_fd: int, name: str) -> bool:
    """Whether ``name`` in ``parent_fd`` is still the directory ``fd`` (not swapped by someone)."""
    try:
        there = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        return False
    here = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)


def _remove_staging(dest_fd: int, name: str, fd: int) -> None:
    """Empty the staging directory through its descriptor, then remove its name if it is still it."""
    try:
        clear_directory(fd)
        if _same(fd, dest_fd, name):
            os.rmdir(name, dir_fd=dest_fd)
    except OSError:
        pass  # best effort: the next export into this destination tries again


def _ours(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700


def _abandoned(dest_fd: int, name: str) -> int | None:
    """A descriptor of ``name`` in ``dest_fd``, locked, if it is provably an abandoned staging directory of
    this user's: a directory owned by the effective uid, mode 0700, holding its marker (a regular file of
    the same name and owner, which only an export by this user puts there), whose lock nobody holds."""
    try:
        if not _ours(os.stat(name, dir_fd=dest_fd, follow_symlinks=False)):
            return None
        fd = os.open(name, _DIR, dir_fd=dest_fd)
    except OSError:
        return None
    try:
        marker = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if _ours(os.fstat(fd)) and stat.S_ISREG(marker.st_mode) and marker.st_uid == os.geteuid():
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: an export at work
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _remove_abandoned(dest_fd: int) -> None:
    """Remove the staging directories of this user's exports that are gone (killed); leave anything else."""
    try:
        names = [name for name, is_dir in _entries(dest_fd) if is_dir and name.startswith(STAGING_PREFIX)]
    except OSError:
        return
    for name in names:
        fd = _abandoned(dest_fd, name)
        if fd is None:
            continue
        try:
            _remove_staging(dest_fd, name, fd)
        finally:
            os.close(fd)


def _new_staging(dest_fd: int) -> tuple[str, int]:
    """Clean up after this user's killed exports, then make, lock and mark this export's staging directory.

    The marker is made after the lock, so a staging directory with its marker is always locked while its
    export runs: a cleanup never sees one that is in use and unlocked.  Where locks do not work (some
    network file systems) nothing is ever removed: nothing that might be in use.
    """
    _remove_abandoned(dest_fd)
    name = STAGING_PREFIX + secrets.token_hex(8)
    os.mkdir(name, 0o700, dir_fd=dest_fd)
    fd = os.open(name, _DIR, dir_fd=dest_fd)
    try:
        os.fchmod(fd, 0o700)  # whatever the umask took away
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # no locks here; see above
        os.close(os.open(name, _NEW_FILE, 0o600, dir_fd=fd))
    except BaseException:
        _remove_staging(dest_fd, name, fd)
        os.close(fd)
        raise
    return name, fd


def _make_directories(dest: Path) -> list[Path]:
    """Make ``dest`` and its missing parents; the ones this call made, outermost first."""
    missing: list[Path] = []
    path = dest
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    made: list[Path] = []
    try:
        for path in reversed(missing):
            try:
                os.mkdir(path)
            except FileExistsError:
                continue  # someone else's, made meanwhile
            made.append(path)
    except OSError:
        _remove_directories(made)
        raise
    return made


def _remove_directories(made: list[Path]) -> None:
    """Remove what :func:`_make_directories` made, innermost first, as long as each is empty."""
    for path in reversed(made):
        try:
            os.rmdir(path)
        except OSError:
            return


@contextmanager
def staged_directory(dest: Path, budget: ExpansionBudget | None = None) -> Iterator[StagingTree]:
    """A staging tree inside ``dest``; its content moves into ``dest`` only if the block succeeds.

    On failure the staging directory goes, and so do ``dest`` and its parents if this call made them
    (and they are empty).
    """
    try:
        made = _make_directories(dest)
    except OSError as exc:
        raise StorageError(f"cannot create {dest}: {exc.strerror}") from None
    ok = False
    try:
        try:
            dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(f"cannot create {dest}: {exc.strerror}") from None
        try:
            try:
                name, root_fd = _new_staging(dest_fd)
            except OSError as exc:
                raise StorageError(f"cannot write in {dest}: {exc.strerror}") from None
            tree = StagingTree(root_fd, dest, budget, marker=name)
            try:
                yield tree
                tree.move_into(dest_fd)
                ok = True
            finally:
                tree.close()
                _remove_staging(dest_fd, name, root_fd)
                os.close(root_fd)
        finally:
            os.close(dest_fd)
    finally:
        if not ok:
            _remove_directories(made)
