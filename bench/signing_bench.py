"""Signing a model: ormb's signing core (from a ModelPack manifest) side by side with ``model_signing``.

    python bench/signing_bench.py [--runs 3] [--size-mib 1024] [--files 10000] [--workdir DIR]

Workload (generated here): a model directory with one ``--size-mib`` weight file (random bytes)
and three small files, saved with ``ormb save`` as ModelPack into a fresh cache.
Measured, median of ``--runs`` (min-max):
  - the commands: ``ormb.sign`` and ``ormb.verify`` on the cache, for the ModelPack model and for
    the same files saved in the ormb format (one tar layer: its first signature reads it once and
    records the file digests; later ones sign from the record).
  - ormb: read the manifest from the cache, list its files (manifest_files), sign (sign_files);
    then verify (verify_bundle + check_files against the manifest).  Bytes read by the process
    during the step (``rchar`` of /proc/self/io, page-cache hits included) show that no weight
    byte is read.
  - model_signing: ``model_signing sign key`` / ``verify key`` on the same directory (the CLI a user
    types: it hashes every byte).
  - the same two for a list of ``--files`` small files (a sharded checkpoint), from digests alone.
  - the import time ormb.signing vs model_signing add to a fresh interpreter that imported ormb.api.
Results go to bench/results/signing.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MiB = 1 << 20


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def measure(runs: int, step: Callable[[], object]) -> tuple[list[float], int]:
    times, read = [], 0
    for _ in range(runs):
        before, start = rchar(), time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        read = max(read, rchar() - before)
    return times, read


def summary(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:.1f} ms ({min(times) * 1000:.1f}-{max(times) * 1000:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()

    from ormb import api
    from ormb.config import Settings
    from ormb.content.layout import OCILayout
    from ormb.content.target import fetch_bytes
    from ormb.oci.descriptor import Manifest
    from ormb.signing import (
        check_files,
        export_ignore_paths,
        generate_key_pair,
        load_private_key,
        load_public_key,
        manifest_files,
        sign_files,
        verify_bundle,
    )

    work = Path(tempfile.mkdtemp(dir=args.workdir, prefix="signing-bench-"))
    generate_key_pair(work / "key.pem", work / "key.pub")
    private, public = load_private_key(work / "key.pem"), load_public_key(work / "key.pub")

    src = work / "src"
    (src / "model").mkdir(parents=True)
    (src / "ormbfile.yaml").write_text("format: Others\nartifactFormat: modelpack\n")
    with open(src / "model" / "weights.bin", "wb") as out:
        for _ in range(args.size_mib):
            out.write(os.urandom(MiB))
    for name in ("config.json", "tokenizer.json", "README.md"):
        (src / "model" / name).write_bytes(os.urandom(1000))
    settings = Settings(home=work / "home", default_registry="localhost:5000")
    api.save(src, "bench/model:v1", settings=settings, read_model_signature=False)
    cache = OCILayout(settings.cache_dir)

    def ormb_sign() -> bytes:
        manifest = Manifest.from_bytes(fetch_bytes(cache, cache.resolve("localhost:5000/bench/model:v1")))
        return sign_files(manifest_files(manifest) or (), private, ignore_paths=export_ignore_paths(manifest))

    bundle = ormb_sign()
    (work / "ormb.sig").write_bytes(bundle)

    def ormb_verify() -> None:
        manifest = Manifest.from_bytes(fetch_bytes(cache, cache.resolve("localhost:5000/bench/model:v1")))
        signed = verify_bundle(bundle, [public])
        check_files(signed, {f.path: f.sha256 for f in manifest_files(manifest) or ()})

    # The commands as a user runs them (ormb.sign / ormb.verify on the cache), for both formats: the
    # ormb format's first signature reads its layer once and records the file digests.
    classic = work / "classic"
    (classic / "model").mkdir(parents=True)
    (classic / "ormbfile.yaml").write_text("format: Others\n")
    os.link(src / "model" / "weights.bin", classic / "model" / "weights.bin")
    for name in ("config.json", "tokenizer.json", "README.md"):
        (classic / "model" / name).write_bytes(os.urandom(1000))
    results: dict[str, object] = {"size_mib": args.size_mib, "files": args.files}
    api.save(classic, "bench/classic:v1", settings=settings, read_model_signature=False)
    for ref in ("bench/model:v1", "bench/classic:v1"):
        for label, step in [(f"ormb.sign {ref}", lambda r=ref: api.sign(r, work / "key.pem", settings=settings)),
                            (f"ormb.verify {ref}", lambda r=ref: api.verify(r, keys=work / "key.pub", settings=settings))]:
            times, read = measure(args.runs, step)
            results[label] = {"seconds": times, "bytes_read": read}
            print(f"{label:45} {summary(times):>30}   read {read / MiB:8.3f} MiB")

    def sign_without_record() -> object:  # a pulled ormb-format model signed the first time: reads the layer once
        subprocess.run(["rm", "-rf", str(settings.cache_dir / ".files")], check=True)
        return api.sign("bench/classic:v1", work / "key.pem", settings=settings)

    times, read = measure(args.runs, sign_without_record)
    results["ormb.sign bench/classic:v1 without a record"] = {"seconds": times, "bytes_read": read}
    print(f"{'ormb.sign bench/classic:v1 without a record':45} {summary(times):>30}   read {read / MiB:8.1f} MiB")

    for label, step in [("ormb sign (from the manifest)", ormb_sign), ("ormb verify (against the manifest)", ormb_verify)]:
        times, read = measure(args.runs, step)
        results[label] = {"seconds": times, "bytes_read": read}
        print(f"{label:45} {summary(times):>30}   read {read / MiB:8.3f} MiB")

    model_dir = src / "model"
    cli = str(BIN / "model_signing")
    for label, command in [
        ("model_signing sign key (hashes the directory)",
         [cli, "sign", "key", "--private_key", str(work / "key.pem"), "--signature", str(work / "ms.sig"), str(model_dir)]),
        ("model_signing verify key (hashes the directory)",
         [cli, "verify", "key", "--signature", str(work / "ms.sig"), "--public_key", str(work / "key.pub"), str(model_dir)]),
    ]:
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        results[label] = {"seconds": times}
        print(f"{label:45} {summary(times):>30}")

    many = [(f"shard-{i:06d}.bin", hashlib.sha256(str(i).encode()).hexdigest()) for i in range(args.files)]
    many_bundle = sign_files(many, private)
    for label, step in [(f"ormb sign {args.files} files (digests given)", lambda: sign_files(many, private)),
                        (f"ormb verify {args.files} files", lambda: check_files(verify_bundle(many_bundle, [public]),
                                                                                dict(many)))]:
        times, _ = measure(args.runs, step)
        results[label] = {"seconds": times}
        print(f"{label:45} {summary(times):>30}")
    results["bundle_bytes_per_file"] = len(many_bundle) / args.files

    # What each adds to an ormb process, which has imported ormb.api (and so ormb.model) already.
    for label, code in [("import ormb.signing (after ormb.api)", "import ormb.signing"),
                        ("import model_signing (after ormb.api)",
                         "import model_signing.signing, model_signing.verifying")]:
        times = []
        for _ in range(max(args.runs, 5)):
            out = subprocess.run([sys.executable, "-c", "import time, ormb.api; t = time.perf_counter(); "
                                  f"{code}; print(time.perf_counter() - t)"],
                                 check=True, capture_output=True, text=True)
            times.append(float(out.stdout))
        results[label] = {"seconds": times}
        print(f"{label:45} {summary(times):>30}")

    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "signing.json").write_text(json.dumps(results, indent=2))
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
