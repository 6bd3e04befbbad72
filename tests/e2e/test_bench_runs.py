"""The transfer benchmark runs end to end on a tiny workload and produces its tables, goals and JSON.

Speed is measured by the benchmark, never asserted here: this only proves the script still works (after
changes to the CLI it drives), so its figures can be trusted to exist when someone runs it for real.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "transfer_bench.py"
pytestmark = pytest.mark.e2e

FORMATS = ("ormb (default format)", "ormb (modelpack)")
OPERATIONS = ("save", "push", "save + push", "pull", "pull to directory", "export")
LIMITS = ("hashlib read + SHA-256", "sha256sum", "cp", "copy_file_range")


def test_transfer_bench_runs_on_a_tiny_workload(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    cmd = [sys.executable, str(SCRIPT), "--workloads", "tiny", "--runs", "1", "--tools", "ormb,limits",
           "--startup-runs", "1", "--startup-models", "3", "--workdir", str(tmp_path / "work"), "--output", str(output)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads(output.read_text())
    assert results["errors"] == [] and results["skipped"] == {}
    assert results["environment"]["drop"] == "fadvise"
    measured = {(r["operation"], r["tool"]) for r in results["records"]}
    assert {(op, tool) for op in OPERATIONS for tool in FORMATS} <= measured
    assert {("limit", tool) for tool in LIMITS} <= measured
    for record in results["records"]:
        assert record["workload"] == "tiny" and record["bytes"] >= 6 << 20
        assert record["wall_s"] > 0 and record["user_s"] + record["sys_s"] > 0 and record["rss_mib"] > 1

    verdicts = {(g["goal"].split(":")[0], g["tool"]) for g in results["goals"]}
    assert {("save", tool) for tool in FORMATS} <= verdicts
    assert {("export", tool) for tool in FORMATS} <= verdicts
    assert any(g["goal"].startswith("start-up: `ormb --version`") for g in results["goals"])
    assert {"python -c 'import click'", "ormb --version", "ormb --help"} <= set(results["startup"]["timings"])
    assert any(row["module"] == "ormb.cli.main" for row in results["startup"]["importtime"])

    table = done.stdout
    assert "#### workload tiny" in table and "#### goals (issue 15)" in table
    assert "| export | ormb (modelpack) |" in table and "| save | *limit: hashlib read + SHA-256* |" in table

    again = subprocess.run([sys.executable, str(SCRIPT), "--report", str(output)], capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == table.strip()  # the tables and goals come from the JSON alone
