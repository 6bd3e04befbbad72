"""Load: 16 concurrent clients on ``ormb registry serve`` and CNCF distribution, side by side.

    python bench/registry_load_bench.py [--blob-mib 256] [--rounds 2] [--workdir /tmp/ormb-load]

Each round starts each registry afresh (interleaved: ormb, distribution, then the other order)
and runs, against it:

1. **unloaded**: one client sends 300 manifest ``GET``/``HEAD`` requests (alternating) on a
   kept-alive connection; their latencies are ormb's (and distribution's) own baseline;
2. **loaded**: 16 clients at once: 8 move large blobs (each pushes its own blob of --blob-mib
   with curl, then pulls it back) while 8 push small manifests and ``GET``/``HEAD`` manifests
   in a loop, timing every manifest request, until the large transfers are done.

Reported per registry (medians over rounds): large-blob throughput (MB/s of blob bytes moved
per second of the loaded phase), the p50/p99 latency of manifest GET/HEAD unloaded and loaded,
server CPU seconds per GiB moved, and peak RSS of the server's processes (memory flat: it must
not grow with blob size or count).  The machine's 2 cores are shared with other people's work:
compare medians of the interleaved rounds, not single numbers.  Results go to
bench/results/registry_load.json.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from registry_bench import (
    MB,
    ROOT,
    cpu_seconds,
    download,
    make_blobs,
    peak_rss_mib,
    start_distribution,
    start_ormb,
    upload,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LARGE_CLIENTS = 8
SMALL_CLIENTS = 8


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Small:
    """A client on one kept-alive connection pushing and reading small manifests."""

    def __init__(self, port: int, repo: str) -> None:
        self.port, self.repo = port, repo
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> int:
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                response.read()
                return response.status
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                if attempt == 2:
                    raise
        raise AssertionError

    def seed(self, tag: str) -> None:
        config, layer = b"{}", os.urandom(1000)
        for blob in (config, layer):  # POST, then PUT with the digest: what every registry supports
            self.conn.request("POST", f"/v2/{self.repo}/blobs/uploads/", headers={"Content-Length": "0"})
            response = self.conn.getresponse()
            response.read()
            assert response.status == 202, response.status
            location = urllib.parse.urlsplit(response.headers["Location"])
            target = location.path + "?" + (location.query + "&" if location.query else "") + f"digest={sha(blob)}"
            assert self.call("PUT", target, blob) == 201
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(config), "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": sha(layer), "size": len(layer)}],
        }).encode()
        status = self.call("PUT", f"/v2/{self.repo}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST})
        assert status == 201, status

    def timed_read(self, i: int, tag: str) -> float:
        start = time.perf_counter()
        status = self.call("GET" if i % 2 else "HEAD", f"/v2/{self.repo}/manifests/{tag}", None,
                           {"Accept": OCI_MANIFEST})
        elapsed = time.perf_counter() - start
        assert status == 200, status
        return elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def one_round(name: str, port: int, pid: int, blobs: list[tuple[Path, str]], size: int) -> dict[str, float]:
    probe = Small(port, "load/probe")
    probe.seed("v1")
    unloaded = [probe.timed_read(i, "v1") for i in range(300)]
    latencies: list[float] = []
    done = threading.Event()

    def small_client(k: int) -> None:
        client = Small(port, f"load/small{k}")
        i = 0
        while not done.is_set():
            if i % 10 == 0:
                client.seed(f"t{i}")  # pushes: two small blobs and a manifest
            latencies.append(client.timed_read(i, "t0"))
            i += 1

    def large_client(k: int) -> None:
        path, digest = blobs[k]
        upload(port, f"load/large{k}", path, digest)
        download(port, f"load/large{k}", digest)

    cpu = cpu_seconds(pid)
    with ThreadPoolExecutor(LARGE_CLIENTS + SMALL_CLIENTS) as pool:
        smalls = [pool.submit(small_client, k) for k in range(SMALL_CLIENTS)]
        start = time.perf_counter()
        larges = [pool.submit(large_client, k) for k in range(LARGE_CLIENTS)]
        for future in larges:
            future.result()
        elapsed = time.perf_counter() - start
        done.set()
        for future in smalls:
            future.result()
    moved = 2 * LARGE_CLIENTS * size
    return {
        "throughput MB/s": moved / MB / elapsed,
        "CPU s/GiB": (cpu_seconds(pid) - cpu) / (moved / (1 << 30)),
        "unloaded p50 ms": percentile(unloaded, 0.5) * 1000, "unloaded p99 ms": percentile(unloaded, 0.99) * 1000,
        "loaded p50 ms": percentile(latencies, 0.5) * 1000, "loaded p99 ms": percentile(latencies, 0.99) * 1000,
        "manifest requests": float(len(latencies)), "peak RSS MiB": peak_rss_mib(pid),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blob-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--only", choices=["ormb", "distribution"], default=None, help="measure one registry")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ormb-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    size = args.blob_mib << 20
    print(f"generating {LARGE_CLIENTS} blobs of {args.blob_mib} MiB in {workdir} ...", file=sys.stderr)
    blobs = make_blobs(workdir, size, LARGE_CLIENTS)
    starters = {"distribution": start_distribution, "ormb": start_ormb}
    rounds: dict[str, list[dict[str, float]]] = {"ormb": [], "distribution": []}
    for r in range(args.rounds):
        for name in (["ormb", "distribution"] if r % 2 == 0 else ["distribution", "ormb"]):
            if args.only and name != args.only:
                continue
            process, port = starters[name](workdir)
            try:
                subprocess.run(["sync"], check=False)
                print(f"round {r + 1}: {name} ...", file=sys.stderr)
                rounds[name].append(one_round(name, port, process.pid, blobs, size))
                print(f"  {rounds[name][-1]}", file=sys.stderr)
            finally:
                process.terminate()
                process.wait(30)
                shutil.rmtree(workdir / name, ignore_errors=True)
    if args.only:
        return
    keys = list(rounds["ormb"][0])
    print(f"\n{LARGE_CLIENTS} clients pushing+pulling {args.blob_mib} MiB blobs and {SMALL_CLIENTS} pushing/reading "
          f"manifests at once; medians of {args.rounds} interleaved rounds; {os.cpu_count()} shared cores\n")
    print("| measure | distribution | ormb |")
    print("|---|---|---|")
    for key in keys:
        d = statistics.median(x[key] for x in rounds["distribution"])
        o = statistics.median(x[key] for x in rounds["ormb"])
        print(f"| {key} | {d:.1f} | {o:.1f} |")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "registry_load.json").write_text(json.dumps({"blob_mib": args.blob_mib, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
