"""Import rules and the public API, locked by tests (as go-containerregistry and httpx do)."""

from __future__ import annotations

import ast
from pathlib import Path

import ormb

SRC = Path(ormb.__file__).parent

# module or package of ormb -> what it may import (cli -> api -> {model, registry, transfer, ...} -> content
# -> oci; errors, _version, units and progress are leaves everyone may use).  Every module of the package has
# an entry: a new one must say where it sits.
LEAVES = {"errors", "_version"}
ALLOWED: dict[str, set[str]] = {
    "_version": set(),
    "errors": set(),
    "units": set(),
    "progress": set(),
    "config": {"errors"},
    "oci": {"oci", "errors"},
    "content": {"content", "oci", "errors"},
    "model": {"model", "content", "oci", "errors", "progress", "units"},
    "registry": {"registry", "content", "oci", "errors", "_version"},
    "transfer": {"content", "oci", "errors", "progress"},
    "cache": {"config", "content", "errors", "model", "oci"},
    # signing sits beside model: it reads model manifests and layers
    "signing": {"signing", "model", "content", "oci", "errors", "progress"},
    # server: the catalog checks signatures with the keys it is told to trust (registry serve --trust-key)
    "server": {"server", "oci", "errors", "model", "content", "units", "signing"},
    "serving": {"serving", "cache", "config", "errors", "model", "oci", "progress", "registry", "signing"},
    # the push half of the API (ormb push starts without the model layer and signing): below api, beside it for cli
    "pushing": {"cache", "config", "content", "errors", "oci", "progress", "registry", "transfer"},
    "api": {"_version", "cache", "config", "content", "errors", "model", "oci", "progress", "pushing", "registry",
            "signing", "transfer"},
    "cli": {"_version", "cli", "api", "config", "errors", "model", "oci", "progress", "pushing", "registry", "server",
            "serving", "signing", "units"},
    "__main__": {"cli"},
    "__init__": {"_version", "api", "config", "errors", "model", "oci", "registry"},
}


def _unit(path: Path) -> str:
    """The module or package of ormb a source file belongs to: ``transfer`` for transfer.py, ``oci`` for oci/x.py."""
    parts = path.relative_to(SRC).parts
    return parts[0] if len(parts) > 1 else path.stem


def _imports(path: Path) -> set[str]:
    """The ormb modules/packages a file imports, anywhere in it (also inside functions).

    ``from ormb import <name>`` counts as importing ``ormb`` itself (the package's ``__init__``) unless
    the name is a module of ormb, and a relative import as ``.``: neither is allowed inside the package.
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                found.add(".")
            elif node.module == "ormb":  # ``from ormb import api`` imports a module; ``import __version__`` the package
                found |= {a.name if a.name in ALLOWED else "ormb" for a in node.names}
            elif node.module and node.module.startswith("ormb."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "ormb":
                    found.add("ormb")
                elif alias.name.startswith("ormb."):
                    found.add(alias.name.split(".")[1])
    return found


def test_every_module_has_a_place_in_the_layers() -> None:
    units = {_unit(path) for path in SRC.rglob("*.py")}
    assert units <= set(ALLOWED), f"add {sorted(units - set(ALLOWED))} to ALLOWED in this test"


def test_imports_point_down_the_layers() -> None:
    for path in sorted(SRC.rglob("*.py")):
        unit = _unit(path)
        allowed = ALLOWED[unit] | {unit}
        bad = _imports(path) - allowed
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}; {unit} may import only {sorted(allowed)}"


def test_the_rule_catches_what_it_should() -> None:
    """The checker itself: a module importing the package (``from ormb import __version__``) or upwards fails."""
    assert _imports_of("from ormb import __version__\n") == {"ormb"}
    assert _imports_of("from ormb import api\n") == {"api"}
    assert _imports_of("def f():\n    from ormb.api import pull\n") == {"api"}
    assert _imports_of("from . import x\nimport ormb.cli.main\n") == {".", "cli"}


def _imports_of(source: str) -> set[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "m.py"
        path.write_text(source)
        return _imports(path)


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
        "InvalidReferenceError", "KeyFileError", "KeyResult", "Metadata", "MetadataError", "ModelDetails",
        "ModelFormatError", "ModelSummary", "NetworkError", "NotFoundError", "OrmbError", "PermissionDeniedError",
        "PruneResult", "Reference", "RegistryError", "SaveResult", "Settings", "SignResult", "StorageError",
        "TransferResult", "TransportOptions", "UnsafeArchiveError", "UsageError", "VerificationError",
        "VerifyResult", "__version__", "export", "generate_key", "init", "inspect", "inspect_remote",
        "load_settings", "login", "logout", "models", "parse_reference", "prune", "pull", "push", "remove", "save",
        "sign", "tag", "tags", "verify", "version",
    ]


def test_verification_is_a_keyword_of_pull_export_and_the_initializer() -> None:
    """``verify_key=`` and ``trust_dir=`` are part of the public API (keyword-only, default None: the
    environment decides)."""
    import inspect

    from ormb.serving.initializer import pull_and_export

    for function in (ormb.pull, ormb.export, pull_and_export):
        parameters = inspect.signature(function).parameters
        for name in ("verify_key", "trust_dir"):
            assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY and parameters[name].default is None
    assert list(inspect.signature(ormb.sign).parameters)[:2] == ["reference", "key"]
    assert "keys" in inspect.signature(ormb.verify).parameters
