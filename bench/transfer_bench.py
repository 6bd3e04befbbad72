"""save / push / pull / export of large models: ormb side by side with curl, skopeo, oras-py and hashlib.

    python bench/transfer_bench.py [--runs 3] [--workloads a,b,c] [--workdir DIR]

Workloads (generated here, float32 weights from a normal distribution, like real weights):
  a  one 1 GiB weight file plus a few small files
  b  four 256 MiB weight files
  c  a 4 GiB model (four 1 GiB files), for peak memory only (one run)
Registry: CNCF distribution (/usr/bin/docker-registry) on 127.0.0.1, filesystem storage in the workdir.
Each ormb operation runs as the CLI a user types, in a fresh ORMB_HOME (or a new repository, so no blob is
skipped), for both artifact formats (ormb = one tar+gzip layer, modelpack = one layer per file).
References in the same run: curl upload (POST + PUT -T) and download (-o file) of the same bytes, skopeo copy
(cache layout <-> registry), oras-py push/pull, and Python hashlib.sha256 over the same files.
Reported: median MB/s (10^6 bytes/s) with min-max and peak RSS per process; the table also goes to
bench/results/transfer.json and bench/results/transfer.png.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

MB = 1_000_000
MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settle() -> None:
    """Let the previous run's gigabytes reach the disk, so they do not slow down the next measurement."""
    os.sync()
    time.sleep(1)


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, float]:
    """Run a command after :func:`settle`; return (seconds, peak RSS in MiB) of that process.

    The RSS comes from /usr/bin/time: a child forked from this (large) process would report this
    process's memory as its own peak, because Linux keeps the pre-exec high-water mark.
    """
    settle()
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        start = time.perf_counter()
        result = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *cmd], env=env, cwd=cwd,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.decode()[-2000:]}")
        return elapsed, int(rss_file.read().split()[-1]) / 1024


def make_workload(directory: Path, files: dict[str, int]) -> int:
    """Weight files of normally distributed float32 (incompressible, like real weights) + small files."""
    import numpy as np

    model = directory / "model"
    model.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(42)
    total = 0
    for name, size in files.items():
        path = model / name
        if not path.exists() or path.stat().st_size != size:
            with open(path, "wb") as f:
                for _ in range(size // (64 * MiB)):
                    rng.standard_normal(16 * MiB, dtype=np.float32).tofile(f)
        total += size
    (model / "config.json").write_text(json.dumps({"hidden_size": 4096, "num_layers": 32}))
    (model / "tokenizer.json").write_text(json.dumps({"vocab": {str(i): i for i in range(2000)}}))
    (model / "README.md").write_text("# benchmark model\n")
    (directory / "ormbfile.yaml").write_text("format: Others\nauthor: bench\n")
    return total


@dataclass
class Row:
    workload: str
    operation: str
    tool: str
    mbps: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.mbps) if self.mbps else float("nan")


