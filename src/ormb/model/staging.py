"""A staging directory inside the export destination, written only through directory descriptors.

Who may be hostile: the layers (anyone who can push to a registry the user pulls from) and other
local users who can write into the destination.  What this module promises: nothing outside the
destination is created, written, linked or removed, whatever the layers hold and whatever links
are planted in the destination.  How:

- The destination is opened once (the user's own path, links in it followed as the user meant);
  from then on every name is looked up relative to a directory descriptor.  The staging directory
  is made inside it with mode 0700, so no other user can plant anything in it.
- Directories are walked one component at a time with ``O_DIRECTORY | O_NOFOLLOW``: a symlink on
  the way is refused, never followed.  Files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``.
  Nothing is ever written through a link; a later entry of the same name replaces an earlier
  file or link (``unlinkat``), never a directory.
- A symlink is accepted only if, resolved at the end against what is on disk in the staging tree,
  it reaches an existing entry inside it; every component of that resolution was written by this
  export, so after the move it resolves the same way inside the destination.
- A hard link must end at a regular file this layer created, checked by the inode it resolves to.
- The move into place renames entry by entry between directory descriptors (``renameat``), which
  replaces a link planted in the destination instead of following it; a directory of the
  destination is entered only with ``O_NOFOLLOW``.  Conflicts (a directory where a file goes) are
  found before anything moves.
- Each staging directory holds an exclusive ``flock`` while its export runs; the next export into
  the same destination removes those nobody holds (a killed export's leftovers).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ormb.errors import StorageError, UnsafeArchiveError

Parts = tuple[str, ...]

STAGING_PREFIX = ".ormb-export-"
MAX_DEPTH = 128  # path components below the destination; deeper paths are refused (no model needs them)
MAX_LINK_HOPS = 40  # symlinks followed while resolving one, as Linux allows (ELOOP)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIRS = 64  # directory descriptors kept open while writing


def _unsafe(message: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{message}; refusing")


def _check_name(parts: Parts) -> None:
    """A name at the top that the next export would take for an abandoned staging directory is refused."""
    if parts and parts[0].startswith(STAGING_PREFIX):
        raise _unsafe(f"the name {parts[0]!r} is reserved for ormb's staging directories")


class StagingTree:
    """The staging root as a directory descriptor, and every operation an export needs below it.

    Paths are tuples of names (``("model", "w.bin")``); the caller has removed ``.``, ``..`` and
    empty names.  Methods raise :class:`UnsafeArchiveError` for what the content asks that is not
    allowed and :class:`StorageError` (naming the path in the destination) for what the disk refuses.
    """

    def __init__(self, root_fd: int, shown_as: Path) -> None:
        self.root_fd = root_fd
        self._shown_as = shown_as
        self._dirs: OrderedDict[Parts, int] = OrderedDict()
        self._symlinks: set[Parts] = set()

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

    def _clear(self, parent: int, parts: Parts) -> None:
        """Remove the file or link at ``parts`` so a later entry can take its place; never a directory."""
        name = parts[-1]
        try:
            mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._storage_error(parts, exc) from None
        if stat.S_ISDIR(mode):
            raise _unsafe(f"an entry would replace the directory {'/'.join(parts)} with a file or link")
        try:
            os.unlink(name, dir_fd=parent)
        except OSError as exc:
            raise self._storage_error(parts, exc) from None
        self._symlinks.discard(parts)

    # -- files and links -----------------------------------------------------------------------

    def create_file(self, parts: Parts, *, replace: bool, mode: int = 0o666) -> int:
        """A new regular file at ``parts`` opened for writing (the caller closes it).

        With ``replace`` an earlier file or link of that name goes first (a later tar entry wins);
        without, any existing entry is refused (two layers claim one path).
        """
        _check_name(parts)
        parent = self.directory(parts[:-1])
        for attempt in range(2):
            try:
                return os.open(parts[-1], _NEW_FILE, mode, dir_fd=parent)
            except FileExistsError:
                if not replace or attempt:
                    raise _unsafe(f"two entries or layers write {'/'.join(parts)}") from None
                self._clear(parent, parts)
            except OSError as exc:
                raise self._storage_error(parts, exc) from None
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
                self._clear(parent, parts)
            except OSError as exc:
                raise self._storage_error(parts, exc) from None
        self._symlinks.add(parts)

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
                    self._clear(parent, parts)
                except OSError as exc:
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

    def write_whole(self, parts: Parts, data: bytes) -> None:
        """``data`` at ``parts``: written under a fresh name (``O_EXCL | O_NOFOLLOW``), then renamed over
        whatever a layer put there (a file or a link is replaced, not followed)."""
        parent = self.directory(parts[:-1])
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
            os.replace(fresh, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
        except OSError as exc:
            try:
                os.unlink(fresh, dir_fd=parent)
            except OSError:
                pass
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):  # rename(2) onto a directory
                raise _unsafe(f"a layer put a directory where {'/'.join(parts)} goes") from None
            raise self._storage_error(parts, exc) from None
        self._symlinks.discard(parts)

    # -- the check at the end ------------------------------------------------------------------

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
        directories merge.  First checks for a directory in the way and for directories it may not
        write, so those move nothing; an error of the renames themselves (rare: a full directory
        block, a race with another user) can leave some files moved, each one whole."""
        self.close()
        self._walk_move(self.root_fd, dest_fd, (), check=True)
        self._walk_move(self.root_fd, dest_fd, (), check=False)

    def _walk_move(self, src: int, dst: int, parts: Parts, *, check: bool) -> None:
        try:
            entries = _entries(src)
        except OSError as exc:
            raise self._storage_error(parts, exc) from None
        if check and entries and not os.access(".", os.W_OK | os.X_OK, dir_fd=dst, effective_ids=True):
            raise StorageError(f"cannot write in {self.show(parts)}: {os.strerror(errno.EACCES)}")
        for name, is_dir in entries:
            here = (*parts, name)
            try:
                there = os.stat(name, dir_fd=dst, follow_symlinks=False)
            except FileNotFoundError:
                there = None
            except OSError as exc:
                raise self._storage_error(here, exc) from None
            there_is_dir = there is not None and stat.S_ISDIR(there.st_mode)
            if check:
                if not is_dir and there_is_dir:
                    raise StorageError(f"cannot export {self.show(here)}: a directory of that name is in the way",
                                       "move it away first")
                if is_dir and there_is_dir:
                    self._descend(src, dst, here, check=True)
                continue
            if is_dir and there_is_dir:
                self._descend(src, dst, here, check=False)
                continue
            try:
                if is_dir and there is not None:  # a file or a link (planted?) where a directory goes
                    os.unlink(name, dir_fd=dst)
                os.replace(name, name, src_dir_fd=src, dst_dir_fd=dst)
            except OSError as exc:
                raise self._storage_error(here, exc) from None

    def _descend(self, src: int, dst: int, here: Parts, *, check: bool) -> None:
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
                self._walk_move(src_child, dst_child, here, check=check)
            finally:
                os.close(dst_child)
        finally:
            os.close(src_child)


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


