import struct
from pathlib import Path, PurePosixPath

import pytest

from ormb.errors import ModelFormatError
from ormb.model import formats
from ormb.model.files import list_model_files

VALID = {
    formats.SAVED_MODEL: ["saved_model.pb", "variables/variables.index"],
    formats.ONNX: ["model.onnx"],
    formats.H5: ["model.h5"],
    formats.PMML: ["model.pmml"],
    formats.CAFFE_MODEL: ["a.caffemodel", "deploy.prototxt"],
    formats.NET_DEF: ["init_net.pb", "predict_net.pb"],
    formats.MXNET_PARAMS: ["resnet-symbol.json", "resnet-0000.params"],
    formats.TORCH_SCRIPT: ["model.pt"],
    formats.GRAPH_DEF: ["model.graphdef"],
    formats.TENSOR_RT: ["model.plan"],
    formats.SKLEARN: ["model.joblib"],
    formats.XGBOOST: ["model.xgboost"],
    formats.MLFLOW: ["MLmodel", "model.pkl"],
    formats.PICKLE: ["model.pickle"],
    formats.MLLIB: ["metadata/part-00000", "metadata/_SUCCESS", "data/part-00000-1.snappy.parquet", "data/_SUCCESS"],
    formats.SAFETENSORS: ["model.safetensors"],
    formats.GGUF: ["model.gguf"],
    formats.TFLITE: ["model.tflite"],
}


def _content(name: str) -> bytes:
    if name.endswith(".safetensors"):
        header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
        return struct.pack("<Q", len(header)) + header + b"\0\0\0\0"
    if name.endswith(".gguf"):
        return b"GGUF\x03\x00\x00\x00"
    if name.endswith(".tflite"):
        return b"\x1c\x00\x00\x00TFL3rest"
    return b"x"


def _write(root: Path, names: list[str]) -> list[PurePosixPath]:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_content(name))
    return [f.relative for f in list_model_files(root).files]


@pytest.mark.parametrize("format_name", sorted(VALID))
def test_valid_directories_pass_and_are_guessed(tmp_path: Path, format_name: str) -> None:
    files = _write(tmp_path, VALID[format_name])
    formats.validate_format(format_name, tmp_path, files)
    assert formats.guess_format(files) == format_name


@pytest.mark.parametrize("format_name", sorted(VALID))
def test_wrong_files_say_what_was_expected_and_found(tmp_path: Path, format_name: str) -> None:
    files = _write(tmp_path, ["README.md"])
    with pytest.raises(ModelFormatError) as info:
        formats.validate_format(format_name, tmp_path, files)
    assert "expected" in str(info.value)
    assert "README.md" in str(info.value)


def test_tensorrt_accepts_engine_files(tmp_path: Path) -> None:
    formats.validate_format(formats.TENSOR_RT, tmp_path, _write(tmp_path, ["m.engine"]))


def test_pmml_wants_exactly_one(tmp_path: Path) -> None:
    files = _write(tmp_path, ["a.pmml", "b.pmml"])
    with pytest.raises(ModelFormatError, match="exactly one a \\*.pmml file, found 2"):
        formats.validate_format(formats.PMML, tmp_path, files)


def test_saved_model_wants_exactly_one(tmp_path: Path) -> None:
    files = _write(tmp_path, ["a/saved_model.pb", "b/saved_model.pb"])
    with pytest.raises(ModelFormatError, match="exactly one"):
        formats.validate_format(formats.SAVED_MODEL, tmp_path, files)


def test_netdef_names_the_missing_half(tmp_path: Path) -> None:
    files = _write(tmp_path, ["init_net.pb"])
    with pytest.raises(ModelFormatError, match="expected predict_net.pb"):
        formats.validate_format(formats.NET_DEF, tmp_path, files)


def test_others_accepts_anything(tmp_path: Path) -> None:
    files = _write(tmp_path, ["whatever.bin"])
    formats.validate_format(formats.OTHERS, tmp_path, files)
    assert formats.guess_format(files) == formats.OTHERS


@pytest.mark.parametrize(
    ("name", "data", "fragment"),
    [
        ("m.gguf", b"NOPE", "not a GGUF file"),
        ("m.tflite", b"\0\0\0\0XXXX", "not a TFLite file"),
        ("m.safetensors", struct.pack("<Q", 1000) + b"{}", "exceeds the file"),
        ("m.safetensors", struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_header_checks_catch_mislabelled_files(tmp_path: Path, name: str, data: bytes, fragment: str) -> None:
    (tmp_path / name).write_bytes(data)
    guessed = formats.guess_format([PurePosixPath(name)])
    with pytest.raises(ModelFormatError, match=fragment):
        formats.validate_format(guessed, tmp_path, [PurePosixPath(name)])


def test_listing_is_sorted_and_skips_special_files(tmp_path: Path) -> None:
    import os

    _write(tmp_path, ["b.txt", "a/z.txt", "a.txt"])
    os.symlink(tmp_path / "a", tmp_path / "dirlink")
    os.symlink(tmp_path / "b.txt", tmp_path / "filelink")
    os.symlink(tmp_path / "missing", tmp_path / "broken")
    os.mkfifo(tmp_path / "fifo")
    listing = list_model_files(tmp_path)
    assert [str(f.relative) for f in listing.files] == ["a.txt", "a/z.txt", "b.txt", "filelink"]
    assert [s.split(":")[0] for s in listing.skipped] == ["broken", "dirlink", "fifo"]
