"""Model formats: the original ormb's (including Pickle and Spark MLlib), plus SafeTensors, GGUF and TFLite.

Each format says which files ``model/`` must hold; :func:`validate_format` checks them and
:func:`guess_format` picks a format from file names when no ormbfile.yaml names one.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ormb.errors import ModelFormatError

SAVED_MODEL = "SavedModel"
ONNX = "ONNX"
H5 = "H5"
PMML = "PMML"
CAFFE_MODEL = "CaffeModel"
NET_DEF = "NetDef"
MXNET_PARAMS = "MXNetParams"
TORCH_SCRIPT = "TorchScript"
GRAPH_DEF = "GraphDef"
TENSOR_RT = "TensorRT"
SKLEARN = "SKLearn"
XGBOOST = "XGBoost"
MLFLOW = "MLflow"
PICKLE = "Pickle"
MLLIB = "MLlib"
SAFETENSORS = "SafeTensors"
GGUF = "GGUF"
TFLITE = "TFLite"
OTHERS = "Others"

ALL_FORMATS = (
    SAVED_MODEL, ONNX, H5, PMML, CAFFE_MODEL, NET_DEF, MXNET_PARAMS, TORCH_SCRIPT, GRAPH_DEF,
    TENSOR_RT, SKLEARN, XGBOOST, MLFLOW, PICKLE, MLLIB, SAFETENSORS, GGUF, TFLITE, OTHERS,
)
_BY_LOWER = {name.lower(): name for name in ALL_FORMATS}


def canonical_format_name(value: str) -> str:
    """Map any capitalisation (the original also wrote ``MXNETParams``) to the canonical name."""
    try:
        return _BY_LOWER[value.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown format {value!r}; valid formats: {', '.join(ALL_FORMATS)}") from None


@dataclass(frozen=True)
class _Rule:
    """One file a format needs: ``what`` is shown to the user, ``matches`` tests a relative path."""

    what: str
    matches: Callable[[PurePosixPath], bool]
    exactly_one: bool = False


def _suffix(*suffixes: str) -> Callable[[PurePosixPath], bool]:
    return lambda p: p.suffix.lower() in suffixes


def _named(name: str) -> Callable[[PurePosixPath], bool]:
    return lambda p: p.name == name


_RULES: dict[str, tuple[_Rule, ...]] = {
    SAVED_MODEL: (_Rule("saved_model.pb", _named("saved_model.pb"), exactly_one=True),),
    ONNX: (_Rule("a *.onnx file", _suffix(".onnx")),),
    H5: (_Rule("a *.h5 file", _suffix(".h5")),),
    PMML: (_Rule("a *.pmml file", _suffix(".pmml"), exactly_one=True),),
    CAFFE_MODEL: (_Rule("a *.caffemodel file", _suffix(".caffemodel")), _Rule("a *.prototxt file", _suffix(".prototxt"))),
    NET_DEF: (_Rule("init_net.pb", _named("init_net.pb")), _Rule("predict_net.pb", _named("predict_net.pb"))),
    MXNET_PARAMS: (
        _Rule("a *symbol.json file", lambda p: p.name.endswith("symbol.json")),
        _Rule("a *.params file", _suffix(".params")),
    ),
    TORCH_SCRIPT: (_Rule("a *.pt file", _suffix(".pt")),),
    # Early versions of the original saved GraphDef models as *.pb.
    GRAPH_DEF: (_Rule("a *.graphdef (or *.pb) file", _suffix(".graphdef", ".pb")),),
    TENSOR_RT: (_Rule("a *.plan or *.engine file", _suffix(".plan", ".engine")),),
    SKLEARN: (_Rule("a *.joblib file", _suffix(".joblib")),),
    XGBOOST: (_Rule("a *.xgboost file", _suffix(".xgboost")),),
    MLFLOW: (_Rule("an MLmodel file", _named("MLmodel")),),
    PICKLE: (_Rule("a *.pickle (or *.pkl) file", _suffix(".pickle", ".pkl")),),
    # Spark MLlib's model.save(): metadata/part-00000 (JSON: class, Spark version, params) and data/ (Parquet);
    # a PipelineModel keeps its stages' metadata/ and data/ below stages/.
    MLLIB: (
        _Rule("a metadata/ directory (Spark MLlib)", lambda p: len(p.parts) > 1 and p.parts[0] == "metadata"),
        _Rule("a data/ directory (Spark MLlib)", lambda p: "data" in p.parts[:-1]),
    ),
    SAFETENSORS: (_Rule("a *.safetensors file", _suffix(".safetensors")),),
    GGUF: (_Rule("a *.gguf file", _suffix(".gguf")),),
    TFLITE: (_Rule("a *.tflite file", _suffix(".tflite")),),
    OTHERS: (),
}

# Guessing order: the most specific evidence first.
_GUESS_ORDER = (
    SAVED_MODEL, NET_DEF, MLFLOW, MXNET_PARAMS, CAFFE_MODEL, ONNX, GRAPH_DEF, TORCH_SCRIPT, TENSOR_RT,
    PMML, H5, XGBOOST, SKLEARN, PICKLE, SAFETENSORS, GGUF, TFLITE, MLLIB,
)


def _describe(files: Sequence[PurePosixPath], limit: int = 5) -> str:
    if not files:
        return "no files"
    shown = ", ".join(str(f) for f in files[:limit])
    return shown + (f" and {len(files) - limit} more" if len(files) > limit else "")


def validate_format(format_name: str, model_dir: Path, files: Sequence[PurePosixPath]) -> None:
    """Check that ``files`` (relative to ``model_dir``) hold what ``format_name`` needs."""
    problems = []
    for rule in _RULES[format_name]:
        found = [f for f in files if rule.matches(f)]
        if not found:
            problems.append(f"expected {rule.what}")
        elif rule.exactly_one and len(found) > 1:
            problems.append(f"expected exactly one {rule.what}, found {len(found)}: {_describe(found)}")
    if problems:
        raise ModelFormatError(
            f"{model_dir} is not a valid {format_name} model: {'; '.join(problems)}; found {_describe(files)}"
        )
    for f in files:
        _check_magic(format_name, model_dir, f)


def _check_magic(format_name: str, model_dir: Path, relative: PurePosixPath) -> None:
    """Cheap header checks for formats that have one, so a truncated or mislabelled file is caught at save."""
    suffix = relative.suffix.lower()
    path = model_dir / relative
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if format_name == GGUF and suffix == ".gguf" and head[:4] != b"GGUF":
                raise ModelFormatError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
            if format_name == TFLITE and suffix == ".tflite" and head[4:8] != b"TFL3":
                raise ModelFormatError(f"{path} is not a TFLite file (no 'TFL3' identifier at byte 4)")
            if format_name == SAFETENSORS and suffix == ".safetensors":
                _check_safetensors(path, f, head)
    except OSError as exc:
        raise ModelFormatError(f"cannot read {path}: {exc.strerror}", "check the file's permissions") from None


def _check_safetensors(path: Path, f: object, head: bytes) -> None:
    size = path.stat().st_size
    if len(head) < 8:
        raise ModelFormatError(f"{path} is not a SafeTensors file (shorter than its 8-byte header length)")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > min(size - 8, 100 << 20):
        raise ModelFormatError(f"{path} is not a SafeTensors file (header length {header_len} exceeds the file)")
    header = f.read(header_len)  # type: ignore[attr-defined]
    try:
        parsed = json.loads(header)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ModelFormatError(f"{path} is not a SafeTensors file (its header is not a JSON object)")


def guess_format(files: Sequence[PurePosixPath]) -> str:
    """The first format whose every rule some file meets; ``Others`` when none does."""
    for name in _GUESS_ORDER:
        rules = _RULES[name]
        if all(any(rule.matches(f) for f in files) for rule in rules):
            if any(rule.exactly_one and sum(rule.matches(f) for f in files) > 1 for rule in rules):
                continue
            return name
    return OTHERS


def format_files(format_name: str, files: Sequence[PurePosixPath]) -> set[PurePosixPath]:
    """The files that make up a model of ``format_name`` (what its rules match): its weights, whatever
    their names say (an MXNet ``*.params``, a Spark ``data/`` Parquet file, a TensorRT ``*.plan``)."""
    rules = _RULES.get(format_name, ())
    return {f for f in files if any(rule.matches(f) for rule in rules)}
