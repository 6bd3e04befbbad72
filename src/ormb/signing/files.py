"""The files a signature covers: every file of a model with its SHA-256, as export lays them out.

- ModelPack (and KitOps, Model Runner) raw layers: from the manifest alone, since a raw layer's
  digest *is* its file's SHA-256; no weight byte is read.
- Tar layers (the ormb format's one ``model/`` layer, ModelPack tar layers) and compressed raw
  layers: by reading the layer once, with the checks export makes (:func:`ormb.model.unpack.hash_tar`):
  the layer's digest and size, entry names, expansion.  For the ormb format the paths are those
  below ``model/`` (the directory a model server loads).

What a layer read yields is kept in :class:`FileRecords` (in the local cache, keyed by the layer's
digest), so it is read at most once: ``ormb save`` records it while packing, ``pull --verify-key``
and ``sign`` when they first read a layer.  A record is made only by ormb from verified bytes and
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


class FileRecords:
    """Per-layer file lists, one JSON file per layer: ``<directory>/sha256/<hex>.json``::

        {"layer": "sha256:<hex>", "prefix": "model/", "files": [[path, sha256 hex, size], ...],
         "links": [path, ...]}

    Reads check the record (its layer, prefix, paths and digests); anything odd counts as no record.
    Writes are atomic (temporary file, rename); a failed write only means the layer is read again.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, layer: Descriptor) -> Path:
        algorithm, hexpart = split_digest(layer.digest)
        return self.directory / algorithm / f"{hexpart}.json"

    def get(self, layer: Descriptor, prefix: str) -> FileHashes | None:
        try:
            with open(self._path(layer), "rb") as handle:
                data = handle.read(MAX_RECORD + 1)
            raw: Any = json.loads(data) if len(data) <= MAX_RECORD else None
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(raw, dict) or raw.get("layer") != layer.digest or raw.get("prefix") != prefix:
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

    def put(self, layer: Descriptor, prefix: str, hashes: FileHashes) -> None:
        body = {"layer": layer.digest, "prefix": prefix,
                "files": [[p, d, s] for p, (d, s) in sorted(hashes.files.items())],
                "links": sorted(hashes.links)}
        path = self._path(layer)
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
                digest = f"{algorithm_dir.name}:{record.name.removesuffix('.json')}"
                if record.name.endswith(".json") and digest in wanted:
                    continue
                try:
                    record.unlink()
                    removed += 1
                except OSError:
                    pass
        return removed


def _merge(into: FileHashes, layer: FileHashes) -> None:
    """A later layer's entries replace an earlier one's, as export writes them."""
    for path, (digest, size) in layer.files.items():
        into.file(path, digest, size)
    for path in layer.links:
        into.link(path)


def _tar_files(source: Fetcher, layer: Descriptor, prefix: str, compression: str | None,
               records: FileRecords | None) -> FileHashes:
    found = records.get(layer, prefix) if records is not None else None
    if found is None:
        with source.fetch(layer) as blob:
            found = hash_tar(blob, layer, prefix=prefix, compression=compression)
        if records is not None:
            records.put(layer, prefix, found)
    return found


def model_files(source: Fetcher, manifest: Manifest, records: FileRecords | None = None) -> FileHashes:
    """Every file of the model ``manifest`` describes, as export lays it out, with its SHA-256 and size.

    Raw layers come from the manifest; other layers are read from ``source`` (once: ``records``
    keeps what was read).  Raises :class:`InvalidArtifactError` for what is not a model.
    """
    hashes = FileHashes()
    if not modelpack.is_modelpack(manifest):
        layer = ormbformat.model_layer(manifest)
        return _tar_files(source, layer, ORMB_PREFIX, "gzip", records)
    for item in modelpack.layer_files(manifest):
        desc = item.descriptor
        if item.packing.startswith("raw") and item.path is not None:
            compression = item.packing.partition("+")[2] or None
            algorithm, _, hexpart = desc.digest.partition(":")
            if compression is None and algorithm == "sha256":
                digest, size = hexpart, desc.size
            else:
                with source.fetch(desc) as blob:
                    digest, size = hash_raw(blob, desc, compression=compression)
            if str(item.path) in hashes.files or str(item.path) in hashes.links:
                raise UnsafeArchiveError(f"two layers write {item.path}; refusing")
            hashes.file(str(item.path), digest, size)
        else:
            _merge(hashes, _tar_files(source, desc, "", _TAR_COMPRESSION[item.packing], records))
    return hashes


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
