"""The ``ormbfile.yaml`` schema: every field of the original ormb, with the same keys.

Validation is strict: an unknown key names the nearest valid key, a wrong type names the
field path, and both show the file and line where YAML gives one.

Beyond the original's fields: ``xHarborAttributes`` (accepted by later versions of the
original, kleveross/ormb, and carried into the config as given), ``modelpack:`` (the CNCF
ModelPack descriptor and config fields that have no ormb equivalent, written into a
ModelPack config and checked against the spec's schema rules here), and the save settings
``artifactFormat``, ``modelpackNames`` and ``includeHidden`` (how ``ormb save`` packs; never
part of the config, but written back by ``ormb export`` so the directory saves again to the
same digest).  The older spellings found in the original's examples (``dtype``,
``optype``, ``layers`` as a list of ``{name: ...}``) are read too.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from ormb.errors import MetadataError
from ormb.model.formats import canonical_format_name
from ormb.oci.descriptor import json_object

FILENAME = "ormbfile.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, coerce_numbers_to_str=True)


# A metric or hyper-parameter value keeps its YAML type: 0.9196 stays a number, "0.9196" a string.
# (The original ormb reads the config with yaml.v2 into a string field, which takes numbers too.)
Scalar = StrictBool | StrictInt | StrictFloat | StrictStr


class _Named(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    value: Scalar


class Metric(_Named):
    pass


class HyperParameter(_Named):
    pass


class Tensor(_Strict):
    name: str | None = None
    size: list[int] | None = None
    d_type: str | None = Field(default=None, alias="dType", validation_alias=AliasChoices("dType", "dtype"))
    op_type: str | None = Field(default=None, alias="opType", validation_alias=AliasChoices("opType", "optype"))
    values: list[str] | None = None


class Signature(_Strict):
    inputs: list[Tensor] | None = None
    outputs: list[Tensor] | None = None
    layers: dict[str, int] | None = None

    @field_validator("layers", mode="before")
    @classmethod
    def _layers_as_counts(cls, value: Any) -> Any:
        """Early versions of the original wrote ``layers`` as a list of ``{name: ...}``: count them."""
        if isinstance(value, list) and all(isinstance(item, dict) and set(item) == {"name"} for item in value):
            counts: dict[str, int] = {}
            for item in value:
                counts[str(item["name"])] = counts.get(str(item["name"]), 0) + 1
            return counts
        return value


class GitRepo(_Strict):
    repository: str | None = None
    revision: str | None = None


class Training(_Strict):
    git: GitRepo | None = None


class Dataset(_Strict):
    git: GitRepo | None = None


class HarborAddition(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    content_type: str | None = Field(default=None, alias="contentType")
    name: str
    digest: str | None = None


class HarborAttributes(BaseModel):
    """``xHarborAttributes``: the schema of Harbor's "enhanced default processor" proposal, which later
    versions of the original ormb accept.  Unknown keys (the examples also use ``denyKeyList``) are kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_version: int = Field(default=1, alias="schemaVersion")
    icon: str | None = None
    additions: list[HarborAddition] | None = None
    skip_key_list: list[str] | None = Field(default=None, alias="skipKeyList")


Modality = Literal["text", "image", "audio", "video", "embedding", "other"]
LanguageCode = Annotated[str, Field(pattern=r"^[a-z]{2}$")]


class ModelCapabilities(_Strict):
    """``modelpack.capabilities``: the ModelPack config's ``capabilities``."""

    input_types: list[Modality] | None = Field(default=None, alias="inputTypes")
    output_types: list[Modality] | None = Field(default=None, alias="outputTypes")
    knowledge_cutoff: datetime | None = Field(default=None, alias="knowledgeCutoff")
    reasoning: StrictBool | None = None
    tool_usage: StrictBool | None = Field(default=None, alias="toolUsage")
    reward: StrictBool | None = None
    languages: list[LanguageCode] | None = None

    @field_validator("knowledge_cutoff")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return as_utc(value)


class ModelPackInfo(_Strict):
    """The ``modelpack:`` block: ModelPack descriptor and config fields ormb's own fields do not cover.

    ``name`` defaults to the repository's last component and ``version`` to nothing (never the
    tag: the same files saved under two tags are one artifact).  Authors, description, creation
    time and format come from the top-level ``author``, ``description``, ``created`` and ``format``.
    """

    name: str | None = Field(default=None, min_length=1)
    version: str | None = None
    family: str | None = None
    title: str | None = None
    vendor: str | None = None
    licenses: list[str] | None = None
    source_url: str | None = Field(default=None, alias="sourceURL")
    revision: str | None = None
    doc_url: str | None = Field(default=None, alias="docURL")
    datasets_url: list[str] | None = Field(default=None, alias="datasetsURL")
    architecture: str | None = None
    param_size: str | None = Field(default=None, alias="paramSize")
    precision: str | None = None
    quantization: str | None = None
    capabilities: ModelCapabilities | None = None

    def to_json_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        cutoff = self.capabilities.knowledge_cutoff if self.capabilities else None
        if cutoff is not None:
            data["capabilities"]["knowledgeCutoff"] = rfc3339(cutoff)
        return data


