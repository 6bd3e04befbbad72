"""The files a signature names are the files export writes, tried by the hostile-layer generator.

A signature is checked against a model's files in three ways that must agree: the digests export
computes while it writes (``export_model(check=...)``: ``pull``/``export --verify-key``, the storage
initializer), the digests read from the layers without writing (``model_files``: ``ormb sign`` and
``ormb verify``), and what a verifier such as ``model_signing`` hashes on disk after the export.
For every generated model that exports, the three are equal (paths, SHA-256, sizes, links); a
model whose export is refused is never compared.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, example, given, settings
from test_export_property import LAYOUTS, SCRATCH, Case, _place, cases

from ormb.content.memory import MemoryStore
from ormb.errors import OrmbError
from ormb.model.export import export_model
from ormb.model.unpack import FileHashes
from ormb.signing import model_files


def _on_disk(root: Path) -> FileHashes:
    """What a verifier sees under ``root``: regular files hashed, symbolic links named (not followed)."""
    found = FileHashes()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                found.link(relative)
            elif path.is_file():
                data = path.read_bytes()
                found.file(relative, hashlib.sha256(data).hexdigest(), len(data))
    return found


@settings(max_examples=settings().max_examples * 5,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(case=cases())
# found by this test: 'model/.' as a file or a link replaced the model/ directory on export (layout none),
# while the files a signature names are below it; export now refuses such a layer
@example(case=Case(False, [("tar+gzip", [("model/.", "symlink", ".")])], "export / none", False, False, "nothing"))
@example(case=Case(False, [("tar+gzip", [("model/.", "file", b"")])], "export / none", False, False, "nothing"))
def test_the_files_a_signature_names_are_the_files_export_writes(case: Case) -> None:
    case.clone = False  # clones copy the cache's blob file; here the bytes come from memory
    cache = MemoryStore()
    with tempfile.TemporaryDirectory(prefix="ormb-hashes-", dir=SCRATCH) as tmp:
        dest = Path(tmp) / "dest"
        manifest = _place(cache, case, tmp)
        subdirectory, strip = LAYOUTS[case.layout]
        seen: list[FileHashes] = []
        try:
            export_model(cache, manifest, dest, metadata=None, subdirectory=subdirectory, strip_prefix=strip,
                         check=seen.append)
        except OrmbError:
            event("export refused")
            assert not seen or not dest.exists() or not any(dest.iterdir())
            return
        written = seen[0]
        event(f"exported: {'links' if written.links else 'files only'}")
        root = dest / subdirectory if subdirectory else dest
        if not case.modelpack and not strip:
            root = root / "model"
        disk = _on_disk(root) if root.exists() else FileHashes()
        assert written.files == disk.files
        assert written.links == disk.links
        read = model_files(cache, manifest)  # what 'ormb sign' signs and 'ormb verify' compares
        assert read.files == written.files
        assert read.links == written.links
