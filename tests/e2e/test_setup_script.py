"""scripts/lib/setup.sh (what scripts/demo and scripts/test run first) on a stock Debian without python3-venv.

The machine is simulated with shims on PATH: ``python3 -m venv`` fails with Debian's ensurepip message until
the package is "installed"; ``id``, ``sudo``, ``dpkg`` and ``apt-get`` say whether we may install and record
what was asked; the virtualenv's pip only says what it installs.  Everything else is the real script.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
MINOR = sys.version_info[1]
DEBIAN_MESSAGE = (
    "The virtual environment was not created successfully because ensurepip is not\\n"
    "available.  On Debian/Ubuntu systems, you need to install the python3-venv\\n"
    f"package using the following command.\\n\\n    apt install python3.{MINOR}-venv\\n"
)


def _shims(tmp_path: Path, *, uid: int, sudo_ok: bool) -> tuple[Path, Path]:
    shims, state = tmp_path / "shims", tmp_path / "state"
    shims.mkdir()
    state.mkdir()
    installed = state / "venv-package-installed"
    scripts = {
        "python3": f"""#!/bin/bash
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  if [ ! -e {installed} ]; then printf '{DEBIAN_MESSAGE}'; exit 1; fi
  mkdir -p "$3/bin" && printf '#!/bin/bash\nexec {sys.executable} "$@"\n' > "$3/bin/python" && chmod +x "$3/bin/python"
  printf '#!/bin/bash\\necho "Requirement already satisfied: click"\\necho "Collecting onnx"\\n'\\
'echo "Successfully installed onnx-1.0"\\n' > "$3/bin/pip" && chmod +x "$3/bin/pip"
  exit 0
fi
exec {sys.executable} "$@"
""",
        "id": f"#!/bin/bash\nif [ \"$1\" = -u ]; then echo {uid}; else exec /usr/bin/id \"$@\"; fi\n",
        "sudo": "#!/bin/bash\n" + ("exec \"$@\"\n" if sudo_ok else "exit 1\n"),
        "dpkg": f"#!/bin/bash\n[ -e {installed} ]\n",
        "apt-get": f"#!/bin/bash\necho \"$@\" >> {state}/apt-get.log\n"
                   f"if [ \"$1\" = install ] || [ \"$3\" = install ] || [[ \" $* \" == *' install '* ]]; then"
                   f" touch {installed}; fi\n",
    }
    for name, text in scripts.items():
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    return shims, state


def _setup(tmp_path: Path, shims: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "ORMB_VENV": str(tmp_path / "venv")}
    return subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib/setup.sh example"], capture_output=True,
                          text=True, env=env, timeout=120)


def test_without_rights_it_says_which_package_to_install(tmp_path: Path) -> None:
    shims, state = _shims(tmp_path, uid=1000, sudo_ok=False)
    result = _setup(tmp_path, shims)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: python3 -m venv needs the Debian package python3.{MINOR}-venv (ensurepip is not installed) "
        f"(run: sudo apt-get install python3.{MINOR}-venv, then run this again)")
    assert "==> creating the virtualenv" in result.stdout
    assert not (tmp_path / "venv").exists() and not (state / "apt-get.log").exists()


def test_with_rights_it_installs_the_package_and_says_what_it_does(tmp_path: Path) -> None:
    shims, state = _shims(tmp_path, uid=0, sudo_ok=True)
    result = _setup(tmp_path, shims)
    assert result.returncode == 0, result.stderr
    assert f"install -y -qq --no-install-recommends python3.{MINOR}-venv" in (state / "apt-get.log").read_text()
    lines = result.stdout.splitlines()
    assert lines[:3] == [f"==> creating the virtualenv {tmp_path / 'venv'}",
                         f"==> python3 -m venv needs ensurepip, which Debian ships in python3.{MINOR}-venv",
                         f"==> installing Debian packages: python3.{MINOR}-venv"]
    assert lines[3].startswith("==> installing ormb with [example] into ")
    assert lines[4:] == ["    Collecting onnx", "    Successfully installed onnx-1.0",
                         f"==> ormb is installed: {tmp_path / 'venv'}/bin/ormb"]