# Where the modelpack: block's keys go in a ModelPack config.
MODELPACK_DESCRIPTOR_KEYS = ("name", "version", "family", "title", "vendor", "licenses", "sourceURL", "revision",
                             "docURL", "datasetsURL")
MODELPACK_CONFIG_KEYS = ("architecture", "paramSize", "precision", "quantization", "capabilities")

# Settings of 'ormb save' that ormbfile.yaml may carry: how to pack, not what the model is.
SAVE_SETTINGS = frozenset({"artifact_format", "modelpack_names", "include_hidden"})


def as_utc(when: datetime | None) -> datetime | None:
    """A time without a zone is taken as UTC (YAML's plain dates and times have none).

    A time that is not one in UTC (``0001-01-01T00:00:00+23:59`` is a day before year 1) is a
    ``ValueError``, which a pydantic validator reports as a validation error like any other."""
    if when is None:
        return None
    try:
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{when.isoformat()} is out of the range of dates in UTC") from None


def rfc3339(when: datetime) -> str:
    """UTC, second precision or finer, with a ``Z``: what the schemas' ``date-time`` accepts."""
    aware = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return aware.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


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
    x_harbor_attributes: HarborAttributes | None = Field(default=None, alias="xHarborAttributes")
    modelpack: ModelPackInfo | None = None
    directory_structure: list[str] | None = Field(default=None, alias="directoryStructure")
    # Save settings, never part of the config (see SAVE_SETTINGS):
    # how 'ormb save' packs the model (ormb v1alpha1 or CNCF ModelPack) ...
    artifact_format: Literal["ormb", "modelpack"] | None = Field(default=None, alias="artifactFormat")
    # ... which ModelPack names it writes (cncf: model-spec v0.0.7+; cnai: the older names Harbor <= 2.15 reads) ...
    modelpack_names: Literal["cncf", "cnai"] | None = Field(default=None, alias="modelpackNames")
    # ... and whether hidden files and directories (.git, .cache, .DS_Store) are packed too.
    include_hidden: StrictBool | None = Field(default=None, alias="includeHidden")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        return None if value is None else canonical_format_name(value)

    @field_validator("created")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return as_utc(value)

    def to_json_dict(self, *, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The config JSON: keys in the original's order, empty fields left out, maps sorted.

        ``exclude`` names more fields (Python names) to leave out; the save settings never appear.
        """
        data = self.model_dump(by_alias=True, exclude_none=True, mode="json", exclude=set(SAVE_SETTINGS | exclude))
        if self.created is not None:
            data["created"] = rfc3339(self.created)
        if self.modelpack is not None and "modelpack" not in exclude:
            data["modelpack"] = self.modelpack.to_json_dict()
        cleaned: dict[str, Any] = _sorted_maps({k: v for k, v in data.items() if v not in ({}, [], "")})
        return cleaned

    def to_config_bytes(self, *, exclude: frozenset[str] = frozenset()) -> bytes:
        return json.dumps(self.to_json_dict(exclude=exclude), separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def to_yaml(self) -> str:
        """ormbfile.yaml text: the metadata and the save settings (so the directory saves the same way again)."""
        data = self.to_json_dict(exclude=frozenset({"directory_structure"}))
        settings = self.model_dump(by_alias=True, exclude_none=True, include=set(SAVE_SETTINGS))
        return yaml.safe_dump({**data, **settings}, sort_keys=False, allow_unicode=True)


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


def metadata_from_config(data: bytes | str) -> Metadata:
    """Read a config blob written by ormb or another tool; unknown keys are ignored, never fatal."""
    raw = json_object(data, "config")
    known = {field.alias or name for name, field in Metadata.model_fields.items() if name not in SAVE_SETTINGS}
    meta = lenient_metadata({k: v for k, v in raw.items() if k in known})
    if meta.directory_structure and any(_hidden(entry) for entry in meta.directory_structure):
        meta = meta.model_copy(update={"include_hidden": True})  # so that an export saves again the same
    return meta


def lenient_metadata(data: dict[str, Any]) -> Metadata:
    """Validate what another tool (or an older ormb) wrote, dropping the top-level fields that do not fit."""
    data = dict(data)
    for _ in range(len(data) + 1):
        try:
            return Metadata.model_validate(data)
        except ValidationError as exc:
            bad = {error["loc"][0] for error in exc.errors() if error["loc"]}
            if not bad & set(data):
                break
            for key in bad:
                data.pop(str(key), None)
    return Metadata()


def _hidden(path: str) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in path.split("/"))
