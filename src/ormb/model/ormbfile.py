"""The ``ormbfile.yaml`` schema: every field of the original ormb, with the same keys.

Validation is strict: an unknown key names the nearest valid key, a wrong type names the
field path, and both show the file and line where YAML gives one.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ormb.errors import MetadataError
from ormb.model.formats import canonical_format_name

FILENAME = "ormbfile.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, coerce_numbers_to_str=True)


class Metric(_Strict):
    name: str
    value: str


class HyperParameter(_Strict):
    name: str
    value: str


class Tensor(_Strict):
    name: str | None = None
    size: list[int] | None = None
    d_type: str | None = Field(default=None, alias="dType")
    op_type: str | None = Field(default=None, alias="opType")
    values: list[str] | None = None


class Signature(_Strict):
    inputs: list[Tensor] | None = None
    outputs: list[Tensor] | None = None
    layers: dict[str, int] | None = None


class GitRepo(_Strict):
    repository: str | None = None
    revision: str | None = None


class Training(_Strict):
    git: GitRepo | None = None


class Dataset(_Strict):
    git: GitRepo | None = None


class Metadata(_Strict):
    """The model's metadata; travels as the artifact's config blob."""

    author: str | None = None
    created: datetime | None = None
    description: str | None = None
    tags: list[str] | None = None
    labels: dict[str, str] | None = None
    format: str | None = None
    gpu_type: str | None = Field(default=None, alias="gpuType")
    framework: str | None = None
    metrics: dict[str, list[Metric]] | None = None
    hyper_parameters: list[HyperParameter] | None = Field(default=None, alias="hyperParameters")
    signature: Signature | None = None
    training: Training | None = None
    dataset: Dataset | None = None
    directory_structure: list[str] | None = Field(default=None, alias="directoryStructure")
    # ormb's own: how 'ormb save' packs the model (ormb v1alpha1 or CNCF ModelPack); not part of the config
    artifact_format: Literal["ormb", "modelpack"] | None = Field(default=None, alias="artifactFormat")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        return None if value is None else canonical_format_name(value)

    def to_json_dict(self) -> dict[str, Any]:
        """The config JSON: keys in the original's order, empty fields left out, maps sorted."""
        data = self.model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"artifact_format"})
        if self.created is not None:
            created = self.created if self.created.tzinfo else self.created.replace(tzinfo=timezone.utc)
            data["created"] = created.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
        cleaned: dict[str, Any] = _sorted_maps({k: v for k, v in data.items() if v not in ({}, [], "")})
        return cleaned

    def to_config_bytes(self) -> bytes:
        return json.dumps(self.to_json_dict(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def to_yaml(self) -> str:
        data = self.to_json_dict()
        data.pop("directoryStructure", None)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _sorted_maps(value: Any, key: str = "") -> Any:
    # Go's encoding/json writes map keys sorted; struct fields keep their order.
    if isinstance(value, dict):
        items = sorted(value.items()) if key in {"labels", "metrics", "layers"} else value.items()
        return {k: _sorted_maps(v, k) for k, v in items}
    if isinstance(value, list):
        return [_sorted_maps(v) for v in value]
    return value


def parse_metadata(text: str, source: str = FILENAME) -> Metadata:
    """Parse and validate ormbfile.yaml text; errors name ``source`` and the line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise MetadataError(f"{where}: not valid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MetadataError(f"{source}: the top level must be a mapping of keys such as 'format' and 'author'")
    lines = _line_numbers(node) if node is not None else {}
    try:
        return Metadata.model_validate(data)
    except ValidationError as exc:
        raise _metadata_error(exc, source, lines) from None


def parse_metadata_dict(data: Mapping[str, Any], source: str = "metadata") -> Metadata:
    """Validate metadata given as a dict with ormbfile.yaml's keys (the Python API's ``metadata=``)."""
    try:
        return Metadata.model_validate(dict(data))
    except ValidationError as exc:
        raise _metadata_error(exc, source, {}) from None


def load_metadata(path: Path) -> Metadata:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MetadataError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise MetadataError(f"cannot read {path}: {exc.strerror}") from None
    return parse_metadata(text, str(path))


def _line_numbers(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    lines: dict[tuple[Any, ...], int] = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = path + (key_node.value,)
            lines.update(_line_numbers(value_node, key_path))
            lines[key_path] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_numbers(item, path + (i,)))
    return lines


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The YAML keys valid at the mapping that holds ``loc[-1]``."""
    model: Any = Metadata
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(_python_name(model, part))
        model = _inner_model(field.annotation) if field is not None else None
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _python_name(model: Any, key: str) -> str:
    for name, field in model.model_fields.items():
        if (field.alias or name) == key:
            return str(name)
    return key


def _inner_model(annotation: Any) -> Any:
    stack = [annotation]
    while stack:
        current = stack.pop()
        if isinstance(current, type) and issubclass(current, BaseModel):
            return current
        stack.extend(getattr(current, "__args__", ()))
    return None


def _metadata_error(exc: ValidationError, source: str, lines: Mapping[tuple[Any, ...], int]) -> MetadataError:
    messages = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
        line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
        where = f"{source}:{line}" if line else source
        if error["type"] == "extra_forbidden":
            valid = _fields_at(loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(valid)}"
            messages.append(f"{where}: unknown key '{path}' ({hint})")
        elif error["type"] == "value_error":
            messages.append(f"{where}: {path}: {error['msg'].removeprefix('Value error, ')}")
        else:
            messages.append(f"{where}: {path}: {error['msg'].lower()} (got {error['input']!r})")
    return MetadataError("; ".join(messages), "fix ormbfile.yaml and run the command again")


def metadata_from_config(data: bytes) -> Metadata:
    """Read a config blob written by ormb or another tool; unknown keys are ignored, never fatal."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return Metadata()
    if not isinstance(raw, dict):
        return Metadata()
    known = {field.alias or name for name, field in Metadata.model_fields.items()}
    try:
        return Metadata.model_validate({k: v for k, v in raw.items() if k in known})
    except ValidationError:
        return Metadata()
