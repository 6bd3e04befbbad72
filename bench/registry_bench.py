"""Blob upload/download throughput: ``ormb registry serve`` vs CNCF distribution, side by side.

    python bench/registry_bench.py [--size-mib 1024] [--runs 3] [--workdir /tmp/ormb-bench]

curl is the client (one, then four at once, each with its own blob of --size-mib).  Both
registries run on 127.0.0.1 with filesystem storage in --workdir, as separate processes.
Prints a table of median MB/s (min-max) and the servers' peak RSS; writes the numbers to
bench/results/registry.json.  Needs: curl, docker-registry (Debian), ormb installed.
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
    process = subprocess.Popen([ormb, "registry", "serve", "--root", str(workdir / "ormb"), "--addr",
                                f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(port)
    return process, port


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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


def measure(port: int, blobs: list[tuple[Path, str]], clients: int, runs: int, size: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"upload": [], "download": []}
    for run in range(runs):
        chosen = blobs[:clients]
        repo = f"bench/run{run}"
        with ThreadPoolExecutor(clients) as pool:
            start = time.perf_counter()
            list(pool.map(lambda b: upload(port, repo, b[0], b[1]), chosen))  # noqa: B023 - used at once
            results["upload"].append(clients * size / MB / (time.perf_counter() - start))
            start = time.perf_counter()
            list(pool.map(lambda b: download(port, repo, b[1]), chosen))  # noqa: B023 - used at once
            results["download"].append(clients * size / MB / (time.perf_counter() - start))
    return results


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
    table: dict[str, dict[str, object]] = {}
    for name, starter in (("distribution", start_distribution), ("ormb", start_ormb)):
        process, port = starter(workdir)
        try:
            baseline = peak_rss_mib(process.pid)
            for clients in (1, 4):
                print(f"{name}: {clients} client(s) ...", file=sys.stderr)
                for op, values in measure(port, blobs, clients, args.runs, size).items():
                    table[f"{name} {op} x{clients}"] = {"median": statistics.median(values), "min": min(values),
                                                        "max": max(values), "runs": values}
            table[f"{name} peak RSS"] = {"start_mib": baseline, "peak_mib": peak_rss_mib(process.pid)}
        finally:
            process.terminate()
            process.wait(10)
            shutil.rmtree(workdir / name, ignore_errors=True)
    print(f"\n{args.size_mib} MiB per client, {args.runs} runs, curl as the client, 127.0.0.1, {os.cpu_count()} cores\n")
    print("| operation | distribution MB/s | ormb MB/s | ormb / distribution |")
    print("|---|---|---|---|")
    for op in ("upload x1", "download x1", "upload x4", "download x4"):
        d, o = table[f"distribution {op}"], table[f"ormb {op}"]
        print(f"| {op} | {d['median']:.0f} ({d['min']:.0f}-{d['max']:.0f}) | {o['median']:.0f} "
              f"({o['min']:.0f}-{o['max']:.0f}) | {float(o['median']) / float(d['median']):.2f}x |")  # type: ignore[arg-type]
    for name in ("distribution", "ormb"):
        rss = table[f"{name} peak RSS"]
        print(f"\n{name}: peak RSS {rss['peak_mib']:.0f} MiB (at start {rss['start_mib']:.0f} MiB)", end="")
    print()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "registry.json").write_text(json.dumps({"size_mib": args.size_mib, "runs": args.runs, "results": table},
                                                   indent=2))


if __name__ == "__main__":
    main()
