"""Signature extraction from real ONNX files made in the test (with onnx.helper and with skl2onnx)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import make_model
from ormb import api
from ormb.config import Settings
from ormb.errors import MetadataError, StorageError
from ormb.model.ormbfile import parse_metadata
from ormb.model.signature import read_signature


def _onnx_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 224, 224])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [1], [2.0])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3, 224, 224])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [None])
    nodes = [helper.make_node("Mul", ["images", "scale"], ["scores"]),
             helper.make_node("Shape", ["images"], ["ids"])]
    graph = helper.make_graph(nodes, "g", [x, helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1])],
                              [y, ids], initializer=[scale])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_onnx_inputs_and_outputs_with_dtypes_and_shapes(tmp_path: Path) -> None:
    _onnx_file(tmp_path / "m.onnx")
    result = read_signature("ONNX", tmp_path, [PurePosixPath("m.onnx")])
    assert result.signature is not None
    assert [(t.name, t.d_type, t.size) for t in result.signature.inputs or []] == [
        ("images", "float32", [-1, 3, 224, 224])]  # the initializer 'scale' is not an input
    assert [(t.name, t.d_type, t.size) for t in result.signature.outputs or []] == [
        ("scores", "float32", [-1, 3, 224, 224]), ("ids", "int64", [-1])]


def test_a_scikit_learn_model_converted_by_skl2onnx(tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    onnx_model = to_onnx(model, x[:1].astype(np.float32), options={id(model): {"zipmap": False}})
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "iris.onnx").write_bytes(onnx_model.SerializeToString())
    result = read_signature("ONNX", tmp_path / "model", [PurePosixPath("iris.onnx")])
    assert result.signature is not None
    assert [(t.name, t.d_type, t.size) for t in result.signature.inputs or []] == [("X", "float32", [-1, 4])]
    assert {t.name for t in result.signature.outputs or []} == {"label", "probabilities"}


def test_save_fills_an_empty_signature_but_keeps_a_given_one(tmp_path: Path, settings: Settings) -> None:
    src = make_model(tmp_path / "m", {}, ormbfile="format: ONNX\n")
    _onnx_file(src / "model" / "m.onnx")
    saved = api.save(src, "m:v1", settings=settings)
    assert saved.signature_filled
    signature = api.inspect("m:v1", settings=settings).metadata.signature
    assert signature is not None and signature.inputs is not None and signature.inputs[0].name == "images"
    (src / "ormbfile.yaml").write_text("format: ONNX\nsignature:\n  inputs:\n    - name: mine\n")
    assert not api.save(src, "m:v2", settings=settings).signature_filled
    kept = api.inspect("m:v2", settings=settings).metadata.signature
    assert kept is not None and [t.name for t in kept.inputs or []] == ["mine"]


def test_a_broken_onnx_file_is_saved_without_a_signature_and_says_why(tmp_path: Path, settings: Settings) -> None:
    src = make_model(tmp_path / "m", {"m.onnx": b"this is not protobuf"}, ormbfile="format: ONNX\n")
    saved = api.save(src, "m:v1", settings=settings)
    assert not saved.signature_filled
    assert any("could not read m.onnx as ONNX" in note for note in saved.notes)


def test_init_writes_a_starting_ormbfile(tmp_path: Path) -> None:
    src = make_model(tmp_path / "m", {}, ormbfile=None)
    _onnx_file(src / "model" / "m.onnx")
    api.init(src)
    meta = parse_metadata((src / "ormbfile.yaml").read_text())
    assert meta.format == "ONNX" and meta.signature is not None
    assert [t.name for t in meta.signature.outputs or []] == ["scores", "ids"]
    with pytest.raises(StorageError, match="exists"):
        api.init(src)
    api.init(src, force=True)


def test_save_with_metadata_from_python(tmp_path: Path, settings: Settings) -> None:
    src = make_model(tmp_path / "m", {"w.joblib": b"j"}, ormbfile=None)
    saved = api.save(src, "m:v1", settings=settings, metadata={"author": "script", "format": "SKLearn",
                                                              "metrics": {"test": [{"name": "acc", "value": 0.9}]}})
    assert saved.format == "SKLearn" and not saved.format_guessed
    assert api.inspect("m:v1", settings=settings).metadata.author == "script"
    with pytest.raises(MetadataError, match="unknown key 'auther'"):
        api.save(src, "m:v2", settings=settings, metadata={"auther": "typo"})
