"""Registry storage: blob files in one content-addressed store, metadata in SQLite (WAL).

::

    <root>/
      blobs/<algorithm>/<hex>    every blob and manifest, shared by all repositories
      uploads/<id>               data of upload sessions in progress
      registry.db                repositories, blob links, manifests, tags, referrers, uploads
      secret                     the key that signs this registry's tokens

Ordering makes a SIGKILL harmless: a blob file is fsynced and renamed into ``blobs/`` before
the database row that makes it visible commits, and the row commits before the client is
told "created".  A file without a row is invisible and ``gc`` removes it; a row never
points at a missing or partial file.
"""

from __future__ import annotations

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
from typing import Any

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
CREATE TABLE IF NOT EXISTS tags (repository TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL,
    updated REAL NOT NULL, PRIMARY KEY (repository, tag));
CREATE TABLE IF NOT EXISTS uploads (id TEXT PRIMARY KEY, repository TEXT NOT NULL, size INTEGER NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS layer_files (digest TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (digest, path));
"""


@dataclass(frozen=True)
class ManifestRecord:
    repository: str
    digest: str
    media_type: str
    artifact_type: str | None
    size: int
    subject: str | None
    annotations: dict[str, str]
    created: float


@dataclass(frozen=True)
class TagRecord:
    tag: str
    digest: str
    updated: float
    size: int  # bytes of the manifest's blobs


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storage:
    """Thread-safe: one SQLite connection per thread, writes serialised by SQLite."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "uploads").mkdir(exist_ok=True)
        self.db_path = self.root / "registry.db"
        self._local = threading.local()
        self.db.executescript(SCHEMA)
        self.secret = self._secret()
        self._hashers: dict[str, tuple[int, Any]] = {}  # upload id -> (offset, running sha256)
        self._hashers_lock = threading.Lock()

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

    # -- blobs --------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexpart = digest.partition(":")
        return self.root / "blobs" / algorithm / hexpart

    def linked(self, repository: str, digest: str) -> int | None:
        """The blob's size when ``repository`` may serve it, else None."""
        row = self.db.execute(
            "SELECT b.size FROM blob_links l JOIN blobs b ON b.digest = l.digest "
            "WHERE l.repository = ? AND l.digest = ?", (repository, digest),
        ).fetchone()
        return int(row[0]) if row else None

    def link(self, repository: str, digest: str) -> None:
        with self.transaction() as db:
            self._ensure_repository(db, repository)
            db.execute("INSERT OR IGNORE INTO blob_links VALUES (?, ?)", (repository, digest))

    def unlink(self, repository: str, digest: str) -> bool:
        with self.transaction() as db:
            return db.execute("DELETE FROM blob_links WHERE repository = ? AND digest = ?",
                              (repository, digest)).rowcount > 0

    def repositories_with(self, digest: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT repository FROM blob_links WHERE digest = ?", (digest,))]

    def commit_blob(self, repository: str, digest: str, size: int, staged: Path) -> None:
        """Move a verified file into the store and make it visible in ``repository``."""
        target = self.blob_path(digest)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _fsync_file(staged)
            os.replace(staged, target)
        else:
            staged.unlink(missing_ok=True)
        with self.transaction() as db:
            self._ensure_repository(db, repository)
            db.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?)", (digest, size, time.time()))
            db.execute("INSERT OR IGNORE INTO blob_links VALUES (?, ?)", (repository, digest))

    def store_bytes(self, data: bytes, digest: str) -> None:
        target = self.blob_path(digest)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = self.root / "uploads" / f"manifest-{uuid.uuid4().hex}"
        with open(staged, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, target)

    def _ensure_repository(self, db: sqlite3.Connection, repository: str) -> None:
        db.execute("INSERT OR IGNORE INTO repositories VALUES (?, ?)", (repository, time.time()))

    # -- uploads ------------------------------------------------------------------------------
    def new_upload(self, repository: str) -> str:
        upload_id = uuid.uuid4().hex
        self.upload_path(upload_id).touch()
        with self.transaction() as db:
            db.execute("INSERT INTO uploads VALUES (?, ?, 0, ?)", (upload_id, repository, time.time()))
        return upload_id

    def upload_path(self, upload_id: str) -> Path:
        return self.root / "uploads" / upload_id

    def upload_size(self, repository: str, upload_id: str) -> int | None:
        row = self.db.execute("SELECT size FROM uploads WHERE id = ? AND repository = ?",
                              (upload_id, repository)).fetchone()
        return int(row[0]) if row else None

    def set_upload_size(self, upload_id: str, size: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE uploads SET size = ? WHERE id = ?", (size, upload_id))

    def drop_upload(self, upload_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
        self.upload_path(upload_id).unlink(missing_ok=True)
        with self._hashers_lock:
            self._hashers.pop(upload_id, None)

    def upload_hasher(self, upload_id: str, offset: int) -> Any:
        """The running sha256 of an upload's first ``offset`` bytes (re-read from disk after a restart)."""
        with self._hashers_lock:
            known = self._hashers.get(upload_id)
        if known and known[0] == offset:
            return known[1].copy()  # a copy: a request that breaks off must not touch the session's state
        hasher = hashlib.sha256()
        with open(self.upload_path(upload_id), "rb") as f:
            remaining = offset
            while remaining:
                chunk = f.read(min(1 << 20, remaining))
                if not chunk:
                    break
                hasher.update(chunk)
                remaining -= len(chunk)
        return hasher

    def remember_hasher(self, upload_id: str, offset: int, hasher: Any) -> None:
        with self._hashers_lock:
            self._hashers[upload_id] = (offset, hasher)

    # -- manifests and tags -------------------------------------------------------------------
    def put_manifest(self, record: ManifestRecord, children: list[str], tag: str | None) -> None:
        with self.transaction() as db:
            self._ensure_repository(db, record.repository)
            db.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?)", (record.digest, record.size, record.created))
            db.execute(
                "INSERT OR REPLACE INTO manifests VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record.repository, record.digest, record.media_type, record.artifact_type, record.size,
                 record.subject, json.dumps(record.annotations), record.created),
            )
            db.executemany("INSERT OR IGNORE INTO manifest_refs VALUES (?, ?, ?)",
                           [(record.repository, record.digest, child) for child in children])
            if tag is not None:
                db.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?)",
                           (record.repository, tag, record.digest, time.time()))

    def manifest(self, repository: str, digest: str) -> ManifestRecord | None:
        row = self.db.execute("SELECT * FROM manifests WHERE repository = ? AND digest = ?",
                              (repository, digest)).fetchone()
        return _manifest_record(row) if row else None

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
            "SELECT t.tag, t.digest, t.updated, COALESCE(SUM(b.size), 0) FROM tags t "
            "LEFT JOIN manifest_refs r ON r.repository = t.repository AND r.manifest = t.digest "
            "LEFT JOIN blobs b ON b.digest = r.child WHERE t.repository = ? GROUP BY t.tag ORDER BY t.updated DESC",
            (repository,),
        )
        return [TagRecord(r[0], r[1], r[2], int(r[3])) for r in rows]

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

    def remember_layer_files(self, digest: str, files: list[tuple[str, int]]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO layer_files VALUES (?, ?, ?)", [(digest, p, s) for p, s in files])

    # -- garbage collection ---------------------------------------------------------------------
    def gc(self, grace_seconds: float = 3600) -> tuple[int, int]:
        """Free what no manifest reaches; returns (blobs deleted, bytes freed).

        A blob is kept while a manifest of a repository references it (or it is a manifest), or
        while it is younger than ``grace_seconds``: a push uploads blobs before its manifest.
        """
        removed = freed = 0
        cutoff = time.time() - grace_seconds
        with self.transaction() as db:
            db.execute(
                "DELETE FROM blob_links WHERE digest IN (SELECT digest FROM blobs WHERE created < ?) "
                "AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.repository = blob_links.repository "
                "AND r.child = blob_links.digest)", (cutoff,),
            )
            db.execute(
                "DELETE FROM blobs WHERE created < ? AND digest NOT IN (SELECT digest FROM blob_links) "
                "AND digest NOT IN (SELECT digest FROM manifests)", (cutoff,),
            )
            stale = [r[0] for r in db.execute("SELECT id FROM uploads WHERE created < ?", (cutoff,))]
            db.executemany("DELETE FROM uploads WHERE id = ?", [(u,) for u in stale])
        known = {r[0] for r in self.db.execute("SELECT digest FROM blobs")}
        for algorithm_dir in (self.root / "blobs").iterdir():
            for blob in algorithm_dir.iterdir():
                info = blob.stat()
                if f"{algorithm_dir.name}:{blob.name}" not in known and info.st_mtime < cutoff:
                    blob.unlink()
                    removed += 1
                    freed += info.st_size
        active = {r[0] for r in self.db.execute("SELECT id FROM uploads")}
        for leftover in (self.root / "uploads").iterdir():
            if leftover.name not in active and leftover.stat().st_mtime < cutoff:
                leftover.unlink()
        return removed, freed


def _manifest_record(row: Any) -> ManifestRecord:
    return ManifestRecord(row[0], row[1], row[2], row[3], int(row[4]), row[5], json.loads(row[6] or "{}"), row[7])