class Bench:
    def __init__(self, workdir: Path, runs: int) -> None:
        self.workdir, self.runs = workdir, runs
        self.rows: dict[tuple[str, str, str], Row] = {}
        self.port = free_port()
        config = workdir / "distribution.yml"
        config.write_text(json.dumps({
            "version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(workdir / "registry")}, "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{self.port}"},
        }))
        self.registry = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(config)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        self.host = f"127.0.0.1:{self.port}"
        self.counter = 0

    def close(self) -> None:
        self.registry.terminate()
        self.registry.wait(10)

    def record(self, workload: str, operation: str, tool: str, size: int, seconds: float, rss: float) -> None:
        row = self.rows.setdefault((workload, operation, tool), Row(workload, operation, tool))
        row.mbps.append(size / MB / seconds)
        row.rss.append(rss)

    def env(self, home: Path, progress: bool = False) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORMB_")}
        env.update({"ORMB_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"})
        if not progress:
            env["ORMB_NO_PROGRESS"] = "1"
        return env

    def fresh(self, name: str) -> Path:
        self.counter += 1
        path = self.workdir / "homes" / f"{name}-{self.counter}"
        shutil.rmtree(path, ignore_errors=True)
        return path

    # -- ormb ---------------------------------------------------------------------------------
    def ormb(self, workload: str, directory: Path, size: int, fmt: str, runs: int) -> None:
        ormb = str(BIN / "ormb")
        tool = f"ormb ({fmt})"
        for _ in range(runs):
            home = self.fresh("save")
            repo = f"{self.host}/bench/{workload}-{fmt}-{self.counter}"
            ref = f"{repo}:v1"
            seconds, rss = run([ormb, "save", str(directory), ref, "--format", fmt], self.env(home))
            self.record(workload, "save", tool, size, seconds, rss)
            seconds, rss = run([ormb, "push", ref], self.env(home))
            self.record(workload, "push", tool, size, seconds, rss)
            seconds, rss = run([ormb, "push", ref], self.env(home))  # a repeat push: nothing to send
            self.record(workload, "push again (nothing to send)", tool, size, seconds, rss)
            shutil.rmtree(home)
            puller = self.fresh("pull")
            seconds, rss = run([ormb, "pull", ref], self.env(puller))
            self.record(workload, "pull", tool, size, seconds, rss)
            out = self.workdir / "export"
            shutil.rmtree(out, ignore_errors=True)
            seconds, rss = run([ormb, "export", ref, "-d", str(out)], self.env(puller))
            self.record(workload, "export", tool, size, seconds, rss)
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(puller)

    # -- references ---------------------------------------------------------------------------
    def curl(self, workload: str, files: list[Path], size: int) -> None:
        for _ in range(self.runs):
            repo = f"bench/curl-{workload}-{self.fresh('curl').name}"
            seconds_up = seconds_down = 0.0
            rss = 0.0
            for path in files:
                digest = "sha256:" + _sha256(path)
                conn = http.client.HTTPConnection(self.host)
                conn.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
                response = conn.getresponse()
                response.read()
                location = urllib.parse.urljoin(f"http://{self.host}/", response.headers["Location"])
                conn.close()
                url = location + ("&" if "?" in location else "?") + f"digest={digest}"
                s, r = run(["curl", "-sS", "-f", "-o", "/dev/null", "-X", "PUT", "-T", str(path),
                            "-H", "Content-Type: application/octet-stream", url])
                seconds_up += s
                rss = max(rss, r)
                target = self.workdir / "curl.out"
                s, r = run(["curl", "-sS", "-f", "-o", str(target), f"http://{self.host}/v2/{repo}/blobs/{digest}"])
                seconds_down += s
                target.unlink()
            self.record(workload, "push", "curl (one stream, no verification)", size, seconds_up, rss)
            self.record(workload, "pull", "curl (one stream, no verification)", size, seconds_down, rss)

    def hashlib_limit(self, workload: str, files: list[Path], size: int) -> None:
        for _ in range(self.runs):
            settle()
            start = time.perf_counter()
            for path in files:
                _sha256(path)
            self.record(workload, "save", "hashlib.sha256 (read + hash limit)", size, time.perf_counter() - start, 0)

    def skopeo(self, workload: str, directory: Path, size: int) -> None:
        skopeo = shutil.which("skopeo")
        if skopeo is None:
            return
        home = self.fresh("skopeo")
        run([str(BIN / "ormb"), "save", str(directory), "localhost:5000/bench/src:v1"], self.env(home))
        layout = home / "cache"
        for _ in range(self.runs):
            repo = f"{self.host}/bench/skopeo-{workload}-{self.fresh('s').name}:v1"
            for directory in (Path("/var/lib/containers/cache"), Path.home() / ".local/share/containers/cache"):
                for cache in directory.glob("blob-info-cache-v1.*"):  # skopeo would mount blobs it saw before
                    cache.unlink(missing_ok=True)
            seconds, rss = run([skopeo, "copy", "-q", "--dest-tls-verify=false",
                                f"oci:{layout}:localhost:5000/bench/src:v1", f"docker://{repo}"])
            self.record(workload, "push", "skopeo copy", size, seconds, rss)
            out = self.workdir / "skopeo-out"
            shutil.rmtree(out, ignore_errors=True)
            seconds, rss = run([skopeo, "copy", "-q", "--src-tls-verify=false", f"docker://{repo}", f"oci:{out}:v1"])
            self.record(workload, "pull", "skopeo copy", size, seconds, rss)
            shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(home)

    def oras(self, workload: str, directory: Path, size: int) -> None:
        try:
            import oras  # noqa: F401
        except ImportError:
            return
        files = sorted(str(p.relative_to(directory)) for p in (directory / "model").iterdir())
        for _ in range(self.runs):
            target = f"{self.host}/bench/oras-{workload}-{self.fresh('o').name}:v1"
            push = ("import oras.client, sys; oras.client.OrasClient(insecure=True).push("
                    f"target={target!r}, files={files!r}, quiet=True)")
            seconds, rss = run([sys.executable, "-c", push], cwd=directory)
            self.record(workload, "push", "oras-py", size, seconds, rss)
            out = self.workdir / "oras-out"
            shutil.rmtree(out, ignore_errors=True)
            pull = f"import oras.client; oras.client.OrasClient(insecure=True).pull(target={target!r}, outdir={str(out)!r})"
            seconds, rss = run([sys.executable, "-c", pull])
            self.record(workload, "pull", "oras-py", size, seconds, rss)
            shutil.rmtree(out, ignore_errors=True)

    def progress_overhead(self, workload: str, directory: Path, size: int) -> None:
        """ormb pull with progress bars drawn (to a pseudo-terminal) against none."""
        home = self.fresh("p")
        ref = f"{self.host}/bench/progress-{workload}:v1"
        run([str(BIN / "ormb"), "save", str(directory), ref], self.env(home))
        run([str(BIN / "ormb"), "push", ref], self.env(home))
        for _ in range(self.runs):
            for label, progress in (("ormb pull, no progress", False), ("ormb pull, progress bars", True)):
                puller = self.fresh("pp")
                cmd = [str(BIN / "ormb"), "pull", ref]
                if progress:  # 'script' gives the command a terminal, so the bars are really drawn
                    cmd = ["script", "-qec", " ".join(cmd), "/dev/null"]
                seconds, rss = run(cmd, self.env(puller, progress=progress))
                self.record(workload, "progress overhead", label, size, seconds, rss)
                shutil.rmtree(puller)


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            hasher.update(chunk)
    return hasher.hexdigest()


