"""Reading a model's signature (inputs and outputs) from the model file itself.

ONNX: the graph's inputs (less the initializers) and outputs, with element types and
shapes (symbolic or unknown dimensions become -1), via the ``onnx`` package
(``pip install 'ormb[onnx]'``).  SavedModel: the serving signatures, when TensorFlow is
installed.  Where the package is missing or the file cannot be read, no signature is
filled in and :func:`read_signature` says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ormb.model import formats
from ormb.model.ormbfile import Signature, Tensor


@dataclass(frozen=True)
class SignatureResult:
    signature: Signature | None
    note: str | None = None  # why there is none, for the user


def read_signature(format_name: str, model_dir: Path, files: Sequence[PurePosixPath]) -> SignatureResult:
    if format_name == formats.ONNX:
        onnx_files = [f for f in files if f.suffix.lower() == ".onnx"]
        if len(onnx_files) != 1:
            return SignatureResult(None, f"found {len(onnx_files)} .onnx files; fill the signature in by hand")
        return _onnx(model_dir / onnx_files[0])
    if format_name == formats.SAVED_MODEL:
        pb = next((f for f in files if f.name == "saved_model.pb"), None)
        return _saved_model(model_dir / pb.parent) if pb else SignatureResult(None)
    return SignatureResult(None)


def _onnx(path: Path) -> SignatureResult:
    try:
        import onnx
        from onnx import helper
    except ImportError:
        return SignatureResult(None, "install the onnx package (pip install 'ormb[onnx]') to read the signature")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        return SignatureResult(None, f"could not read {path.name} as ONNX: {exc}")
    graph = model.graph
    initializers = {init.name for init in graph.initializer}

    def tensor(value: Any) -> Tensor:
        kind = value.type.tensor_type
        try:
            dtype = str(helper.tensor_dtype_to_np_dtype(kind.elem_type))
        except (KeyError, ValueError, TypeError):
            dtype = None
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim] if kind.HasField("shape") \
            else None
        return Tensor(name=value.name, size=dims, dType=dtype)

    inputs = [tensor(v) for v in graph.input if v.name not in initializers]
    outputs = [tensor(v) for v in graph.output]
    return SignatureResult(Signature(inputs=inputs, outputs=outputs))


def _saved_model(directory: Path) -> SignatureResult:
    try:
        import tensorflow as tf
    except ImportError:
        return SignatureResult(None, "install TensorFlow to read a SavedModel's signature")
    try:
        loaded = tf.saved_model.load(str(directory))
        serving = loaded.signatures.get("serving_default") or next(iter(loaded.signatures.values()))
    except Exception as exc:
        return SignatureResult(None, f"could not read the SavedModel's signature: {exc}")
    inputs = [Tensor(name=name, size=[d if d is not None else -1 for d in spec.shape.as_list()],
                     dType=spec.dtype.name) for name, spec in serving.structured_input_signature[1].items()]
    outputs = [Tensor(name=name, size=[d if d is not None else -1 for d in spec.shape.as_list()],
                      dType=spec.dtype.name) for name, spec in serving.structured_outputs.items()]
    return SignatureResult(Signature(inputs=inputs, outputs=outputs))


FRAMEWORK_HINTS = {
    formats.SAVED_MODEL: "TensorFlow", formats.H5: "Keras", formats.TORCH_SCRIPT: "PyTorch",
    formats.SKLEARN: "scikit-learn", formats.XGBOOST: "XGBoost", formats.MXNET_PARAMS: "MXNet",
    formats.CAFFE_MODEL: "Caffe", formats.NET_DEF: "Caffe2", formats.TENSOR_RT: "TensorRT", formats.MLFLOW: "MLflow",
    formats.GRAPH_DEF: "TensorFlow", formats.TFLITE: "TensorFlow Lite", formats.GGUF: "llama.cpp",
    formats.MLLIB: "Spark MLlib",
}
