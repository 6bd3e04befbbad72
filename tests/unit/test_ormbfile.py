import json
from datetime import datetime, timezone

import pytest

from ormb.errors import MetadataError
from ormb.model.ormbfile import Metadata, metadata_from_config, parse_metadata

FULL = """\
author: gaocegege
created: 2020-06-01T08:00:00Z
description: fashion mnist
tags: [cv, demo]
labels:
  team: ml
  stage: prod
format: SavedModel
gpuType: V100
framework: TensorFlow
metrics:
  training:
    - name: acc
      value: 0.98
hyperParameters:
  - name: batch_size
    value: 32
signature:
  inputs:
    - name: image
      size: [-1, 28, 28]
      dType: float32
  outputs:
    - name: scores
      size: [-1, 10]
      dType: float32
      opType: classification
      values: [a, b]
  layers:
    conv2d: 2
training:
  git:
    repository: https://example.com/train.git
    revision: abc123
dataset:
  git:
    repository: https://example.com/data.git
    revision: def456
"""


def test_every_field_of_the_original_parses() -> None:
    meta = parse_metadata(FULL)
    assert meta.author == "gaocegege"
    assert meta.created == datetime(2020, 6, 1, 8, 0, tzinfo=timezone.utc)
    assert meta.format == "SavedModel"
    assert meta.gpu_type == "V100"
    assert meta.metrics is not None and meta.metrics["training"][0].value == "0.98"
    assert meta.hyper_parameters is not None and meta.hyper_parameters[0].value == "32"
    assert meta.signature is not None and meta.signature.inputs is not None
    assert meta.signature.inputs[0].size == [-1, 28, 28]
    assert meta.signature.outputs is not None and meta.signature.outputs[0].op_type == "classification"
    assert meta.signature.layers == {"conv2d": 2}
    assert meta.training is not None and meta.training.git is not None and meta.training.git.revision == "abc123"
    assert meta.dataset is not None and meta.dataset.git is not None


def test_config_json_uses_the_original_keys_and_order() -> None:
    data = json.loads(parse_metadata(FULL).to_config_bytes())
    assert list(data) == [
        "author", "created", "description", "tags", "labels", "format", "gpuType", "framework", "metrics",
        "hyperParameters", "signature", "training", "dataset",
    ]
    assert data["created"] == "2020-06-01T08:00:00Z"
    assert list(data["labels"]) == ["stage", "team"]  # Go sorts map keys
    assert data["signature"]["inputs"][0] == {"name": "image", "size": [-1, 28, 28], "dType": "float32"}


def test_config_round_trips_through_yaml() -> None:
    meta = parse_metadata(FULL)
    assert parse_metadata(meta.to_yaml()) == meta
    assert metadata_from_config(meta.to_config_bytes()) == meta


def test_unknown_key_names_the_nearest_valid_key_and_line() -> None:
    with pytest.raises(MetadataError) as info:
        parse_metadata("author: me\nframwork: torch\n", "m/ormbfile.yaml")
    message = str(info.value)
    assert "m/ormbfile.yaml:2" in message
    assert "unknown key 'framwork'" in message
    assert "did you mean 'framework'?" in message


def test_nested_unknown_key_names_the_path() -> None:
    with pytest.raises(MetadataError) as info:
        parse_metadata("signature:\n  inputs:\n    - name: x\n      dtype: float32\n")
    message = str(info.value)
    assert "ormbfile.yaml:4" in message
    assert "signature.inputs[0].dtype" in message
    assert "did you mean 'dType'?" in message


def test_wrong_type_names_the_field_path_and_line() -> None:
    with pytest.raises(MetadataError) as info:
        parse_metadata("signature:\n  inputs:\n    - name: x\n      size: [1, many]\n")
    message = str(info.value)
    assert "signature.inputs[0].size[1]" in message
    assert "ormbfile.yaml:4" in message
    assert "'many'" in message


def test_unknown_format_lists_the_valid_ones() -> None:
    with pytest.raises(MetadataError) as info:
        parse_metadata("format: keras3\n")
    assert "unknown format 'keras3'" in str(info.value)
    assert "SavedModel" in str(info.value)


def test_format_names_are_case_insensitive_like_the_original_spellings() -> None:
    assert parse_metadata("format: MXNETParams\n").format == "MXNetParams"
    assert parse_metadata("format: onnx\n").format == "ONNX"


def test_broken_yaml_shows_the_line() -> None:
    with pytest.raises(MetadataError) as info:
        parse_metadata("author: me\nlabels: [unclosed\n", "x.yaml")
    assert "x.yaml:" in str(info.value)
    assert "not valid YAML" in str(info.value)


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(MetadataError, match="top level must be a mapping"):
        parse_metadata("- a\n- b\n")


def test_empty_file_is_empty_metadata() -> None:
    assert parse_metadata("") == Metadata()


def test_config_from_other_tools_is_read_leniently() -> None:
    meta = metadata_from_config(b'{"format":"ONNX","somethingElse":1}')
    assert meta.format == "ONNX"
    assert metadata_from_config(b"not json") == Metadata()
