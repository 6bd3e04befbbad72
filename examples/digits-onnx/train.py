"""Train a digit classifier, convert it to ONNX, and publish it with ormb's Python API.

    python train.py REGISTRY_HOST/REPOSITORY:TAG [--workdir DIR]

Uses scikit-learn's bundled digits data set (8x8 grey images, no download). The model is
saved with metadata given in Python (no ormbfile.yaml needed); ormb reads the signature
(inputs, outputs, dtypes, shapes) from the ONNX graph, then pushes to the registry.
Credentials: 'ormb login' beforehand, or ORMB_USERNAME/ORMB_PASSWORD.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import ormb

SEED = 7


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = digits.data.astype(np.float32)
    return train_test_split(x, digits.target, test_size=0.2, random_state=SEED, stratify=digits.target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    x_train, x_test, y_train, y_test = split()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    model.fit(x_train, y_train)
    accuracy = float(model.score(x_test, y_test))
    print(f"trained: logistic regression on {len(x_train)} digits, test accuracy {accuracy:.4f}")

    onnx_model = to_onnx(model, x_train[:1], options={id(model.steps[-1][1]): {"zipmap": False}},
                         target_opset=17)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="digits-"))
    (workdir / "model").mkdir(parents=True, exist_ok=True)
    (workdir / "model" / "model.onnx").write_bytes(onnx_model.SerializeToString())

    credentials = (os.environ.get("ORMB_USERNAME"), os.environ.get("ORMB_PASSWORD"))
    if all(credentials):
        ormb.login(ormb.parse_reference(args.reference, "localhost:5000").registry, *credentials)  # type: ignore[arg-type]
    saved = ormb.save(workdir, args.reference, metadata={
        "author": "ormb examples",
        "description": "Handwritten digit classifier (8x8 grey images), scikit-learn, exported to ONNX",
        "format": "ONNX",
        "framework": "scikit-learn",
        "tags": ["example", "vision", "classification"],
        "metrics": {"test": [{"name": "accuracy", "value": f"{accuracy:.4f}"}]},
        "hyperParameters": [{"name": "C", "value": "0.5"}, {"name": "max_iter", "value": "2000"}],
        "dataset": {"git": {"repository": "sklearn.datasets.load_digits"}},
    })
    signature = ormb.inspect(args.reference).metadata.signature
    assert signature is not None and saved.signature_filled
    names = ", ".join(f"{t.name} {t.d_type}{t.size}" for t in (signature.inputs or []) + (signature.outputs or []))
    print(f"saved:   {saved.reference} {saved.digest[:19]} ({saved.format}; signature from the graph: {names})")
    pushed = ormb.push(args.reference)
    print(f"pushed:  {pushed.reference} ({pushed.layers} layer, {pushed.transferred_bytes} bytes sent)")


if __name__ == "__main__":
    main()
