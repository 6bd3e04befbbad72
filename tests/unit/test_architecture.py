"""Import rules and the public API, locked by tests (as go-containerregistry and httpx do)."""

from __future__ import annotations

import ast
from pathlib import Path

import ormb

SRC = Path(ormb.__file__).parent

# layer -> packages of ormb it may import (cli -> api -> {model, ...} -> content -> oci)
ALLOWED = {
    "oci": {"oci", "errors"},
    "content": {"content", "oci", "errors"},
    "model": {"model", "content", "oci", "errors", "progress"},
    "cli": {"cli", "api", "errors", "model", "oci", "progress"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ormb."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ormb.")}
    return found


def test_imports_point_down_the_layers() -> None:
    for layer, allowed in ALLOWED.items():
        for path in (SRC / layer).rglob("*.py"):
            bad = _imports(path) - allowed
            assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}; {layer} may import only {sorted(allowed)}"


def test_library_code_never_prints() -> None:
    for path in SRC.rglob("*.py"):
        if "cli" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "print", f"{path.relative_to(SRC)} prints"


def test_public_api_is_locked() -> None:
    assert sorted(ormb.__all__) == [
        "ExportResult", "IntegrityError", "InvalidArtifactError", "InvalidReferenceError", "Metadata",
        "MetadataError", "ModelDetails", "ModelFormatError", "ModelSummary", "NotFoundError", "OrmbError",
        "PruneResult", "Reference", "SaveResult", "Settings", "StorageError", "UnsafeArchiveError", "__version__",
        "export", "inspect", "load_settings", "models", "parse_reference", "prune", "remove", "save", "tag",
        "version",
    ]
