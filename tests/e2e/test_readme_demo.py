"""The README's main command (scripts/demo: the digits example end to end) runs and exits 0."""

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
    out = result.stdout
    assert "==> installing ormb with [example] into " in out  # it says what it is doing while it installs
    assert "signature from the graph: X float32[-1, 64]" in out
    assert "1 file laid out for mlflow" in out
    accuracy = float(out.split("accuracy from the model server: ")[1].split(" = ")[1].split()[0])
    assert accuracy > 0.9, out
    assert "example finished" in out
