"""save / push / pull / export of large models as cost: ormb side by side with its peers and the machine's limits.

    python bench/transfer_bench.py [--runs 3] [--workloads 1g,4x1g] [--scale] [--tools ...] [--drop fadvise]
    python bench/transfer_bench.py --report bench/results/transfer.json [more.json ...]   # tables and goals only

For every operation and tool: MB/s (10^6 bytes of model per second), CPU seconds per GiB (user + system of the
whole process tree), cores used (CPU / wall) and peak RSS, as median and min-max over the runs.  Each run of
a tool starts with an empty CNCF distribution on 127.0.0.1; every command starts after `sync` and a drop of
the pages of every file the benchmark wrote or reads (see --drop).  Tools take turns: run 1 goes ormb, curl,
original ormb, limits, ormb (modelpack), skopeo, oras-py, modelpack-client; run 2 starts one tool later, and
so on.  In the same run, on the same bytes: the limits (read + SHA-256 with hashlib and sha256sum; read + write
with cp and copy_file_range) and the wire (curl upload and download, and download + sha256sum -c).

Workloads (generated once into --workdir, float32 weights from a normal distribution): 1g (one 1 GiB file +
config, tokenizer, README), 4x1g (four 1 GiB files + the same), 16g with --scale (four 4 GiB shards +
tokenizer and config; needs ~50 GB free disk; ormb, curl and the limits only), tiny (for the test).
The original ormb (Go) runs when $ORMB_ORIGINAL_BIN names its binary.  Results: bench/results/transfer.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from transferbench import report, startup
from transferbench.measure import DROP_MODES, Measurement, drop_pages, global_drop_permitted, resident_bytes
from transferbench.registry import Distribution
from transferbench.tools import TOOL_KEYS, Context, Tool, all_tools
from transferbench.workloads import SCALE, SCALE_FREE_BYTES, WORKLOADS, Workload, make_workload

ROOT = Path(__file__).resolve().parents[1]
SCALE_TOOLS = ("ormb", "curl", "limits")


class Bench:
    def __init__(self, workdir: Path, runs: int, drop_mode: str) -> None:
        self.workdir, self.runs, self.drop_mode = workdir, runs, drop_mode
        self.records: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self.errors: list[str] = []

    def workload(self, workload: Workload, tools: list[Tool]) -> None:
        size = workload.size
        ready: list[Tool] = []
        for tool in tools:
            reason = tool.unavailable(workload)
            if reason:
                self.skipped[f"{tool.name} on {workload.name}"] = reason
                print(f"note: {tool.name} skipped on {workload.name}: {reason}", file=sys.stderr)
            else:
                ready.append(tool)
        keep = {id(tool): tool.prepare(workload, self.workdir) for tool in ready}
        self.check_drop(workload)
        run_dir = self.workdir / "run"
        registry = Distribution(run_dir / "registry")
        try:
            for run in range(self.runs):
                order = ready[run % len(ready):] + ready[:run % len(ready)]
                for tool in order:
                    print(f"{workload.name} run {run + 1}/{self.runs}: {tool.name}", file=sys.stderr)
                    registry.stop()
                    shutil.rmtree(run_dir, ignore_errors=True)
                    run_dir.mkdir(parents=True)
                    registry.start()

                    def record(operation: str, tool_name: str, m: Measurement, run: int = run) -> None:
                        self.records.append({
                            "workload": workload.name, "operation": operation, "tool": tool_name, "run": run,
                            "bytes": size, "wall_s": m.wall_s, "user_s": m.user_s, "sys_s": m.sys_s,
                            "rss_mib": m.rss_mib, "server_cpu_s": m.server_cpu_s,
                            "others_cores": m.others_cores})

                    ctx = Context(workload, registry, run_dir, self.drop_mode, record, keep[id(tool)])
                    try:
                        tool.run(ctx)
                    except Exception as error:  # one peer failing must not lose the others' figures
                        self.errors.append(f"{tool.name} on {workload.name}, run {run + 1}: {error}")
                        print(f"error: {self.errors[-1]}", file=sys.stderr)
        finally:
            registry.stop()
            shutil.rmtree(run_dir, ignore_errors=True)

    def check_drop(self, workload: Workload) -> None:
        """Refuse to measure if dropping pages does not work here (the figures would be warm-cache ones)."""
        if self.drop_mode == "none":
            return
        probe = workload.files[0]
        with open(probe, "rb") as f:
            f.read(1 << 20)
        drop_pages([probe], self.drop_mode)
        left = resident_bytes(probe)
        if left > 0:
            raise SystemExit(f"dropping pages with {self.drop_mode} left {left} bytes of {probe} cached")


def environment(drop_mode: str) -> dict[str, Any]:
    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "not installed"

    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    packages = {}
    for name in ("ormb", "oras", "modelpack-client", "numpy"):
        try:
            packages[name] = package_version(name)
        except PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}, {platform.machine()}, {os.cpu_count()} cores",
        "kernel": platform.release(), "python": platform.python_version(), "packages": packages,
        "curl": version(["curl", "--version"]), "skopeo": version(["skopeo", "--version"]),
        "distribution": version(["/usr/bin/docker-registry", "--version"]),
        "drop": drop_mode, "global_drop_permitted": global_drop_permitted(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workloads", default="1g,4x1g", help=f"comma-separated, of {', '.join(WORKLOADS)}")
    parser.add_argument("--scale", action="store_true", help=f"also the {SCALE} workload (one run; ~50 GB of disk)")
    parser.add_argument("--tools", default=",".join(TOOL_KEYS), help="comma-separated, of " + ", ".join(TOOL_KEYS))
    parser.add_argument("--drop", choices=DROP_MODES, default="fadvise",
                        help="fadvise: posix_fadvise(DONTNEED) on every file the benchmark touches (default; other "
                             "users' caches stay); global: also echo 1 > /proc/sys/vm/drop_caches; none: sync only")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up measurements")
    parser.add_argument("--startup-runs", type=int, default=15)
    parser.add_argument("--startup-models", type=int, default=startup.MODELS, help="models in the cache 'ormb models' lists")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ormb-bench-transfer")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "transfer.json")
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                        help="only print the tables and goals of earlier results (merged)")
    args = parser.parse_args()

    if args.report:
        results = merge([json.loads(p.read_text()) for p in args.report])
        print(report.render(results))
        return

    keys = set(args.tools.split(","))
    unknown = keys - set(TOOL_KEYS)
    if unknown:
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    if args.drop == "global" and not global_drop_permitted():
        parser.error("--drop global needs write access to /proc/sys/vm/drop_caches (root)")
    names = [w for w in args.workloads.split(",") if w]
    if args.scale and SCALE not in names:
        names.append(SCALE)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if SCALE in names and shutil.disk_usage(args.workdir).free < SCALE_FREE_BYTES:
        parser.error(f"the {SCALE} workload needs {SCALE_FREE_BYTES / 1e9:.0f} GB free in {args.workdir}")

    installed_bytecode()
    bench = Bench(args.workdir, args.runs, args.drop)
    results: dict[str, Any] = {"environment": environment(args.drop), "runs": args.runs, "workloads": names}
    for name in names:
        print(f"workload {name}: generating (or reusing) ...", file=sys.stderr)
        workload = make_workload(args.workdir / "workloads", name)
        tools = [t for t in all_tools() if t.key in keys and (name != SCALE or t.key in SCALE_TOOLS)]
        if name == SCALE:
            bench.runs = 1
        bench.workload(workload, tools)
        bench.runs = args.runs
    if not args.no_startup:
        print("start-up ...", file=sys.stderr)
        results["startup"] = startup.measure(args.workdir, args.startup_runs, args.startup_models)
    results.update(records=bench.records, skipped=bench.skipped, errors=bench.errors)
    results["goals"] = [goal.__dict__ for goal in report.goals(results)]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1))
    print(report.render(results))
    print(f"\nresults: {args.output}", file=sys.stderr)


def installed_bytecode() -> None:
    """Measure ormb as an installed package runs: with its modules' bytecode compiled and cached.

    A shell that sets ``PYTHONDONTWRITEBYTECODE`` (this project's sessions do) would make every ormb command
    compile ormb's modules from source (an editable install has no bytecode until first use), while the
    peers' come precompiled by pip: 0.2-0.3 CPU s per command in the phase-1 baseline, start-up included.
    The variable is dropped for every command measured, and ormb's modules are compiled once up front."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    import ormb

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(ormb.__file__).parent)], check=True)


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several result files as one: records, skips and errors added up, the last start-up figures kept."""
    merged: dict[str, Any] = {"records": [], "skipped": {}, "errors": []}
    for part in parts:
        merged["records"] += part.get("records", [])
        merged["skipped"].update(part.get("skipped", {}))
        merged["errors"] += part.get("errors", [])
        if part.get("startup"):
            merged["startup"] = part["startup"]
    return merged


if __name__ == "__main__":
    main()
