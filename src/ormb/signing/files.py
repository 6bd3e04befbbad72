"""The files a signature covers: every file of a model with its SHA-256, as export lays them out.

- ModelPack (and KitOps, Model Runner) raw layers: from the manifest alone, since a raw layer's
  digest *is* its file's SHA-256; no weight byte is read.
- Tar layers (the ormb format's one ``model/`` layer, ModelPack tar layers) and compressed raw
  layers: by reading the layer once, with the checks export makes (:func:`ormb.model.unpack.hash_tar`):
  the layer's digest and size, entry names, expansion.  For the ormb format the paths are those
  below ``model/`` (the directory a model server loads).

What a layer read yields is kept in :class:`FileRecords` (in the local cache, keyed by the layer's
digest), so it is read at most once: ``pull --verify-key``, ``verify`` and ``sign`` record it when they
first read a layer (``save`` does not hash each file a second time: that cost every save 35-40%).  A record is made only by ormb from verified bytes and
is checked again when read, so a damaged record is recomputed, never trusted.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ormb.content.target import Fetcher
from ormb.errors import InvalidArtifactError, UnsafeArchiveError
from ormb.model import modelpack, ormbformat
from ormb.model.unpack import FileHashes, hash_raw, hash_tar
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.oci.digest import split_digest
from ormb.oci.grammar import is_digest
from ormb.signing.bundle import SignedFile, path_problem

ORMB_PREFIX = "model/"
_TAR_COMPRESSION = {"tar": None, "tar+gzip": "gzip", "tar+zstd": "zstd"}
MAX_RECORD = 64 << 20  # bytes: a record of a million files is ~100 MB; larger ones are recomputed


def _reading(compression: str | None) -> str:
    """How a layer's bytes are read, as a record names it: ``tar``, ``tar+gzip``, ``tar+zstd``."""
    return "tar" if compression is None else f"tar+{compression}"


class FileRecords:
    """Per-layer file lists, one JSON file per (layer, reading, prefix)::

        <directory>/sha256/<hex>.<tar|tar+gzip|tar+zstd>.<prefix tag>.json
        {"layer": "sha256:<hex>", "reading": "tar+gzip", "prefix": "model/",
         "files": [[path, sha256 hex, size], ...], "links": [path, ...]}

    One blob can be two valid archives (a plain tar that is also, read as zstd, another tar): a record
    is therefore keyed by how the layer was read as well as by its digest and prefix, so the files of
    one reading never stand in for another's.  Reads check the record (its layer, reading, prefix,
    paths and digests); anything odd counts as no record.  Writes are atomic (temporary file, rename);
    a failed write only means the layer is read again.  Records of a layer read while *verifying* are
    written only once the model verified (:meth:`pending`), so a refused model leaves none behind.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, layer: Descriptor, prefix: str, compression: str | None) -> Path:
        algorithm, hexpart = split_digest(layer.digest)
        tag = "root" if not prefix else prefix.rstrip("/").replace("/", "_")
        return self.directory / algorithm / f"{hexpart}.{_reading(compression)}.{tag}.json"

    def get(self, layer: Descriptor, prefix: str, compression: str | None) -> FileHashes | None:
        try:
            with open(self._path(layer, prefix, compression), "rb") as handle:
                data = handle.read(MAX_RECORD + 1)
            raw: Any = json.loads(data) if len(data) <= MAX_RECORD else None
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(raw, dict) or raw.get("layer") != layer.digest or raw.get("prefix") != prefix \
                or raw.get("reading") != _reading(compression):
            return None
        files, links = raw.get("files"), raw.get("links", [])
        if not isinstance(files, list) or not isinstance(links, list):
            return None
        hashes = FileHashes()
        for item in files:
            if not (isinstance(item, list) and len(item) == 3 and path_problem(item[0]) is None
                    and isinstance(item[1], str) and is_digest(f"sha256:{item[1]}")
                    and isinstance(item[2], int) and item[2] >= 0):
                return None
            hashes.file(item[0], item[1], item[2])
        for link in links:
            if path_problem(link) is not None:
                return None
            hashes.link(link)
        return hashes

    def put(self, layer: Descriptor, prefix: str, compression: str | None, hashes: FileHashes) -> None:
        body = {"layer": layer.digest, "reading": _reading(compression), "prefix": prefix,
                "files": [[p, d, s] for p, (d, s) in sorted(hashes.files.items())],
                "links": sorted(hashes.links)}
        path = self._path(layer, prefix, compression)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=".record-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(body, out, ensure_ascii=False, separators=(",", ":"))
                os.chmod(name, 0o644)
                os.replace(name, path)
            finally:
                Path(name).unlink(missing_ok=True)
        except OSError:
            pass  # only a saving: the layer is read again next time

    def pending(self) -> PendingRecords:
        """Records that reads look up here, and that are written only on :meth:`PendingRecords.commit`."""
        return PendingRecords(self.directory)

    def forget_all_but(self, keep: Iterable[str]) -> int:
        """Remove the records of layers not in ``keep`` (digests), and leftovers; returns how many went."""
        wanted = set(keep)
        removed = 0
        if not self.directory.is_dir():
            return 0
        for algorithm_dir in self.directory.iterdir():
            if not algorithm_dir.is_dir() or algorithm_dir.is_symlink():
                continue
            for record in algorithm_dir.iterdir():
                digest = f"{algorithm_dir.name}:{record.name.partition('.')[0]}"
                if record.name.endswith(".json") and not record.name.startswith(".") and digest in wanted:
                    continue
                try:
                    record.unlink()
                    removed += 1
                except OSError:
                    pass
        return removed


class PendingRecords(FileRecords):
    """:class:`FileRecords` whose writes wait for :meth:`commit` (after a model verified)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self._waiting: list[tuple[Descriptor, str, str | None, FileHashes]] = []

    def put(self, layer: Descriptor, prefix: str, compression: str | None, hashes: FileHashes) -> None:
        self._waiting.append((layer, prefix, compression, hashes))

    def commit(self) -> None:
        for layer, prefix, compression, hashes in self._waiting:
            FileRecords.put(self, layer, prefix, compression, hashes)
        self._waiting.clear()