REFERENCE = {"save": "hashlib.sha256 (read + hash limit)", "push": "curl (one stream, no verification)",
             "pull": "curl (one stream, no verification)"}


def report(bench: Bench, out: Path) -> str:
    lines = ["| workload | operation | tool | median MB/s (min-max) | vs reference | peak RSS MiB |", "|---|---|---|---|---|---|"]
    for (workload, operation, tool), row in sorted(bench.rows.items(), key=lambda kv: kv[0]):
        reference = bench.rows.get((workload, operation, REFERENCE.get(operation, "")))
        ratio = f"{row.median() / reference.median():.2f}x" if reference and reference is not row else ""
        spread = f"{min(row.mbps):.0f}-{max(row.mbps):.0f}" if len(row.mbps) > 1 else ""
        rss = f"{max(row.rss):.0f}" if any(row.rss) else "-"
        lines.append(f"| {workload} | {operation} | {tool} | {row.median():.0f} ({spread}) | {ratio} | {rss} |")
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "transfer.json").write_text(json.dumps(
        [{"workload": r.workload, "operation": r.operation, "tool": r.tool, "mbps": r.mbps, "peak_rss_mib": r.rss}
         for r in bench.rows.values()], indent=2))
    try:
        _chart(bench, out / "transfer.png")
    except ImportError:
        pass
    return table


def _chart(bench: Bench, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in bench.rows.values() if r.workload in ("a", "b") and r.operation in ("save", "push", "pull", "export")]
    labels = [f"{r.workload} {r.operation}\n{r.tool}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, max(4, len(rows) * 0.35)))
    ax.barh(range(len(rows)), [r.median() for r in rows],
            xerr=[[r.median() - min(r.mbps) for r in rows], [max(r.mbps) - r.median() for r in rows]],
            color=["#2b5fd9" if r.tool.startswith("ormb") else "#9aa4b5" for r in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("MB/s (median, min-max)")
    ax.set_title("ormb vs references, CNCF distribution on 127.0.0.1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workloads", default="a,b,c")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ormb-bench-transfer")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.workdir / "homes", ignore_errors=True)
    shutil.rmtree(args.workdir / "registry", ignore_errors=True)
    specs = {"a": {"weights.bin": 1024 * MiB}, "b": {f"weights-{i}.bin": 256 * MiB for i in range(4)},
             "c": {f"weights-{i}.bin": 1024 * MiB for i in range(4)}}
    bench = Bench(args.workdir, args.runs)
    try:
        for workload in args.workloads.split(","):
            directory = args.workdir / f"workload-{workload}"
            print(f"workload {workload}: generating ...", file=sys.stderr)
            size = make_workload(directory, specs[workload])
            weights = sorted((directory / "model").glob("weights*.bin"))
            runs = 1 if workload == "c" else args.runs
            for fmt in ("ormb", "modelpack"):
                print(f"workload {workload}: ormb {fmt} ...", file=sys.stderr)
                bench.ormb(workload, directory, size, fmt, runs)
            if workload == "c":
                continue
            print(f"workload {workload}: references ...", file=sys.stderr)
            bench.curl(workload, weights, size)
            bench.hashlib_limit(workload, weights, size)
            bench.skopeo(workload, directory, size)
            bench.oras(workload, directory, size)
            if workload == "a":
                bench.progress_overhead(workload, directory, size)
    finally:
        bench.close()
    table = report(bench, ROOT / "bench" / "results")
    print(f"\n{args.runs} runs (workload c: 1), CNCF distribution 2.8 on 127.0.0.1, {os.cpu_count()} cores\n")
    print(table)


if __name__ == "__main__":
    main()
