"""Blob upload/download throughput: ``ormb registry serve`` vs CNCF distribution, side by side.

    python bench/registry_bench.py [--size-mib 1024] [--runs 3] [--workdir /tmp/ormb-bench]

curl is the client (one, then four at once, each with its own blob of --size-mib).  Both
registries run on 127.0.0.1 with filesystem storage in --workdir, as separate processes, started
afresh for every run and interleaved (ormb, distribution, distribution, ormb, ...): the machine's
cores are shared, so medians of interleaved runs are what compares.  Prints a table of median
MB/s (min-max), the servers' CPU seconds per GiB moved (every process of the server: gunicorn's
arbiter and workers) and peak RSS; writes the numbers to bench/results/registry.json.
Needs: curl, docker-registry (Debian), ormb installed.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MB = 1_000_000
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_distribution(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = workdir / "distribution.yml"
    config.write_text(json.dumps({
        "version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "distribution")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }))
    process = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for(port)
    return process, port


def start_ormb(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    ormb = shutil.which("ormb") or str(Path(sys.executable).with_name("ormb"))
    extra = os.environ.get("ORMB_BENCH_SERVE_ARGS", "").split()  # e.g. "--workers 2", to compare settings
    process = subprocess.Popen([ormb, "registry", "serve", "--root", str(workdir / "ormb"), "--addr",
                                f"127.0.0.1:{port}", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the access log (on by default) goes to /dev/null here: its cost is measured, its lines are not kept
    wait_for(port)
    return process, port


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (gunicorn's workers are children of its arbiter)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        stack.extend(int(c) for c in children)
    return found


def peak_rss_mib(pid: int) -> float:
    """The largest peak RSS among the server's processes."""
    peaks = []
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return max(peaks, default=float("nan"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the server's processes so far."""
    total = 0.0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def make_blobs(workdir: Path, size: int, count: int) -> list[tuple[Path, str]]:
    """``count`` files of ``size`` random bytes, each different (so each has its own digest)."""
    base = workdir / "blob-0"
    if not base.exists() or base.stat().st_size != size:
        with open(base, "wb") as f:
            remaining = size
            while remaining:
                n = min(remaining, 64 << 20)
                f.write(os.urandom(n))
                remaining -= n
    blobs = []
    for i in range(count):
        path = workdir / f"blob-{i}"
        if i and (not path.exists() or path.stat().st_size != size):
            shutil.copyfile(base, path)
            with open(path, "r+b") as f:
                f.write(i.to_bytes(8, "big"))
        hasher = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                hasher.update(chunk)
        blobs.append((path, "sha256:" + hasher.hexdigest()))
    return blobs


def upload(port: int, repo: str, path: Path, digest: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    response = conn.getresponse()
    response.read()
    location = urllib.parse.urljoin(f"http://127.0.0.1:{port}/", response.headers["Location"])
    conn.close()
    url = location + ("&" if "?" in location else "?") + f"digest={digest}"
    start = time.perf_counter()
    result = subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", "-X", "PUT", "-T", str(path),
                             "-H", "Content-Type: application/octet-stream", url], capture_output=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"upload failed: {result.stderr.decode()}")
    return elapsed


def download(port: int, repo: str, digest: str) -> float:
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "-f", "-L", "-o", "/dev/null", f"http://127.0.0.1:{port}/v2/{repo}/blobs/{digest}"],
                   check=True)
    return time.perf_counter() - start


def measure_once(name: str, port: int, pid: int, blobs: list[tuple[Path, str]], clients: int, run: int,
                 size: int, results: dict[str, list[float]]) -> None:
    chosen = blobs[:clients]
    repo = f"bench/run{run}x{clients}"
    moved_gib = clients * size / (1 << 30)
    with ThreadPoolExecutor(clients) as pool:
        for op, action in (("upload", lambda b: upload(port, repo, b[0], b[1])),
                           ("download", lambda b: download(port, repo, b[1]))):
            cpu = cpu_seconds(pid)
            start = time.perf_counter()
            list(pool.map(action, chosen))
            elapsed = time.perf_counter() - start
            results.setdefault(f"{name} {op} x{clients}", []).append(clients * size / MB / elapsed)
            results.setdefault(f"{name} {op} x{clients} cpu", []).append((cpu_seconds(pid) - cpu) / moved_gib)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ormb-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    size = args.size_mib << 20
    print(f"generating 4 blobs of {args.size_mib} MiB in {workdir} ...", file=sys.stderr)
    blobs = make_blobs(workdir, size, 4)
    results: dict[str, list[float]] = {}
    starters = {"distribution": start_distribution, "ormb": start_ormb}
    for run in range(args.runs):
        order = ["ormb", "distribution"] if run % 2 == 0 else ["distribution", "ormb"]
        for name in order:
            process, port = starters[name](workdir)
            try:
                for clients in (1, 4):
                    print(f"run {run + 1}: {name}, {clients} client(s) ...", file=sys.stderr)
                    subprocess.run(["sync"], check=False)
                    measure_once(name, port, process.pid, blobs, clients, run, size, results)
                results.setdefault(f"{name} peak RSS", []).append(peak_rss_mib(process.pid))
            finally:
                process.terminate()
                process.wait(30)
                shutil.rmtree(workdir / name, ignore_errors=True)
    print(f"\n{args.size_mib} MiB per client, {args.runs} interleaved runs, curl as the client, 127.0.0.1, "
          f"{os.cpu_count()} cores (shared)\n")
    print("| operation | distribution MB/s | ormb MB/s | ormb / distribution | distribution CPU s/GiB | ormb CPU s/GiB |")
    print("|---|---|---|---|---|---|")
    for op in ("upload x1", "download x1", "upload x4", "download x4"):
        d, o = results[f"distribution {op}"], results[f"ormb {op}"]
        dc, oc = results[f"distribution {op} cpu"], results[f"ormb {op} cpu"]
        print(f"| {op} | {statistics.median(d):.0f} ({min(d):.0f}-{max(d):.0f}) | {statistics.median(o):.0f} "
              f"({min(o):.0f}-{max(o):.0f}) | {statistics.median(o) / statistics.median(d):.2f}x | "
              f"{statistics.median(dc):.2f} | {statistics.median(oc):.2f} |")
    for name in ("distribution", "ormb"):
        print(f"\n{name}: peak RSS {max(results[f'{name} peak RSS']):.0f} MiB", end="")
    print()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "registry.json").write_text(json.dumps({"size_mib": args.size_mib, "runs": args.runs, "results": results},
                                                   indent=2))


if __name__ == "__main__":
    main()
