"""The models the benchmark moves: float32 weights drawn from a normal distribution (as incompressible as real
weights: gzip saves ~7%) plus the small files a real model ships with."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30

# name -> {weight file name: size in bytes}; each workload also gets config.json, tokenizer.json and README.md.
WORKLOADS: dict[str, dict[str, int]] = {
    "tiny": {"weights.bin": 4 * MiB, "weights-2.bin": 2 * MiB},
    "1g": {"weights.bin": GiB},
    "4x1g": {f"weights-{i}.bin": GiB for i in range(4)},
    "16g": {f"model-{i + 1:05d}-of-00004.safetensors": 4 * GiB for i in range(4)},
}
SCALE = "16g"
SCALE_FREE_BYTES = 3 * 16 * GiB + 10**9  # the model + two copies at once (e.g. registry + cache), and 1 GB spare


@dataclass(frozen=True)
class Workload:
    name: str
    directory: Path  # holds ormbfile.yaml and model/

    @property
    def model(self) -> Path:
        return self.directory / "model"

    @property
    def files(self) -> list[Path]:
        return sorted(p for p in self.model.iterdir() if p.is_file())

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def digests(self) -> dict[Path, str]:
        """sha256 of each file, remembered beside the workload (the curl reference needs them up front)."""
        record = self.directory.parent / f"{self.name}.sha256.json"
        stamp = {str(p): p.stat().st_mtime_ns for p in self.files}
        if record.exists():
            saved = json.loads(record.read_text())
            if saved.get("stamp") == stamp:
                return {Path(k): v for k, v in saved["digests"].items()}
        digests = {}
        for path in self.files:
            hasher = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(MiB):
                    hasher.update(chunk)
            digests[path] = "sha256:" + hasher.hexdigest()
        record.write_text(json.dumps({"stamp": stamp, "digests": {str(k): v for k, v in digests.items()}}))
        return digests


def make_workload(root: Path, name: str) -> Workload:
    """Write (or reuse, if already there with the right sizes) the workload ``name`` under ``root``."""
    import numpy as np

    directory = root / name
    model = directory / "model"
    model.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(name.encode()))
    for file_name, size in WORKLOADS[name].items():
        path = model / file_name
        if path.exists() and path.stat().st_size == size:
            continue
        part = path.with_name(path.name + ".part")
        with open(part, "wb") as f:
            left = size
            while left:
                n = min(left, 64 * MiB)
                rng.standard_normal(n // 4, dtype=np.float32).tofile(f)
                left -= n
        part.rename(path)
    tokens = 32000 if name == SCALE else 2000
    small = {
        model / "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
                                           "num_hidden_layers": 32, "torch_dtype": "float32"}),
        model / "tokenizer.json": json.dumps({"version": "1.0", "model": {
            "type": "BPE", "vocab": {f"tok{i}": i for i in range(tokens)}}}),
        model / "README.md": f"# benchmark model {name}\n\nRandom float32 weights; do not serve.\n",
        directory / "ormbfile.yaml": "format: Others\nauthor: bench\n",
    }
    for path, text in small.items():
        if not path.exists() or path.read_text() != text:  # unchanged files keep their mtime (and digests)
            path.write_text(text)
    return Workload(name, directory)