def union_of_layers(layers: Iterable[tuple[str, FileHashes]]) -> FileHashes:
    """The files of a model's layers together, by the rule export writes them by (one rule, so a
    verifier accepts exactly what export writes): two layers never write one path, whichever kinds
    they are (a raw file shadowed by a tar entry, two raw layers at one path), and no path is a file
    or link in one place and a directory in another.  Raises :class:`UnsafeArchiveError`."""
    union = FileHashes()
    for name, layer in layers:
        for path in sorted((*layer.files, *layer.links)):
            if path in union.files or path in union.links:
                raise UnsafeArchiveError(f"two layers write {path} ({name} is the second); refusing")
        for path, (digest, size) in layer.files.items():
            union.file(path, digest, size)
        for path in layer.links:
            union.link(path)
    leaves = set(union.files) | union.links
    for path in sorted(leaves):
        parent = path.rpartition("/")[0]
        while parent:
            if parent in leaves:
                raise UnsafeArchiveError(f"{parent} is a file and also the directory of {path}; refusing")
            parent = parent.rpartition("/")[0]
    return union


def _tar_files(source: Fetcher, layer: Descriptor, prefix: str, compression: str | None,
               records: FileRecords | None) -> FileHashes:
    found = records.get(layer, prefix, compression) if records is not None else None
    if found is None:
        with source.fetch(layer) as blob:
            found = hash_tar(blob, layer, prefix=prefix, compression=compression)
        if records is not None:
            records.put(layer, prefix, compression, found)
    return found


def model_files(source: Fetcher, manifest: Manifest, records: FileRecords | None = None) -> FileHashes:
    """Every file of the model ``manifest`` describes, as export lays it out, with its SHA-256 and size.

    Raw layers come from the manifest; other layers are read from ``source`` (once: ``records``
    keeps what was read).  The layers are put together by :func:`union_of_layers`, export's rule.
    Raises :class:`InvalidArtifactError` for what is not a model.
    """
    if not modelpack.is_modelpack(manifest):
        layer = ormbformat.model_layer(manifest)
        return _tar_files(source, layer, ORMB_PREFIX, "gzip", records)
    layers: list[tuple[str, FileHashes]] = []
    for item in modelpack.layer_files(manifest):
        desc = item.descriptor
        one = FileHashes()
        if item.packing.startswith("raw") and item.path is not None:
            compression = item.packing.partition("+")[2] or None
            algorithm, _, hexpart = desc.digest.partition(":")
            if compression is None and algorithm == "sha256":
                digest, size = hexpart, desc.size
            else:
                with source.fetch(desc) as blob:
                    digest, size = hash_raw(blob, desc, compression=compression)
            one.file(str(item.path), digest, size)
        else:
            one = _tar_files(source, desc, "", _TAR_COMPRESSION[item.packing], records)
        layers.append((f"layer {desc.digest[:19]}", one))
    return union_of_layers(layers)


def signed_files(hashes: FileHashes) -> tuple[SignedFile, ...]:
    """The files to sign; a symbolic link is refused (``model_signing`` refuses to sign or verify one)."""
    if hashes.links:
        link = sorted(hashes.links)[0]
        raise InvalidArtifactError(f"the model holds the symlink {link!r}; signatures cover regular files",
                                   "replace the link by the file it points to, then save the model again")
    return tuple(SignedFile(path, digest, size) for path, (digest, size) in hashes.files.items())


def tar_layer_files(blob: Any, layer: Descriptor, compression: str | None = "gzip",
                    prefix: str = ORMB_PREFIX) -> tuple[SignedFile, ...]:
    """The files of one tar layer (by default the ormb format's ``model/`` layer), read once and checked
    as export checks them; a symlink is refused."""
    return signed_files(hash_tar(blob, layer, prefix=prefix, compression=compression))
