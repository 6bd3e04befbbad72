"""Start-up cost: `ormb --version`, `ormb --help` and `ormb models` (1,000 cached models) against the floor a
click CLI cannot go below (`python -c 'import click'`) and a bare interpreter; and which imports weigh most.

Commands run interleaved (one of each, in a rotating order, then again), with warm caches: start-up is
paid on every command, mostly with the interpreter and the modules in memory.

    python -m transferbench.startup make-cache HOME COUNT   (with bench/ on sys.path) fills a cache
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from .measure import run_measured
from .tools import BIN, clean_env

MODELS = 1000


def make_cache(home: Path, count: int) -> None:
    """``count`` small models saved through the public API, alternating the two artifact formats."""
    os.environ["ORMB_HOME"] = str(home)
    import ormb

    source = home.parent / "startup-model"
    (source / "model").mkdir(parents=True, exist_ok=True)
    (source / "ormbfile.yaml").write_text("format: Others\nauthor: bench\n")
    (source / "model" / "config.json").write_text('{"hidden_size": 64}\n')
    for i in range(count):
        (source / "model" / "weights.bin").write_bytes(i.to_bytes(4, "big") * 1024)
        ormb.save(source, f"localhost:5000/bench/model-{i:04d}:v{i % 3}",
                  artifact_format="modelpack" if i % 2 else "ormb")


def ensure_cache(scratch: Path, count: int = MODELS) -> Path:
    home = scratch / f"startup-{count}-models"
    done = home / "complete"
    if not done.exists():
        import shutil

        shutil.rmtree(home, ignore_errors=True)
        env = clean_env(ORMB_NO_PROGRESS="1", PYTHONPATH=str(Path(__file__).parents[1]))
        subprocess.run([sys.executable, "-m", "transferbench.startup", "make-cache", str(home), str(count)],
                       env=env, check=True)
        done.touch()
    return home


def measure(scratch: Path, runs: int, models: int = MODELS) -> dict[str, Any]:
    home = ensure_cache(scratch, models)
    python, ormb = sys.executable, str(BIN / "ormb")
    env = clean_env(ORMB_HOME=str(home), ORMB_NO_PROGRESS="1")
    commands = {
        "python -c pass": [python, "-c", "pass"],
        "python -c 'import click'": [python, "-c", "import click"],
        "ormb --version": [ormb, "--version"],
        "ormb --help": [ormb, "--help"],
        f"ormb models ({models:,} models cached)": [ormb, "models"],
    }
    timings: dict[str, dict[str, list[float]]] = {k: {"wall_s": [], "user_s": [], "sys_s": []} for k in commands}
    labels = list(commands)
    for _ in range(2):  # warm-up: page cache, .pyc files
        for cmd in commands.values():
            run_measured(cmd, env=env)
    for i in range(runs):
        for label in labels[i % len(labels):] + labels[:i % len(labels)]:
            m = run_measured(commands[label], env=env)
            timings[label]["wall_s"].append(m.wall_s)
            timings[label]["user_s"].append(m.user_s)
            timings[label]["sys_s"].append(m.sys_s)
    return {"models": models, "timings": timings, "importtime": importtime(runs=min(runs, 5))}


LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def importtime(runs: int) -> list[dict[str, Any]]:
    """``python -X importtime -c 'import ormb.cli.main'``: per module the median over ``runs``, heaviest first."""
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(runs):
        result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ormb.cli.main"],
                                capture_output=True, text=True, check=True, env=clean_env())
        for match in LINE.finditer(result.stderr):
            row = seen.setdefault(match[4], {"module": match[4], "depth": (len(match[3]) - 1) // 2,
                                             "self": [], "cumulative": []})
            row["self"].append(int(match[1]) / 1000)
            row["cumulative"].append(int(match[2]) / 1000)
    rows = [{"module": r["module"], "depth": r["depth"], "self_ms": statistics.median(r["self"]),
             "cumulative_ms": statistics.median(r["cumulative"])} for r in seen.values()]
    return sorted(rows, key=lambda r: -r["cumulative_ms"])


if __name__ == "__main__":
    if sys.argv[1:2] == ["make-cache"]:
        make_cache(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        raise SystemExit(__doc__)
