"""The registry's storage: blob files in one content-addressed store, metadata in SQLite (WAL).

::

    <root>/
      blobs/<algorithm>/<hex>    every blob and manifest, shared by all repositories
      uploads/<id>               data of upload sessions in progress (flock: the request holding it)
      tmp/                       manifests being written
      registry.db                repositories, blob links, manifests, tags, referrers, uploads
      store.lock                 flock: installing a blob and sweeping one exclude each other
      reserve                    a few MiB kept free so gc and check can run on a full disk
      secret                     the key that signs this registry's tokens

Everything is private to the registry's user: directories 0700, files 0600, whatever the umask
(another local user reads no model, no session, no token key).

The promises, and what holds each:

- **A row never points at a missing or unverified file.**  A blob file is fsynced and renamed
  into ``blobs/`` before the row that makes it visible commits, and the row commits before the
  client is told "created".  A file without a row is invisible: the next verified upload of
  that digest *replaces* it (it is never trusted), and ``gc`` removes it.
- **One request at a time per upload session**: a request holds the session's file with
  ``flock``; a second one gets :class:`UploadConflict` (416).  The session's running hash
  is kept only for bytes written under that lock, so the digest a ``PUT`` checks is the
  digest of the bytes on disk.
- **gc never removes what was acknowledged**: grace is counted from when a link or session was
  last touched (an upload, a mount, a ``HEAD``), links a manifest references are kept, and a
  file is unlinked only under ``store.lock`` after re-reading the database (the commit path
  installs under the same lock).

Locks are ``flock`` on files, so they hold between threads, worker processes and a separate
``ormb registry gc``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ormb.content.atomic import install_file, staged_file
from ormb.content.background import BackgroundHasher, BackgroundWriter
from ormb.errors import OrmbError
from ormb.oci.descriptor import layers_size
from ormb.oci.grammar import ALGORITHMS, IO_CHUNK, is_digest
from ormb.oci.graph import parse_node
from ormb.server.storage_api import ManifestRecord, TagRecord, UploadConflict

SCHEMA = """
CREATE TABLE IF NOT EXISTS repositories (name TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS blob_links (repository TEXT NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (repository, digest));
CREATE TABLE IF NOT EXISTS manifests (repository TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL,
    artifact_type TEXT, size INTEGER NOT NULL, subject TEXT, annotations TEXT, created REAL NOT NULL,
    PRIMARY KEY (repository, digest));
CREATE INDEX IF NOT EXISTS manifests_subject ON manifests (repository, subject);
CREATE TABLE IF NOT EXISTS manifest_refs (repository TEXT NOT NULL, manifest TEXT NOT NULL, child TEXT NOT NULL,
    PRIMARY KEY (repository, manifest, child));
CREATE INDEX IF NOT EXISTS manifest_refs_child ON manifest_refs (repository, child);
CREATE TABLE IF NOT EXISTS tags (repository TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL,
    updated REAL NOT NULL, PRIMARY KEY (repository, tag));
CREATE TABLE IF NOT EXISTS uploads (id TEXT PRIMARY KEY, repository TEXT NOT NULL, size INTEGER NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS layer_files (digest TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (digest, path));
CREATE TABLE IF NOT EXISTS layer_documents (digest TEXT NOT NULL, path TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (digest, path));
CREATE TABLE IF NOT EXISTS token_generations (user TEXT PRIMARY KEY, generation INTEGER NOT NULL);
"""
# Added after the first release: when a link or an upload session was last touched (gc's grace).
MIGRATIONS = [("blob_links", "touched"), ("uploads", "touched")]
# Added later: a manifest's size as every page shows it (oci.descriptor.layers_size), set when it is pushed,
# as decimal text (declared sizes are any JSON integer, beyond SQLite's 64 bits); NULL for an index.
LAYERS_SIZE = "layers_size"

RESERVE_BYTES = 8 << 20
TOUCH_EVERY = 60.0  # a HEAD/GET refreshes a link at most this often (a write per read would be costly)


@dataclass(frozen=True)
class GcResult:
    blobs: int  # blob files removed
    bytes: int  # bytes freed by them
    links: int  # repository links dropped (unreferenced, older than the grace)
    uploads: int  # upload sessions dropped


@dataclass(frozen=True)
class CheckResult:
    blobs: int  # blob rows checked
    missing: list[str]  # rows without a file
    corrupt: list[str]  # files whose bytes do not match their digest
    orphans: list[str]  # files without a row (invisible; gc removes them)
    repaired: bool


class Store:
    """Files + SQLite; safe for many threads and processes (one SQLite connection per thread)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private(self.root)
        for sub in ("blobs", "uploads", "tmp", *(f"blobs/{a}" for a in ALGORITHMS)):
            (self.root / sub).mkdir(mode=0o700, exist_ok=True)
            _private(self.root / sub)
        self.db_path = self.root / "registry.db"
        self.file_records_dir = self.root / "signed-files"  # the catalog's file digests of signed layers (--trust-key)
        os.close(os.open(self.db_path, os.O_RDWR | os.O_CREAT, 0o600))  # SQLite gives -wal and -shm its mode
        for name in ("registry.db", "registry.db-wal", "registry.db-shm"):
            _private(self.root / name)
        self._local = threading.local()
        self._hashers: dict[str, tuple[int, Any]] = {}  # session -> (size, running sha256 of those bytes)
        self._hashers_lock = threading.Lock()
        self.db.executescript(SCHEMA)
        self._migrate()
        self.secret = self._secret()
        self.keep_reserve()

    # -- set-up -------------------------------------------------------------------------------
    def after_fork(self) -> None:
        """In a forked worker: SQLite connections and locks are not shared with the parent."""
        self._local = threading.local()
        self._hashers = {}
        self._hashers_lock = threading.Lock()

    def _migrate(self) -> None:
        for table, column in MIGRATIONS:
            columns = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} REAL NOT NULL DEFAULT 0")
        if LAYERS_SIZE not in {row[1] for row in self.db.execute("PRAGMA table_info(manifests)")}:
            self._add_layers_size()

    def _add_layers_size(self) -> None:
        """Add the column and fill it for the manifests pushed before it existed (read once, here)."""
        with self.transaction() as db:
            if LAYERS_SIZE in {row[1] for row in db.execute("PRAGMA table_info(manifests)")}:
                return  # another process did it first
            db.execute(f"ALTER TABLE manifests ADD COLUMN {LAYERS_SIZE} TEXT")
            rows = db.execute("SELECT DISTINCT digest, media_type, size FROM manifests").fetchall()
            for digest, media_type, size in rows:
                try:
                    with open(self.blob_path(digest), "rb") as f:
                        node = parse_node(f.read(int(size) + 1), media_type)
                except (OSError, OrmbError):
                    continue  # `ormb registry check` reports a missing or damaged file
                if node.kind == "manifest":
                    db.execute(f"UPDATE manifests SET {LAYERS_SIZE} = ? WHERE digest = ?",
                               (str(layers_size(node.layers)), digest))

    def _secret(self) -> bytes:
        path = self.root / "secret"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            secret = os.urandom(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secret)
            return secret

    def keep_reserve(self) -> None:
        """Hold :data:`RESERVE_BYTES` of disk (best effort) for gc and check on a full disk."""
        path = self.root / "reserve"
        try:
            if path.exists() and path.stat().st_size == RESERVE_BYTES:
                return
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError:
            path.unlink(missing_ok=True)

    def release_reserve(self) -> None:
        (self.root / "reserve").unlink(missing_ok=True)

    # -- database -----------------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _store_lock(self) -> Iterator[None]:
        fd = os.open(self.root / "store.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _ensure_repository(self, db: sqlite3.Connection, repository: str) -> None:
        db.execute("INSERT OR IGNORE INTO repositories VALUES (?, ?)", (repository, time.time()))

    # -- blobs --------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        """Only for digests of the grammar: nothing else ever reaches the filesystem."""
        if not is_digest(digest):
            raise ValueError(f"not a digest: {digest[:100]!r}")
        algorithm, _, hexpart = digest.partition(":")
        return self.root / "blobs" / algorithm / hexpart

    def linked(self, repository: str, digest: str) -> int | None:
        row = self.db.execute(
            "SELECT b.size, l.touched FROM blob_links l JOIN blobs b ON b.digest = l.digest "
            "WHERE l.repository = ? AND l.digest = ?", (repository, digest),
        ).fetchone()
        if row is None:
            return None
        now = time.time()
        if row[1] < now - TOUCH_EVERY:  # a client that saw "exists" will reference it soon: keep it
            with self.transaction() as db:
                db.execute("UPDATE blob_links SET touched = ? WHERE repository = ? AND digest = ?",
                           (now, repository, digest))
        return int(row[0])

    def open_blob(self, repository: str, digest: str) -> BinaryIO | None:
        if not is_digest(digest) or self.linked(repository, digest) is None:
            return None
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            return None

    def link(self, repository: str, digest: str) -> bool:
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone() is None:
                return False
            self._ensure_repository(db, repository)
            db.execute("INSERT OR REPLACE INTO blob_links (repository, digest, touched) VALUES (?, ?, ?)",
                       (repository, digest, time.time()))
        return True

    def linked_from(self, digest: str, limit: int) -> list[str]:
        rows = self.db.execute("SELECT repository FROM blob_links WHERE digest = ? ORDER BY repository LIMIT ?",
                               (digest, limit))
        return [r[0] for r in rows]

    def unlink(self, repository: str, digest: str) -> bool:
        with self.transaction() as db:
            return db.execute("DELETE FROM blob_links WHERE repository = ? AND digest = ?",
                              (repository, digest)).rowcount > 0

    def _install(self, repository: str, digest: str, size: int, staged: Path) -> None:
        """Install verified bytes as ``digest`` and link them; under the store lock (see module doc)."""
        target = self.blob_path(digest)
        with self._store_lock(), self.transaction() as db:
            if db.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone() is None:
                install_file(None, staged, target)  # replaces any file no row vouches for
                db.execute("INSERT INTO blobs VALUES (?, ?, ?)", (digest, size, time.time()))
            self._ensure_repository(db, repository)
            db.execute("INSERT OR REPLACE INTO blob_links (repository, digest, touched) VALUES (?, ?, ?)",
                       (repository, digest, time.time()))
        staged.unlink(missing_ok=True)

    # -- upload sessions ----------------------------------------------------------------------
    def _session_path(self, session: str) -> Path:
        return self.root / "uploads" / session

    def new_session(self, repository: str) -> str:
        session = uuid.uuid4().hex
        fd = os.open(self._session_path(session), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # gc must not take the file for an orphan before the row exists
            now = time.time()
            with self.transaction() as db:
                self._ensure_repository(db, repository)
                db.execute("INSERT INTO uploads (id, repository, size, created, touched) VALUES (?, ?, 0, ?, ?)",
                           (session, repository, now, now))
        except BaseException:
            self._session_path(session).unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        return session

    def session_size(self, repository: str, session: str) -> int | None:
        if not session.isalnum() or not session.isascii():
            return None
        row = self.db.execute("SELECT size FROM uploads WHERE id = ? AND repository = ?",
                              (session, repository)).fetchone()
        if row is None or not self._session_path(session).exists():  # a cancel on a full disk leaves the row
            return None
        return int(row[0])

    @contextmanager
    def open_session(self, repository: str, session: str) -> Iterator[_Session]:
        if self.session_size(repository, session) is None:
            raise LookupError(session)
        try:
            fd = os.open(self._session_path(session), os.O_RDWR)
        except FileNotFoundError:
            raise LookupError(session) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UploadConflict("another request is writing to this upload session") from None
            size = self.session_size(repository, session)  # re-read under the lock
            if size is None:
                raise LookupError(session)
            yield _Session(self, repository, session, fd, size)
        finally:
            os.close(fd)

    def _end_session(self, session: str) -> None:
        """Remove the session's data, then its row (which a full disk may refuse: the session is gone
        either way, and gc drops the row later)."""
        self._session_path(session).unlink(missing_ok=True)
        with self._hashers_lock:
            self._hashers.pop(session, None)
        try:
            with self.transaction() as db:
                db.execute("DELETE FROM uploads WHERE id = ?", (session,))
        except sqlite3.OperationalError:
            if not _disk_full(self.root):
                raise

    def _running_hasher(self, session: str, fd: int, size: int) -> Any:
        """sha256 of the session's first ``size`` bytes: remembered from our own writes, else read from disk."""
        with self._hashers_lock:
            known = self._hashers.get(session)
        if known and known[0] == size:
            return known[1].copy()  # a copy: a request that breaks off must not touch the session's state
        return _hash_fd(fd, "sha256", size)

    # -- manifests and tags -------------------------------------------------------------------
    def put_manifest(self, record: ManifestRecord, data: bytes, children: list[str], blobs: list[str],
                     tags: list[str], *, sparse: bool = False) -> list[str]:
        now = time.time()
        with self._store_lock(), self.transaction() as db:
            missing = [d for d in blobs if db.execute(
                "SELECT 1 FROM blob_links WHERE repository = ? AND digest = ?", (record.repository, d)).fetchone() is None]
            missing += [d for d in children if db.execute(
                "SELECT 1 FROM manifests WHERE repository = ? AND digest = ?", (record.repository, d)).fetchone() is None]
            if missing and not sparse:
                return missing
            db.executemany("UPDATE blob_links SET touched = ? WHERE repository = ? AND digest = ?",
                           [(now, record.repository, d) for d in blobs])
            if db.execute("SELECT 1 FROM blobs WHERE digest = ?", (record.digest,)).fetchone() is None:
                with staged_file(self.root / "tmp", "manifest-", 0o600) as (file, path):
                    file.write(data)
                    install_file(file, path, self.blob_path(record.digest))
                db.execute("INSERT INTO blobs VALUES (?, ?, ?)", (record.digest, record.size, now))
            self._ensure_repository(db, record.repository)
            db.execute(
                "INSERT OR REPLACE INTO manifests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.repository, record.digest, record.media_type, record.artifact_type, record.size,
                 record.subject, json.dumps(record.annotations), record.created,
                 None if record.layers_size is None else str(record.layers_size)),
            )
            db.executemany("INSERT OR IGNORE INTO manifest_refs VALUES (?, ?, ?)",
                           [(record.repository, record.digest, child) for child in [*blobs, *children]])
            db.executemany("INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?)",
                           [(record.repository, tag, record.digest, now) for tag in tags])
        return []

    def manifest(self, repository: str, digest: str) -> ManifestRecord | None:
        row = self.db.execute("SELECT * FROM manifests WHERE repository = ? AND digest = ?",
                              (repository, digest)).fetchone()
        return _manifest_record(row) if row else None

    def manifest_bytes(self, record: ManifestRecord) -> bytes:
        with open(self.blob_path(record.digest), "rb") as f:
            return f.read(record.size + 1)

    def resolve_tag(self, repository: str, tag: str) -> str | None:
        row = self.db.execute("SELECT digest FROM tags WHERE repository = ? AND tag = ?", (repository, tag)).fetchone()
        return str(row[0]) if row else None

    def delete_manifest(self, repository: str, digest: str) -> bool:
        with self.transaction() as db:
            gone = db.execute("DELETE FROM manifests WHERE repository = ? AND digest = ?",
                              (repository, digest)).rowcount
            db.execute("DELETE FROM manifest_refs WHERE repository = ? AND manifest = ?", (repository, digest))
            db.execute("DELETE FROM tags WHERE repository = ? AND digest = ?", (repository, digest))
        return gone > 0

    def delete_tag(self, repository: str, tag: str) -> bool:
        with self.transaction() as db:
            return db.execute("DELETE FROM tags WHERE repository = ? AND tag = ?", (repository, tag)).rowcount > 0

    def repository_exists(self, repository: str) -> bool:
        return self.db.execute("SELECT 1 FROM repositories WHERE name = ?", (repository,)).fetchone() is not None

    def tags(self, repository: str, last: str | None = None, limit: int | None = None) -> list[str]:
        query = "SELECT tag FROM tags WHERE repository = ?" + (" AND tag > ?" if last else "") + " ORDER BY tag"
        params: tuple[Any, ...] = (repository, last) if last else (repository,)
        if limit is not None:
            query += " LIMIT ?"
            params += (limit,)
        return [r[0] for r in self.db.execute(query, params)]

    def tag_records(self, repository: str) -> list[TagRecord]:
        rows = self.db.execute(
            f"SELECT t.tag, t.digest, t.updated, m.{LAYERS_SIZE} FROM tags t "
            "LEFT JOIN manifests m ON m.repository = t.repository AND m.digest = t.digest "
            "WHERE t.repository = ? ORDER BY t.updated DESC",
            (repository,),
        )
        return [TagRecord(r[0], r[1], r[2], None if r[3] is None else int(r[3])) for r in rows]

    def catalog(self, last: str | None = None, limit: int | None = None) -> list[str]:
        query = "SELECT name FROM repositories" + (" WHERE name > ?" if last else "") + " ORDER BY name"
        params: tuple[Any, ...] = (last,) if last else ()
        if limit is not None:
            query += " LIMIT ?"
            params += (limit,)
        return [r[0] for r in self.db.execute(query, params)]

    def referrers(self, repository: str, subject: str) -> list[ManifestRecord]:
        rows = self.db.execute("SELECT * FROM manifests WHERE repository = ? AND subject = ? ORDER BY digest",
                               (repository, subject))
        return [_manifest_record(r) for r in rows]

    def layer_files(self, digest: str) -> list[tuple[str, int]] | None:
        rows = self.db.execute("SELECT path, size FROM layer_files WHERE digest = ? ORDER BY path", (digest,))
        found = [(r[0], int(r[1])) for r in rows]
        return found or None

    def remember_layer_files(self, digest: str, files: list[tuple[str, int]],
                             documents: dict[str, bytes] | None = None) -> None:
        self.remember_layer_listings([(digest, files, documents or {})])

    def remember_layer_listings(self, listings: list[tuple[str, list[tuple[str, int]], dict[str, bytes]]]) -> None:
        if not listings:
            return
        with self.transaction() as db:  # one commit (and fsync) for all the layers a page read
            for digest, files, documents in listings:
                db.executemany("INSERT OR IGNORE INTO layer_files VALUES (?, ?, ?)", [(digest, p, s) for p, s in files])
                db.executemany("INSERT OR REPLACE INTO layer_documents VALUES (?, ?, ?)",
                               [(digest, p, data) for p, data in documents.items()])

    def layer_document(self, digest: str, path: str) -> bytes | None:
        row = self.db.execute("SELECT data FROM layer_documents WHERE digest = ? AND path = ?", (digest, path)).fetchone()
        return bytes(row[0]) if row else None

    # -- token revocation ---------------------------------------------------------------------
    def token_generations(self) -> dict[str, int]:
        """user -> the generation of tokens that are still valid (see :meth:`revoke`)."""
        return {r[0]: int(r[1]) for r in self.db.execute("SELECT user, generation FROM token_generations")}

    def revoke(self, user: str) -> int:
        """Invalidate every token issued to ``user`` so far (``ormb.server.access.EVERYONE``: every
        token); returns the new generation.  A running registry sees it within a second."""
        with self.transaction() as db:
            db.execute("INSERT INTO token_generations VALUES (?, 1) "
                       "ON CONFLICT (user) DO UPDATE SET generation = generation + 1", (user,))
            return int(db.execute("SELECT generation FROM token_generations WHERE user = ?", (user,)).fetchone()[0])

    # -- maintenance --------------------------------------------------------------------------
    def gc(self, grace_seconds: float = 3600) -> GcResult:
        """Free what no manifest reaches; safe while the registry serves (see the module doc).

        A link is dropped when no manifest of its repository references it and it was last
        touched more than ``grace_seconds`` ago (a push uploads blobs before its manifest); a
        session, when last touched that long ago and no request holds it.  Runs on a full disk:
        the reserve is released first.
        """
        self.release_reserve()
        try:
            cutoff = time.time() - grace_seconds
            with self.transaction() as db:
                links = db.execute(
                    "DELETE FROM blob_links WHERE touched < ? AND NOT EXISTS (SELECT 1 FROM manifest_refs r "
                    "WHERE r.repository = blob_links.repository AND r.child = blob_links.digest)", (cutoff,),
                ).rowcount
                db.execute("DELETE FROM blobs WHERE digest NOT IN (SELECT digest FROM blob_links) "
                           "AND digest NOT IN (SELECT digest FROM manifests)")
                for table in ("layer_files", "layer_documents"):  # what the catalog remembered of a freed layer
                    db.execute(f"DELETE FROM {table} WHERE digest NOT IN (SELECT digest FROM blobs)")
            uploads = self._drop_stale_sessions(cutoff)
            removed, freed = self._sweep_blob_files()
            self._sweep_leftovers()
            self._forget_file_records()
            return GcResult(removed, freed, links, uploads)
        finally:
            self.keep_reserve()

    def _drop_stale_sessions(self, cutoff: float) -> int:
        stale = [r[0] for r in self.db.execute("SELECT id FROM uploads WHERE touched < ?", (cutoff,))]
        dropped = 0
        for session in stale:
            if not self._session_path(session).exists():  # cancelled on a full disk: only the row was left
                self._end_session(session)
                dropped += 1
                continue
            with _try_flock(self._session_path(session)) as held:
                if held:  # no request is writing to it
                    self._end_session(session)
                    dropped += 1
        return dropped

    def _sweep_blob_files(self) -> tuple[int, int]:
        removed = freed = 0
        for digest, path in self._blob_files():
            with self._store_lock():
                if self.db.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone() is None:
                    try:
                        size = path.stat().st_size
                        path.unlink()
                    except FileNotFoundError:
                        continue
                    removed += 1
                    freed += size
        return removed, freed

    def _sweep_leftovers(self) -> None:
        """Session files without a session row, and temporary files of killed processes."""
        active = {r[0] for r in self.db.execute("SELECT id FROM uploads")}
        for leftover in (self.root / "uploads").iterdir():
            if leftover.name not in active:
                with _try_flock(leftover) as held:
                    if held and self.db.execute("SELECT 1 FROM uploads WHERE id = ?", (leftover.name,)).fetchone() is None:
                        leftover.unlink(missing_ok=True)
        with self._store_lock():
            for leftover in (self.root / "tmp").iterdir():
                leftover.unlink(missing_ok=True)

    def _forget_file_records(self) -> None:
        """The catalog's file records of layers no longer stored (a record of a layer stored again later is
        computed again on its first view)."""
        from ormb.signing import FileRecords  # only here: the store is used without signing otherwise

        stored = {r[0] for r in self.db.execute("SELECT digest FROM blobs")}
        FileRecords(self.file_records_dir).forget_all_but(stored)

    def _blob_files(self) -> Iterator[tuple[str, Path]]:
        for algorithm_dir in (self.root / "blobs").iterdir():
            if algorithm_dir.name not in ALGORITHMS or not algorithm_dir.is_dir():
                continue
            for path in algorithm_dir.iterdir():
                digest = f"{algorithm_dir.name}:{path.name}"
                if is_digest(digest):
                    yield digest, path

    def check(self, repair: bool = False) -> CheckResult:
        """Verify every blob row's file (exists, right size and digest) and find files without rows.

        With ``repair``: rows whose file is missing or corrupt are dropped with their links (a new
        push uploads the blob again), corrupt files and files without rows are removed.
        """
        if repair:
            self.release_reserve()
        try:
            rows = {r[0]: int(r[1]) for r in self.db.execute("SELECT digest, size FROM blobs")}
            missing, corrupt = [], []
            for digest, size in sorted(rows.items()):
                path = self.blob_path(digest)
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    missing.append(digest)
                    continue
                try:
                    actual_size = os.fstat(fd).st_size
                    algorithm = digest.partition(":")[0]
                    if actual_size != size or _hash_fd(fd, algorithm, actual_size).hexdigest() != digest.partition(":")[2]:
                        corrupt.append(digest)
                finally:
                    os.close(fd)
            orphans = [digest for digest, _ in self._blob_files() if digest not in rows]
            if repair:
                with self._store_lock(), self.transaction() as db:
                    for digest in missing + corrupt:
                        db.execute("DELETE FROM blob_links WHERE digest = ?", (digest,))
                        db.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
                    for digest in corrupt:
                        self.blob_path(digest).unlink(missing_ok=True)
                self._sweep_blob_files()
            return CheckResult(len(rows), missing, corrupt, orphans, repair)
        finally:
            if repair:
                self.keep_reserve()


class _Session:
    """One upload session, held by one request (the flock on its file)."""

    def __init__(self, store: Store, repository: str, session: str, fd: int, size: int) -> None:
        self._store, self._repository, self.id, self._fd, self.size = store, repository, session, fd, size

    def append(self, chunks: Iterator[bytes]) -> int:
        store, start = self._store, self.size
        hasher = store._running_hasher(self.id, self._fd, start)
        out = os.fdopen(os.dup(self._fd), "r+b", buffering=0)
        try:
            out.truncate(start)  # a killed earlier request may have left bytes past the acknowledged size
            out.seek(start)
            background = BackgroundHasher(hasher)  # reading, hashing and writing overlap (as in the cache)
            try:
                with BackgroundWriter(out, writeback=True) as writer:  # fsynced below: start the disk early
                    for chunk in chunks:  # bytes: never changed after they are handed over
                        background.update(chunk)
                        writer.write(chunk)
                    writer.close()
            finally:
                background.close()  # every chunk handed over is hashed: ``hasher`` is complete
            os.fsync(out.fileno())
            size = out.tell()
        except BaseException:
            try:
                out.truncate(start)
            except OSError:
                pass
            raise
        finally:
            out.close()
        with store.transaction() as db:
            db.execute("UPDATE uploads SET size = ?, touched = ? WHERE id = ?", (size, time.time(), self.id))
        with store._hashers_lock:
            store._hashers[self.id] = (size, hasher.copy())
        self.size = size
        return size

    def digest(self, algorithm: str) -> str:
        if algorithm == "sha256":
            return "sha256:" + str(self._store._running_hasher(self.id, self._fd, self.size).hexdigest())
        return f"{algorithm}:{_hash_fd(self._fd, algorithm, self.size).hexdigest()}"

    def commit(self, repository: str, digest: str) -> None:
        self._store._install(repository, digest, self.size, self._store._session_path(self.id))
        self._store._end_session(self.id)

    def cancel(self) -> None:
        self._store._end_session(self.id)


def _private(path: Path) -> None:
    """0700 for a directory, 0600 for a file, if it is ours and more open (a registry made before)."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            path.chmod(mode & 0o700)
    except FileNotFoundError:
        pass
    except PermissionError:
        pass  # not ours: the operator's choice


def _disk_full(path: Path) -> bool:
    try:
        stats = os.statvfs(path)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < (1 << 20)


def _hash_fd(fd: int, algorithm: str, size: int) -> Any:
    hasher = hashlib.new(algorithm)
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(IO_CHUNK, size - offset), offset)
        if not chunk:
            break
        hasher.update(chunk)
        offset += len(chunk)
    return hasher


@contextmanager
def _try_flock(path: Path) -> Iterator[bool]:
    """Hold ``path``'s flock if no one else does; yields False when busy or gone."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _manifest_record(row: Any) -> ManifestRecord:
    return ManifestRecord(row[0], row[1], row[2], row[3], int(row[4]), row[5], json.loads(row[6] or "{}"), row[7],
                          None if row[8] is None else int(row[8]))
