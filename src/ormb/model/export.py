"""Export a model's files into a directory: one code path for ``ormb export`` and the storage initializer.

Every layer (the ormb format's one tar+gzip layer; ModelPack and KitOps raw and tar layers) and the
``ormbfile.yaml`` go into one staging tree inside the destination; the tree's links are checked
against what is on disk; only then does anything move into place (see :mod:`ormb.model.staging`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ormb.content.stamps import StampStore
from ormb.content.target import Fetcher
from ormb.errors import UsageError
from ormb.model import modelpack, ormbformat
from ormb.model.budget import ExpansionBudget
from ormb.model.modelpack import LayerFile
from ormb.model.ormbfile import FILENAME, Metadata
from ormb.model.staging import staged_directory
from ormb.model.unpack import FileHashes, extract_tar
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.progress import ProgressListener


def export_model(
    source: Fetcher,
    manifest: Manifest,
    dest: Path,
    *,
    metadata: Metadata | None,
    files: Sequence[LayerFile] | None = None,
    subdirectory: str = "",
    strip_prefix: bool = False,
    local_copy: Callable[[Descriptor], Path] | None = None,
    max_expand: int | None = None,
    progress: ProgressListener | None = None,
    concurrency: int = 2,
    check: Callable[[FileHashes], None] | None = None,
    stamps: StampStore | None = None,
) -> tuple[str, ...]:
    """Write the model of ``manifest`` (blobs from ``source``) into ``dest``, all or nothing.

    The files go below ``dest/subdirectory`` (the ormb format's under ``model/`` unless ``strip_prefix``);
    ``metadata``, if given, becomes ``dest/ormbfile.yaml`` (a layer that writes that path is refused).
    ``files`` narrows a ModelPack model to some of its layers.  ``max_expand`` bounds what the layers may
    unpack to, in all (see :mod:`ormb.model.budget`).  ``concurrency``: ModelPack weight layers written at
    once (see :func:`ormb.model.modelpack.write_files`).  Returns the files' paths below ``dest/subdirectory``.
    ``stamps``: the cache's verified stamps (:mod:`ormb.content.stamps`); a cache copy (``local_copy``) a stamp
    vouches for is copied without being hashed again.  Ignored with ``check``: a signature-verified export
    hashes every byte it writes.

    ``check``, if given, sees the SHA-256 of every file written (hashed while written; paths as a
    signature names them: below ``model/`` for the ormb format) once everything is staged and before
    anything moves into place; what it raises leaves ``dest`` as it was (a signature check).  A checked
    export writes only what ``check`` saw: ``metadata`` must be None (no signature covers the
    ``ormbfile.yaml`` made from the config), and ``dest`` may hold nothing but paths the export
    replaces, so that what the directory holds afterwards is exactly what was checked: the checked files,
    each with mode ``VERIFIED_FILE_MODE`` (0644), and only the directories they are in.
    """
    if check is not None and metadata is not None:
        raise ValueError("a checked export writes only checked files: pass metadata=None")
    if check is not None:
        stamps = None  # the user asked for verification: every cache copy is hashed, no stamp is trusted
    base = (subdirectory,) if subdirectory else ()
    hashes = FileHashes() if check is not None else None
    with staged_directory(dest, ExpansionBudget(max_expand)) as tree:
        if modelpack.is_modelpack(manifest):
            chosen = modelpack.layer_files(manifest) if files is None else files
            paths = modelpack.write_files(source, chosen, tree, base=base, local_copy=local_copy, progress=progress,
                                          concurrency=concurrency, hashes=hashes, stamps=stamps)
        else:
            layer = ormbformat.model_layer(manifest)
            with source.fetch(layer) as blob:
                paths = extract_tar(blob, layer, tree, base=base, prefix="model/", strip_prefix=strip_prefix,
                                    progress=progress, local=local_copy(layer) if local_copy else None,
                                    hashes=hashes, stamps=stamps)
        if metadata is not None:
            tree.write_metadata((FILENAME,), metadata.to_yaml().encode("utf-8"))
        tree.check_links()
        if check is not None and hashes is not None:
            check(hashes)
            written = [base + tuple(p.split("/")) for p in paths]
            _refuse_leftovers(dest, written, tree.marker)
            tree.keep_only(written, VERIFIED_FILE_MODE)
    return tuple(paths)


# The permission bits of every file a verified export writes: a signature records no modes, so none is taken
# from a layer (whoever pushes chooses those); no exec or set-uid bit, no directory that no signed file is in.
VERIFIED_FILE_MODE = 0o644
MAX_LEFTOVER_WALK = 1_000_000  # entries of an existing destination looked at by a checked export


def _refuse_leftovers(dest: Path, written: list[tuple[str, ...]], staging: str) -> None:
    """Refuse a destination holding anything a checked export will not replace: an unsigned file left
    there (an earlier version's, someone else's) would sit beside the verified ones, looking verified."""
    allowed: set[tuple[str, ...]] = set()
    for parts in written:
        for end in range(1, len(parts) + 1):
            allowed.add(parts[:end])
    seen = 0
    for root, dirs, files in os.walk(dest, followlinks=False):
        here = Path(root).relative_to(dest).parts
        if not here:
            dirs[:] = [d for d in dirs if d != staging]
        for name in sorted(dirs) + sorted(files):
            seen += 1
            if (*here, name) not in allowed or seen > MAX_LEFTOVER_WALK:
                shown = "/".join((*here, name))
                raise UsageError(f"{dest} already holds {shown!r}, which is not a file of this model; a verified "
                                 "export must hold exactly the signed files",
                                 "export into an empty or new directory, or remove what is not the model's")