def _remove_abandoned(dest_fd: int) -> None:
    """Remove the staging directories of exports that are gone (killed): nobody holds their lock."""
    try:
        names = [name for name, is_dir in _entries(dest_fd) if is_dir and name.startswith(STAGING_PREFIX)]
    except OSError:
        return
    for name in names:
        try:
            fd = os.open(name, _DIR, dir_fd=dest_fd)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # held: an export at work
            continue
        try:
            _remove_staging(dest_fd, name, fd)
        finally:
            os.close(fd)


def _new_staging(dest_fd: int) -> tuple[str, int]:
    """Clean up after killed exports, then make and lock this export's staging directory (mode 0700).

    The destination's own lock is held only meanwhile, so a staging directory is never seen
    unlocked between its creation and its lock.  Where locks do not work (some network file
    systems) nothing is cleaned up: nothing is removed that might be in use.
    """
    try:
        fcntl.flock(dest_fd, fcntl.LOCK_EX)
        locked = True
    except OSError:
        locked = False
    try:
        if locked:
            _remove_abandoned(dest_fd)
        name = STAGING_PREFIX + secrets.token_hex(8)
        os.mkdir(name, 0o700, dir_fd=dest_fd)
        fd = os.open(name, _DIR, dir_fd=dest_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # no locks here; see above
        return name, fd
    finally:
        if locked:
            fcntl.flock(dest_fd, fcntl.LOCK_UN)


@contextmanager
def staged_directory(dest: Path) -> Iterator[StagingTree]:
    """A staging tree inside ``dest``; its content moves into ``dest`` only if the block succeeds.

    On failure the staging directory goes, and so does ``dest`` if this call made it (and it is empty).
    """
    created = not os.path.lexists(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"cannot create {dest}: {exc.strerror}") from None
    ok = False
    try:
        try:
            name, root_fd = _new_staging(dest_fd)
        except OSError as exc:
            raise StorageError(f"cannot write in {dest}: {exc.strerror}") from None
        tree = StagingTree(root_fd, dest)
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
        if not ok and created:
            try:
                os.rmdir(dest)
            except OSError:
                pass
