"""Start-up: `ormb --version` and `ormb --help` import click and the CLI module, not the heavy libraries that only
the commands that run need (issue 15: start-up within 1.5x of `import click`; the timing is in bench/, not here).
`import ormb` loads its public names on first use (PEP 562), and every one of them still works."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ormb

pytestmark = pytest.mark.e2e

HEAVY = ("pydantic", "urllib3", "rich", "yaml", "isal", "zstandard", "jinja2", "cryptography", "ormb.api",
         "ormb.cache", "ormb.model.ormbfile", "ormb.registry.transport", "ormb.signing.keys")

REPORT = "import json, sys; print(json.dumps(sorted(sys.modules)))"


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code`` (then printing them)."""
    result = subprocess.run([sys.executable, "-c", f"{code}\n{REPORT}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["save", "--help"], ["registry", "serve", "--help"],
                                  ["key", "generate", "--help"]])
def test_version_and_help_import_no_heavy_module(args: list[str]) -> None:
    code = ("import contextlib, io\nfrom ormb.cli.main import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n    code = main({args!r})\nassert code == 0, code")
    loaded = _modules_after(code)
    assert "ormb.cli.main" in loaded  # the probe ran the CLI
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_import_ormb_is_light_and_every_public_name_loads() -> None:
    assert not _modules_after("import ormb") & set(HEAVY)
    loaded = _modules_after("import ormb\nfor name in ormb.__all__:\n    getattr(ormb, name)")
    assert {"ormb.api", "pydantic"} <= loaded
    for name in ormb.__all__:
        assert getattr(ormb, name) is not None, name
    assert set(ormb.__all__) <= set(dir(ormb))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        ormb.nothing_here  # noqa: B018


def test_a_command_still_gets_what_it_imports_late() -> None:
    """The deferred API module is the real one once a command runs (`ormb version` prints through it)."""
    result = subprocess.run([str(sys.executable), "-m", "ormb", "version", "--json"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == ormb.__version__


PUSH_NEEDS_NONE_OF = ("pydantic", "cryptography", "ormb.api", "ormb.model.ormbfile", "ormb.model.modelpack",
                      "ormb.model.export", "ormb.model.loaded", "ormb.signing.keys", "ormb.signing.verify")


def test_push_imports_neither_the_model_layer_nor_signing(tmp_path: object) -> None:
    """`ormb push` runs through ormb.pushing: importing ormb.api whole cost every push 0.18 s of CPU (a sixth of
    pushing 1 GiB here, bench/README.md).  The probe pushes to a port nothing listens on: the command gets as far
    as the registry (exit 3 or 1), with every module a push needs loaded by then."""
    code = ("import contextlib, io, os, tempfile\nfrom ormb.cli.main import main\n"
            "os.environ['ORMB_HOME'] = tempfile.mkdtemp()\nos.environ['ORMB_NO_PROGRESS'] = '1'\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "    code = main(['push', '127.0.0.1:9/x/m:v1'])\nassert code != 0, code")
    loaded = _modules_after(code)
    assert "ormb.pushing" in loaded and "ormb.cache" in loaded  # the probe reached the push
    assert not loaded & set(PUSH_NEEDS_NONE_OF), sorted(loaded & set(PUSH_NEEDS_NONE_OF))
