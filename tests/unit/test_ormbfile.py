import json
import re
from datetime import datetime, timezone

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

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
    assert meta.metrics is not None and meta.metrics["training"][0].value == 0.98
    assert meta.hyper_parameters is not None and meta.hyper_parameters[0].value == 32
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
        parse_metadata("signature:\n  inputs:\n    - name: x\n      dTyp: float32\n")
    message = str(info.value)
    assert "ormbfile.yaml:4" in message
    assert "signature.inputs[0].dTyp" in message
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


# -- what the issue asked for: numbers stay numbers, older spellings, Harbor's and ModelPack's fields --


@given(st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53) | st.booleans())
def test_metric_and_hyper_parameter_values_keep_their_type(value: float | int | bool) -> None:
    text = yaml.safe_dump({"metrics": {"test": [{"name": "m", "value": value}]},
                           "hyperParameters": [{"name": "h", "value": value}]})
    meta = parse_metadata(text)
    config = json.loads(meta.to_config_bytes())
    assert config["metrics"]["test"][0]["value"] == value
    assert type(config["metrics"]["test"][0]["value"]) is type(value)
    assert type(config["hyperParameters"][0]["value"]) is type(value)
    assert parse_metadata(meta.to_yaml()) == meta


def test_a_quoted_number_stays_a_string() -> None:
    meta = parse_metadata('metrics:\n  test:\n    - {name: acc, value: "0.9196"}\n')
    assert json.loads(meta.to_config_bytes())["metrics"]["test"][0]["value"] == "0.9196"


def test_older_spellings_of_the_original_examples_are_read() -> None:
    meta = parse_metadata("signature:\n  inputs:\n    - {name: x, dtype: float32, optype: c}\n"
                          "  layers:\n    - name: Conv2D\n    - name: Relu6\n    - name: Conv2D\n")
    assert meta.signature is not None and meta.signature.inputs is not None
    assert meta.signature.inputs[0].d_type == "float32" and meta.signature.inputs[0].op_type == "c"
    assert meta.signature.layers == {"Conv2D": 2, "Relu6": 1}
    config = json.loads(meta.to_config_bytes())
    assert config["signature"]["inputs"][0] == {"name": "x", "dType": "float32", "opType": "c"}


def test_x_harbor_attributes_are_carried_into_the_config_as_given() -> None:
    meta = parse_metadata("format: SavedModel\nxHarborAttributes:\n  schemaVersion: 1\n  icon: https://x/logo.png\n"
                          "  additions:\n    - {contentType: text/plain, name: yaml, digest: 'sha256:abc'}\n"
                          "  denyKeyList: [dataset]\n")
    config = json.loads(meta.to_config_bytes())
    assert config["xHarborAttributes"] == {"schemaVersion": 1, "icon": "https://x/logo.png", "additions": [
        {"contentType": "text/plain", "name": "yaml", "digest": "sha256:abc"}], "denyKeyList": ["dataset"]}
    assert metadata_from_config(meta.to_config_bytes()) == meta


def test_modelpack_block_is_checked_like_the_spec_schema() -> None:
    meta = parse_metadata("modelpack:\n  name: qwen\n  paramSize: 8b\n  licenses: [Apache-2.0]\n"
                          "  capabilities: {inputTypes: [text, image], languages: [en, zh], reasoning: true,"
                          " knowledgeCutoff: 2024-06-01}\n")
    assert meta.modelpack is not None and meta.modelpack.capabilities is not None
    assert meta.modelpack.to_json_dict()["capabilities"]["knowledgeCutoff"] == "2024-06-01T00:00:00Z"
    for bad, where in (("name: ''", "modelpack.name"), ("capabilities: {inputTypes: [smell]}", "inputTypes[0]"),
                       ("capabilities: {languages: [eng]}", "languages[0]"),
                       ("capabilities: {reasoning: maybe}", "reasoning"), ("paramsize: 7", "did you mean 'paramSize'")):
        with pytest.raises(MetadataError, match=re.escape(where)):
            parse_metadata(f"modelpack:\n  {bad}\n")


def test_save_settings_stay_out_of_the_config_but_are_written_back() -> None:
    meta = parse_metadata("format: ONNX\nartifactFormat: modelpack\nmodelpackNames: cnai\nincludeHidden: true\n")
    assert json.loads(meta.to_config_bytes()) == {"format": "ONNX"}
    assert parse_metadata(meta.to_yaml()) == meta
    with pytest.raises(MetadataError, match="modelpackNames"):
        parse_metadata("modelpackNames: vnd.cnai\n")


def test_a_config_with_one_bad_field_keeps_the_others() -> None:
    meta = metadata_from_config(b'{"format":"ONNX","author":"a","metrics":"not a map","artifactFormat":"x"}')
    assert (meta.format, meta.author, meta.metrics, meta.artifact_format) == ("ONNX", "a", None, None)


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"])
def test_a_created_outside_the_range_of_utc_dates_is_a_metadata_error(when: str) -> None:
    """F7: 0001-01-01T00:00:00+23:59 is a day before year 1 in UTC: OverflowError (exit 70) in 'ormb save'."""
    with pytest.raises(MetadataError, match="created.*out of the range"):
        parse_metadata(f"format: Others\ncreated: {when}\n")
    with pytest.raises(MetadataError, match="knowledgeCutoff.*out of the range"):
        parse_metadata(f"format: Others\nmodelpack:\n  capabilities:\n    knowledgeCutoff: {when}\n")
    assert metadata_from_config(json.dumps({"format": "Others", "created": when}).encode()).created is None
