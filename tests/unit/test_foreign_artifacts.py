"""Other tools' artifacts are read, never trusted: generated hostile layers, paths and configs (no network).

Promises (docs/security.md): a layer's path, whatever a foreign tool wrote (or the name ormb gives an
unannotated Docker Model Runner layer), never leads outside the export directory, and a refused artifact
writes nothing; a compressed raw layer (KitOps ``raw+zstd``/``raw+gzip``) is checked against its digest and
refused, with nothing written, when it is not what it claims; any config JSON, however odd, gives metadata
or none, never a crash.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

import pytest
import yaml
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from ormb import api
from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.content.memory import MemoryStore
from ormb.content.target import push_bytes
from ormb.errors import IntegrityError, InvalidArtifactError, UnsafeArchiveError
from ormb.model import modelpack
from ormb.model.loaded import load_model
from ormb.oci.descriptor import Descriptor, Manifest

CONFIGS = {
    "kitops": "application/vnd.kitops.modelkit.config.v1+json",
    "dmr": "application/vnd.docker.ai.model.config.v0.2+json",
    "modelpack": "application/vnd.cncf.model.config.v1+json",
}


def _place(settings: Settings, ref: str, config: tuple[str, bytes], layers: list[tuple[str, bytes, dict[str, str]]],
           layer_digests: dict[int, str] | None = None) -> None:
    cache = OCILayout(settings.cache_dir)
    config_desc = Descriptor.of_bytes(config[0], config[1])
    push_bytes(cache, config_desc, config[1])
    descs = []
    for i, (media_type, data, layer_annotations) in enumerate(layers):
        desc = Descriptor.of_bytes(media_type, data, layer_annotations)
        cache.push(desc, io.BytesIO(data))
        if layer_digests and i in layer_digests:  # claim another digest: a registry that lies
            desc = Descriptor(media_type, layer_digests[i], len(data), layer_annotations)
            path = cache.blob_path(desc.digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        descs.append(desc)
    manifest = Manifest(config_desc, tuple(descs))
    data = manifest.to_bytes()
    desc = Descriptor.of_bytes("application/vnd.oci.image.manifest.v1+json", data)
    push_bytes(cache, desc, data)
    cache.tag(desc, ref)


_SEGMENTS = st.sampled_from(["a", "b.bin", "..", ".", "", "/", "\\", "C:", "x\x00y", "~", "%2e%2e", "..\\.."])
_PATHS = st.lists(_SEGMENTS, min_size=1, max_size=5).map("/".join) | st.text(max_size=12)


@settings(max_examples=60)
@given(paths=st.lists(_PATHS, min_size=1, max_size=3),
       media_type=st.sampled_from(["application/vnd.kitops.modelkit.model.v1.raw",
                                   "application/vnd.docker.ai.model.file", "application/vnd.docker.ai.safetensors",
                                   "application/vnd.cncf.model.weight.v1.raw",
                                   "application/vnd.cnai.model.doc.v1.raw"]),
       old_names=st.booleans())
def test_generated_layer_paths_never_leave_the_export_directory(
    tmp_path_factory: pytest.TempPathFactory, paths: list[str], media_type: str, old_names: bool,
) -> None:
    tmp = tmp_path_factory.mktemp("paths")
    settings_ = Settings(home=tmp / "home", default_registry="localhost:5000")
    key = "org.cnai.model.filepath" if old_names else "org.cncf.model.filepath"
    layers = [(media_type, f"file {i}".encode(), {key: p}) for i, p in enumerate(paths)]
    _place(settings_, "localhost:5000/evil/x:v1", (CONFIGS["dmr"], b"{}"), layers)
    dest = tmp / "box" / "out"
    dest.parent.mkdir()
    try:
        result = api.export("evil/x:v1", dest, settings=settings_)
    except (UnsafeArchiveError, InvalidArtifactError):
        assert not dest.exists()
        return
    box = os.path.realpath(tmp / "box")
    for root, _, files in os.walk(tmp):
        for name in files:
            real = os.path.realpath(os.path.join(root, name))
            assert not real.startswith(box) or real.startswith(os.path.realpath(dest)), real
    assert len(result.files) == len(paths)
    for written in result.files:
        assert os.path.realpath(dest / written).startswith(os.path.realpath(dest) + os.sep)


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_compressed_raw_layers_are_checked_and_refused_whole(tmp_path: Path, settings: Settings,
                                                             compression: str) -> None:
    payload = os.urandom(100_000)
    packed = zstandard.ZstdCompressor().compress(payload) if compression == "zstd" else gzip.compress(payload)
    good = (f"application/vnd.kitops.modelkit.model.v1.raw+{compression}", packed,
            {"org.cncf.model.filepath": "w.bin"})
    _place(settings, "localhost:5000/kit/ok:v1", (CONFIGS["kitops"], b"{}"), [good])
    api.export("kit/ok:v1", tmp_path / "ok", settings=settings)
    assert (tmp_path / "ok" / "w.bin").read_bytes() == payload
    # bytes that are not zstd/gzip at all, under their own (correct) digest: refused as unsafe, nothing written
    junk = (good[0], os.urandom(5000), {"org.cncf.model.filepath": "w.bin"})
    _place(settings, "localhost:5000/kit/junk:v1", (CONFIGS["kitops"], b"{}"), [junk])
    with pytest.raises(UnsafeArchiveError, match=f"not valid {compression}"):
        api.export("kit/junk:v1", tmp_path / "junk", settings=settings)
    assert not (tmp_path / "junk").exists()
    # a layer whose bytes do not match the digest the manifest names: an integrity error, nothing written
    _place(settings, "localhost:5000/kit/lie:v1", (CONFIGS["kitops"], b"{}"), [good],
           layer_digests={0: "sha256:" + "1" * 64})
    with pytest.raises(IntegrityError):
        api.export("kit/lie:v1", tmp_path / "lie", settings=settings)
    assert not (tmp_path / "lie").exists()


_ODD_TEXT = st.sampled_from(["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "2020-06-01T08:00:00Z",
                             "\ud800", "a\udfffb", "\x00", "Others", "ONNX", "", "x" * 300])
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
                     | _ODD_TEXT,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=12)
_KEYS = st.sampled_from(["package", "model", "config", "descriptor", "datasets", "code", "authors", "name",
                         "format", "createdAt", "created", "licenses", "parameters", "capabilities", "paramSize",
                         "knowledgeCutoff", "author", "labels", "tags", "modelpack", "signature", "layers"])
_CONFIG = st.dictionaries(_KEYS, _JSON | st.dictionaries(_KEYS, _JSON | st.dictionaries(_KEYS, _JSON, max_size=3),
                                                          max_size=5), max_size=6)
_DEEP = st.integers(30, 100_000).map(lambda n: "[" * n + "]" * n)


def _document(value: dict[str, object], shape: str, depth: str, key: str) -> str:
    """``value`` as JSON text, or a document of the same keys with one value nested ``depth`` levels down."""
    if shape == "as is":
        return json.dumps(value)
    if shape == "deep value":
        return json.dumps({**value, key: None})[:-1] + f', "{key}-deep": {depth}}}'
    return depth  # the whole document


CONFIGS_READ = {**CONFIGS, "ormb": "application/vnd.caicloud.model.config.v1alpha1+json"}
_SHAPES = st.sampled_from(["as is", "as is", "deep value", "deep document"])


@settings(max_examples=150)
@given(kind=st.sampled_from(sorted(CONFIGS_READ)), config=_CONFIG, shape=_SHAPES, depth=_DEEP, key=_KEYS,
       bom=st.booleans(), annotation=st.none() | _CONFIG, annotation_shape=_SHAPES,
       where=st.sampled_from(["ml.kitops.modelkit.kitfile", "io.ormb.model.metadata+json"]))
def test_any_foreign_config_gives_metadata_or_none_never_a_crash(
    kind: str, config: dict[str, object], shape: str, depth: str, key: str, bom: bool,
    annotation: dict[str, object] | None, annotation_shape: str, where: str,
) -> None:
    """Configs of every kind (and ormb's own), and the Kitfile or ormb metadata a manifest annotation carries:
    odd types, dates out of UTC's range, lone surrogates, BOMs, nesting far deeper than Python recurses."""
    data = (b"\xef\xbb\xbf" if bom else b"") + _document(config, shape, depth, str(key)).encode("utf-8", "surrogatepass")
    annotations = {where: _document(annotation, annotation_shape, depth, str(key))} if annotation is not None else {}
    store = MemoryStore()
    config_desc = Descriptor.of_bytes(CONFIGS_READ[kind], data)
    store.blobs[config_desc.digest] = data
    manifest = Manifest(config_desc, (), annotations=annotations)
    manifest_desc = Descriptor.of_bytes(manifest.media_type, manifest.to_bytes())
    store.blobs[manifest_desc.digest] = manifest.to_bytes()
    model = load_model(store, manifest_desc)  # the dispatch models, inspect and export use
    model.metadata.to_config_bytes()  # and what came out is valid metadata, writable as a config and as ormbfile.yaml
    model.metadata.to_yaml().encode("utf-8")
    info = modelpack.model_info(model.manifest, model.config)
    yaml.safe_dump(info, allow_unicode=True).encode("utf-8")  # what 'ormb inspect' prints
    json.dumps(info, ensure_ascii=False).encode("utf-8")  # and 'ormb inspect --json'
