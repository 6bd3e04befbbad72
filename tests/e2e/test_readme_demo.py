"""The README's main command runs from a fresh ORMB_HOME and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_scripts_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "ORMB_HOME": str(tmp_path / "home"), "ORMB_VENV": str(Path(sys.prefix))}
    result = subprocess.run([str(ROOT / "scripts" / "demo")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "v1: saved" in result.stdout
    assert "demo finished" in result.stdout
