"""Every shape of ormbfile.yaml and model directory in the original ormb's examples/ saves.

The original (github.com/kleveross/ormb, formerly caicloud/ormb) ships one example per format
under examples/<Format>-model/.  Its history also holds older spellings of the same examples
(``dtype`` for ``dType``, signature ``layers`` as a list of names, ``MXNETParams``, a GraphDef
saved as ``*.pb``, ``xHarborAttributes`` with ``denyKeyList``).  The directories below
reproduce those shapes: the same keys, value types and file layouts, with placeholder bytes.
(``examples/Corrupt``, whose format is deliberately invalid, is refused by both tools.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_model
from ormb import api
from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.content.target import fetch_bytes
from ormb.errors import MetadataError
from ormb.oci.descriptor import Manifest

SIGNATURE_NCHW = """\
signature:
  inputs:
  - name: data
    size:
    - 1
    - 3
    - 224
    - 224
    dType: float32
  outputs:
  - name: prob
    size:
    - 1
    - 1000
    dType: float32
"""

EXAMPLES: dict[str, tuple[str, list[str]]] = {
    "Caffe-model": ('author: "someone <someone@example.com>"\nformat: CaffeModel\n',
                    ["net.caffemodel", "net_deploy.prototxt"]),
    "Caffe2-model": ('author: "someone <someone@example.com>"\nformat: NetDef\n' + SIGNATURE_NCHW,
                     ["init_net.pb", "predict_net.pb"]),
    "GraphDef-model": ('author: "someone"\nformat: GraphDef\nframework: TensorFlow\nsignature:\n  inputs:\n'
                       '    - name: input_1\n      dType: float32\n      size:\n      - -1\n      - 224\n      - 224\n'
                       '      - 3\n  outputs:\n    - name: Logits/Softmax\n      dType: float32\n      size:\n'
                       '        - -1\n        - 1000\n', ["model.graphdef"]),
    "GraphDef-model (older: dtype, layers as a list)": (
        'author: "someone"\nformat: GraphDef\nframework: TensorFlow\nsignature:\n  inputs:\n    - name: input_1\n'
        '      dtype: float32\n      size: [-1, 224, 224, 3]\n  layers:\n    - name: Placeholder\n    - name: Conv2D\n'
        '    - name: Relu6\n    - name: Conv2D\n', ["model.graphdef"]),
    "GraphDef-model (oldest: a *.pb file)": ('author: "someone"\nformat: GraphDef\n', ["graphdef.pb"]),
    "H5-model": ('author: "someone"\nformat: H5\n', ["model.h5"]),
    "MLflow-model": ('author: "someone"\nformat: "MLflow"', ["MLmodel", "conda.yaml", "model.pkl"]),
    "MLlib-model": ('author: "someone"\nformat: MLlib\n', [
        "data/.part-00000-abc-c000.snappy.parquet.crc", "data/_SUCCESS", "data/part-00000-abc-c000.snappy.parquet",
        "metadata/.part-00000.crc", "metadata/_SUCCESS", "metadata/part-00000"]),
    "MXNetParams-model": ('author: "someone"\nformat: MXNetParams\nsignature:\n  inputs:\n  - name: data\n    size:\n'
                          '    - 1\n    - 3\n    - 224\n    - 224\n    dType: float32\n\n',
                          ["mobilenet-0000.params", "mobilenet-symbol.json"]),
    "MXNETParams-model (older spelling)": ('author: "someone"\nformat: MXNETParams\nsignature:\n  inputs:\n'
                                           '  - name: data\n    size: [1, 3, 224, 224]\n    dtype: float32\n',
                                           ["net-0000.params", "net-symbol.json"]),
    "ONNX-model": ('author: "someone"\nformat: ONNX\n', ["model.onnx", "labels.txt"]),
    "PMML-model": ('author: "someone"\nformat: PMML', ["single_audit_mlp.pmml"]),
    "Pickle-model": ('author: "someone"\nformat: Pickle\n', ["model.pickle"]),
    "SKLearn-model": ('author: "someone"\nformat: SKLearn\n', ["model.joblib"]),
    "SavedModel-fashion": ('author: "someone"\nformat: SavedModel\nframework: TensorFlow',
                           ["saved_model.pb", "variables/variables.data-00000-of-00001", "variables/variables.index"]),
    "SavedModel-fashion (versioned directory)": ('author: "someone"\nformat: SavedModel\n',
                                                 ["1/saved_model.pb", "1/variables/variables.index"]),
    "SavedModel-fashion (xHarborAttributes)": (
        'author: "someone"\nformat: SavedModel\nframework: TensorFlow\nxHarborAttributes:\n  schemaVersion: 1\n'
        '  icon: "https://example.com/logo.png"\n  additions:\n    - contentType: "text/plain"\n      name: "yaml"\n'
        '      digest: "sha256:xxx"\n  denyKeyList:\n    - "dataset"\n', ["saved_model.pb", "variables/variables.index"]),
    "TensorRT-model": ('author: "someone"\nformat: TensorRT\nframework: TensorFlow\n', ["model.plan"]),
    "TorchScript-model": ('author: "someone"\nformat: TorchScript\n' + SIGNATURE_NCHW, ["model.pt"]),
    "XGBoost-model": ('author: "someone"\nformat: XGBoost\n', ["model.xgboost"]),
}


@pytest.mark.parametrize("artifact_format", ["ormb", "modelpack"])
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_every_original_example_shape_saves(tmp_path: Path, settings: Settings, example: str,
                                            artifact_format: str) -> None:
    ormbfile, names = EXAMPLES[example]
    src = make_model(tmp_path / "ex", {name: b"placeholder " + name.encode() for name in names}, ormbfile=ormbfile)
    result = api.save(src, "examples/original:v1", settings=settings, artifact_format=artifact_format)
    visible = [n for n in names if not any(part.startswith(".") for part in n.split("/"))]
    assert result.files == len(visible)
    cache = OCILayout(settings.cache_dir)
    manifest = Manifest.from_bytes(fetch_bytes(cache, cache.resolve("localhost:5000/examples/original:v1")))
    if artifact_format == "ormb":  # the config is the original's JSON, with the keys it reads
        config = json.loads(fetch_bytes(cache, manifest.config))
        assert config["author"] and config["format"] == result.format
        for tensor in (config.get("signature") or {}).get("inputs", []):
            assert set(tensor) <= {"name", "size", "dType", "opType", "values"}
        assert isinstance((config.get("signature") or {}).get("layers", {}), dict)
    exported = api.export("examples/original:v1", tmp_path / "out", settings=settings)
    assert len(exported.files) == len(visible)


def test_mllib_is_spark_metadata_and_data(tmp_path: Path, settings: Settings) -> None:
    src = make_model(tmp_path / "lr", {"metadata/part-00000": b'{"class":"org.apache.spark.ml.x"}',
                                       "data/part-00000.snappy.parquet": b"PAR1"}, ormbfile="format: MLlib\n")
    assert api.save(src, "spark/lr:v1", settings=settings).format == "MLlib"
    with pytest.raises(Exception, match="metadata/ directory"):
        api.save(make_model(tmp_path / "bad", {"data/part-00000.snappy.parquet": b"PAR1"}, ormbfile="format: MLlib\n"),
                 "spark/bad:v1", settings=settings)
    # a PipelineModel keeps its stages' data/ below stages/
    pipeline = make_model(tmp_path / "pipe", {"metadata/part-00000": b"{}", "stages/0_lr/metadata/part-00000": b"{}",
                                              "stages/0_lr/data/part-0.parquet": b"PAR1"}, ormbfile="format: MLlib\n")
    assert api.save(pipeline, "spark/pipe:v1", settings=settings).format == "MLlib"


def test_the_corrupt_example_is_refused() -> None:
    from ormb.model.ormbfile import parse_metadata

    with pytest.raises(MetadataError, match="unknown format"):
        parse_metadata('author: "someone"\nformat: "corruptted :)"\n')
