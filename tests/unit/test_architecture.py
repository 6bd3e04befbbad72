"""Import rules and the public API, locked by tests (as go-containerregistry and httpx do)."""

from __future__ import annotations

import ast
from pathlib import Path

import ormb

SRC = Path(ormb.__file__).parent

# layer -> packages of ormb it may import (cli -> api -> {model, registry, transfer} -> content -> oci;
# signing sits beside model: it reads model manifests)
ALLOWED = {
    "oci": {"oci", "errors"},
    "content": {"content", "oci", "errors"},
    "model": {"model", "content", "oci", "errors", "progress"},
    "registry": {"registry", "content", "oci", "errors"},
    "signing": {"signing", "model", "oci", "errors", "progress"},
    "server": {"server", "oci", "errors", "model", "content", "units"},
    "serving": {"serving", "cache", "config", "errors", "model", "oci", "progress", "registry"},
    "cli": {"cli", "api", "config", "errors", "model", "oci", "progress", "registry", "server", "serving", "units"},
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
        "AuthenticationError", "Credential", "ExportResult", "IntegrityError", "InvalidArtifactError",
        "InvalidReferenceError", "Metadata", "MetadataError", "ModelDetails", "ModelFormatError", "ModelSummary",
        "NetworkError", "NotFoundError", "OrmbError", "PermissionDeniedError", "PruneResult", "Reference",
        "RegistryError", "SaveResult", "Settings", "StorageError", "TransferResult", "TransportOptions",
        "UnsafeArchiveError", "__version__", "export", "init", "inspect", "inspect_remote", "load_settings", "login",
        "logout", "models", "parse_reference", "prune", "pull", "push", "remove", "save", "tag", "tags", "version",
    ]
