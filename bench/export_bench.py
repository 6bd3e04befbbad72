"""``ormb export`` in-process: one 1 GiB file (both artifact formats), and 20,000 small files (ormb format: a
ModelPack manifest of 20,000 layers is over the 4 MiB manifest limit).

Measures the export only (the model is saved into a fresh cache first, untimed), median of ``--runs``,
the destination removed (and ``sync``) between runs; wall time and the process's CPU time (all its
threads), which varies less on a shared machine.  Compare two versions of the code by running the
script with each on ``PYTHONPATH``::

    PYTHONPATH=src .venv/bin/python bench/export_bench.py --runs 3
    PYTHONPATH=/tmp/ormb-before/src .venv/bin/python bench/export_bench.py --runs 3

The 20,000 files sit 20 to a directory (1,000 directories), 1-4 KiB each, as a dataset-like model would.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from ormb import api
from ormb.config import Settings


def _big(root: Path) -> Path:
    model = root / "big" / "model"
    model.mkdir(parents=True)
    block = os.urandom(1 << 20)
    with open(model / "w.bin", "wb") as out:
        for i in range(1024):
            out.write(block[i:] + block[:i])  # incompressible, not one repeated block
    (root / "big" / "ormbfile.yaml").write_text("format: Others\n")
    return root / "big"


def _many(root: Path) -> Path:
    model = root / "many" / "model"
    for d in range(1000):
        (model / f"d{d:04}").mkdir(parents=True)
        for f in range(20):
            (model / f"d{d:04}" / f"f{f:02}.txt").write_bytes(os.urandom(1024 + 150 * f))
    (root / "many" / "ormbfile.yaml").write_text("format: Others\n")
    return root / "many"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where to work (default: a temporary directory on /tmp)")
    parser.add_argument("--only", choices=["big", "many"], default=None, help="one workload only")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ormb-export-bench-", dir=args.workdir))
    try:
        settings = Settings(home=root / "home", default_registry="localhost:5000")
        os.environ["ORMB_NO_PROGRESS"] = "1"
        sources = {}
        if args.only != "many":
            sources["1 GiB file"] = _big(root)
        if args.only != "big":
            sources["20,000 files"] = _many(root)
        for name, source in sources.items():
            for fmt in ("ormb", "modelpack") if name == "1 GiB file" else ("ormb",):  # 20,000 layers: manifest too big
                ref = f"bench/{fmt}-{len(name)}:v1"
                api.save(source, ref, settings=settings, artifact_format=fmt)
                times, cpu = [], []
                for _ in range(args.runs):
                    dest = root / "dest"
                    shutil.rmtree(dest, ignore_errors=True)
                    subprocess.run(["sync"], check=False)
                    start, start_cpu = time.perf_counter(), time.process_time()
                    api.export(ref, dest, settings=settings)
                    times.append(time.perf_counter() - start)
                    cpu.append(time.process_time() - start_cpu)
                print(f"{name:>13} {fmt:>9}: median {statistics.median(times):.2f} s "
                      f"(min {min(times):.2f}, max {max(times):.2f}); CPU median {statistics.median(cpu):.2f} s",
                      flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
