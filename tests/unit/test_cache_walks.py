"""prune, models and inspect walk the cache the way copy does (one successors function), and a
broken or foreign reference never costs the rest of the cache: prune keeps what it cannot
read through, models lists it as its own row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import craft_layer, make_model
from ormb import api
from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.content.target import push_bytes
from ormb.errors import InvalidArtifactError
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.oci.grammar import MAX_METADATA_BLOB

REF = "localhost:5000/team/m"


def _put(layout: OCILayout, media_type: str, data: bytes) -> Descriptor:
    desc = Descriptor.of_bytes(media_type, data)
    push_bytes(layout, desc, data)
    return desc


def _model(layout: OCILayout, payload: bytes, *, config: bytes = b'{"format":"Others"}',
           config_type: str = mediatypes.ORMB_CONFIG) -> Descriptor:
    """A one-layer model manifest in the layout (untagged); returns its descriptor."""
    config_desc = _put(layout, config_type, config)
    layer = _put(layout, mediatypes.ORMB_LAYER, payload)
    return _put(layout, mediatypes.OCI_MANIFEST, Manifest(config_desc, (layer,)).to_bytes())


def _index(layout: OCILayout, *children: Descriptor, media_type: str = mediatypes.OCI_INDEX) -> Descriptor:
    data = json.dumps({"schemaVersion": 2, "mediaType": media_type,
                       "manifests": [c.to_dict() for c in children]}).encode()
    return _put(layout, media_type, data)


def _blobs(settings: Settings) -> set[str]:
    return set(OCILayout(settings.cache_dir).blob_digests())


def _reachable_from(layout: OCILayout, desc: Descriptor) -> set[str]:
    """What a correct walk of a manifest or index reaches (built by hand here, not by the code under test)."""
    data = layout.blob_path(desc.digest).read_bytes()
    raw = json.loads(data)
    found = {desc.digest}
    for child in raw.get("manifests", []):
        found |= _reachable_from(layout, Descriptor.from_dict(child))
    if "config" in raw:
        found |= {raw["config"]["digest"], *(layer["digest"] for layer in raw["layers"])}
    return found


# -- prune ------------------------------------------------------------------------------------


def test_prune_keeps_the_children_of_an_index(settings: Settings) -> None:
    layout = OCILayout(settings.cache_dir)
    amd, arm = _model(layout, b"amd64 weights"), _model(layout, b"arm64 weights")
    index = _index(layout, amd, arm)
    layout.tag(index, f"{REF}:multi")
    nested = _index(layout, _index(layout, _model(layout, b"deep weights")))  # an index of an index
    layout.tag(nested, f"{REF}:nested")
    before = _blobs(settings)
    assert api.prune(settings=settings).blobs == 0
    assert _blobs(settings) == before


def test_prune_follows_a_manifest_recorded_as_plain_json(settings: Settings) -> None:
    """A registry that sends no mediaType: the manifest's descriptor says application/json."""
    layout = OCILayout(settings.cache_dir)
    config = _put(layout, mediatypes.ORMB_CONFIG, b'{"format":"Others"}')
    layer = _put(layout, mediatypes.ORMB_LAYER, b"weights")
    data = json.dumps({"schemaVersion": 2, "config": config.to_dict(), "layers": [layer.to_dict()]}).encode()
    manifest = _put(layout, "application/json", data)
    layout.tag(manifest, f"{REF}:plain")
    member = _model(layout, b"under an index that says application/json")
    layout.tag(_index(layout, Descriptor("application/json", member.digest, member.size)), f"{REF}:idx")
    before = _blobs(settings)
    api.prune(settings=settings)
    assert _blobs(settings) == before


@pytest.mark.parametrize("position", ["index entry", "subject", "root"])
@pytest.mark.parametrize("recorded", ["application/vnd.example.thing+json", "application/json", mediatypes.ORMB_LAYER])
@pytest.mark.parametrize("prefix", [b"", b"\xef\xbb\xbf", b" " * 100])
def test_prune_reads_a_node_position_as_a_node_whatever_its_type_or_first_bytes(
        settings: Settings, position: str, recorded: str, prefix: bytes) -> None:
    """F4: copy reads every index entry, subject and root as a node; prune read only those whose type looked
    like a node and whose first 64 bytes held a '{', and deleted the blobs of a manifest pulled through them."""
    layout = OCILayout(settings.cache_dir)
    config = _put(layout, mediatypes.ORMB_CONFIG, b'{"format":"Others"}')
    layer = _put(layout, mediatypes.ORMB_LAYER, b"weights a tag still reaches")
    inner = _put(layout, mediatypes.OCI_MANIFEST, prefix + Manifest(config, (layer,)).to_bytes())
    odd = Descriptor(recorded, inner.digest, inner.size)
    if position == "index entry":
        layout.tag(_index(layout, odd), f"{REF}:top")
    elif position == "subject":
        empty = _put(layout, "application/vnd.oci.empty.v1+json", b"{}")
        layout.tag(_put(layout, mediatypes.OCI_MANIFEST, Manifest(empty, (), subject=odd).to_bytes()), f"{REF}:top")
    else:
        layout.tag(odd, f"{REF}:top")
    api.prune(settings=settings)
    assert {config.digest, layer.digest, inner.digest} <= _blobs(settings)


def test_prune_keeps_what_an_unnamed_index_json_entry_reaches(settings: Settings) -> None:
    """Other tools (skopeo copy without a tag, umoci) write index.json entries without a ref name."""
    layout = OCILayout(settings.cache_dir)
    desc = _model(layout, b"kept by an unnamed entry")
    path = settings.cache_dir / "index.json"
    index = json.loads(path.read_text())
    index["manifests"].append(desc.to_dict())
    path.write_text(json.dumps(index))
    before = _blobs(settings)
    api.prune(settings=settings)
    assert _blobs(settings) == before


def test_prune_keeps_everything_a_broken_node_mentions(settings: Settings) -> None:
    layout = OCILayout(settings.cache_dir)
    kept = _model(layout, b"mentioned by a broken index")
    below = _reachable_from(layout, kept)
    broken = b'{"schemaVersion": 2, "mediaType": "%s", "manifests": [{"digest": "%s", "size": "not a number"}]}' % (
        mediatypes.OCI_INDEX.encode(), kept.digest.encode())
    layout.tag(_put(layout, mediatypes.OCI_INDEX, broken), f"{REF}:broken")
    garbage = _put(layout, mediatypes.ORMB_LAYER, b"nobody reaches me")
    api.prune(settings=settings)
    assert below <= _blobs(settings)
    assert garbage.digest not in _blobs(settings)


def test_prune_keeps_what_a_malformed_index_json_entry_names(settings: Settings) -> None:
    layout = OCILayout(settings.cache_dir)
    desc = _model(layout, b"named by a malformed entry")
    path = settings.cache_dir / "index.json"
    index = json.loads(path.read_text())
    index["manifests"].append({"mediaType": mediatypes.OCI_MANIFEST, "digest": desc.digest, "size": "12"})
    path.write_text(json.dumps(index))
    before = _blobs(settings)
    api.prune(settings=settings)
    assert _blobs(settings) == before


def test_prune_still_deletes_what_nothing_reaches_and_clears_leftovers(tmp_path: Path, settings: Settings) -> None:
    layout = OCILayout(settings.cache_dir)
    layout.tag(_index(layout, _model(layout, b"live")), f"{REF}:live")
    dead = _model(layout, b"dead")
    ingest = settings.cache_dir / ".ingest"
    (ingest / "blob-killed.partial").write_bytes(b"half")
    (ingest / "a-directory-somebody-made").mkdir()
    (ingest / "a-directory-somebody-made" / "f").write_bytes(b"x")
    (settings.cache_dir / ".index.json.killed.tmp").write_bytes(b"{")
    result = api.prune(settings=settings)
    assert result.blobs == 2 and dead.digest not in _blobs(settings)  # its layer and itself; the config is shared
    assert list(ingest.iterdir()) == []
    assert not (settings.cache_dir / ".index.json.killed.tmp").exists()
    assert api.prune(settings=settings).blobs == 0


# -- models -----------------------------------------------------------------------------------


def test_models_lists_an_index_and_broken_references_as_rows_and_the_rest_as_usual(
        tmp_path: Path, settings: Settings) -> None:
    api.save(make_model(tmp_path / "good", {"w.bin": b"good"}), "team/good:v1", settings=settings)
    layout = OCILayout(settings.cache_dir)
    layout.tag(_index(layout, _model(layout, b"a"), _model(layout, b"b")), f"{REF}:index")
    missing_config = _model(layout, b"no config")
    layout.delete_blob(Manifest.from_bytes(layout.blob_path(missing_config.digest).read_bytes()).config.digest)
    layout.tag(missing_config, f"{REF}:no-config")
    missing_manifest = Descriptor(mediatypes.OCI_MANIFEST, "sha256:" + "e" * 64, 10)
    layout.tag(missing_manifest, f"{REF}:no-manifest")
    big = b'{"format":"Others","description":"' + b"x" * MAX_METADATA_BLOB + b'"}'
    layout.tag(_model(layout, b"big config", config=big), f"{REF}:big-config")
    layout.tag(_model(layout, b"an image", config=b"{}", config_type="application/vnd.oci.image.config.v1+json"),
               f"{REF}:image")
    layout.tag(_put(layout, mediatypes.OCI_MANIFEST, b'{"schemaVersion": 2, "config": 7}'), f"{REF}:garbage")

    rows = {m.reference.tag: m for m in api.models(settings=settings)}
    assert rows["v1"].problem == "" and rows["v1"].format == "Others"
    assert "index of 2 manifests" in rows["index"].problem
    assert "missing" in rows["no-config"].problem
    assert "missing" in rows["no-manifest"].problem
    assert str(MAX_METADATA_BLOB) in rows["big-config"].problem
    assert "not a model" in rows["image"].problem
    assert "config" in rows["garbage"].problem
    assert set(rows) == {"v1", "index", "no-config", "no-manifest", "big-config", "image", "garbage"}


def test_models_lists_a_name_that_is_not_a_reference_as_a_row(settings: Settings) -> None:
    layout = OCILayout(settings.cache_dir)
    layout.tag(_model(layout, b"foreign"), "Not A Reference")
    (row,) = api.models(settings=settings)
    assert "not a valid reference" in row.problem
    api.remove("Not A Reference", settings=settings)  # and it can be cleaned up by the name shown
    assert api.models(settings=settings) == []


def test_inspect_and_export_of_an_index_name_its_manifests(tmp_path: Path, settings: Settings) -> None:
    layout = OCILayout(settings.cache_dir)
    first = _model(layout, craft_layer([("model/a.bin", "file", b"a")]))
    second = _model(layout, craft_layer([("model/b.bin", "file", b"b")]))
    layout.tag(_index(layout, first, second), f"{REF}:index")
    with pytest.raises(InvalidArtifactError, match="index of 2 manifests") as caught:
        api.inspect("team/m:index", settings=settings)
    assert f"{REF}@{first.digest}" in str(caught.value)
    with pytest.raises(InvalidArtifactError, match="index of 2 manifests"):
        api.export("team/m:index", tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists()
    # a member, by digest, is a model like any other
    assert api.inspect(f"team/m@{second.digest}", settings=settings).digest == second.digest
    api.export(f"team/m@{second.digest}", tmp_path / "member", settings=settings)
    assert (tmp_path / "member" / "model" / "b.bin").read_bytes() == b"b"


DEEP = "[" * 100_000 + "]" * 100_000
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
KITOPS_CONFIG = "application/vnd.kitops.modelkit.config.v1+json"
OVERFLOW = "0001-01-01T00:00:00+23:59"
# (config media type, config bytes, manifest annotations): one artifact each, every one hostile in its metadata
HOSTILE_METADATA: dict[str, tuple[str, bytes, dict[str, str]]] = {
    "ormb config nested deeply": (mediatypes.ORMB_CONFIG, DEEP.encode(), {}),
    "ormb config, a field nested deeply": (mediatypes.ORMB_CONFIG, b'{"format": "Others", "labels": ' +
                                           b"[" * 500 + b"]" * 500 + b"}", {}),
    "ormb config created out of range": (mediatypes.ORMB_CONFIG, json.dumps(
        {"format": "Others", "created": OVERFLOW}).encode(), {}),
    "ormb config with a lone surrogate": (mediatypes.ORMB_CONFIG, b'{"format": "Others", "author": "\\ud800"}', {}),
    "ormb config with a BOM": (mediatypes.ORMB_CONFIG, b'\xef\xbb\xbf{"format": "Others"}', {}),
    "ModelPack authors is a number": (MODELPACK_CONFIG, json.dumps({"descriptor": {"authors": 5}}).encode(), {}),
    "ModelPack authors is true": (MODELPACK_CONFIG, json.dumps({"descriptor": {"authors": True}}).encode(), {}),
    "ModelPack createdAt out of range": (MODELPACK_CONFIG, json.dumps(
        {"descriptor": {"createdAt": OVERFLOW}}).encode(), {}),
    "ModelPack knowledgeCutoff out of range": (MODELPACK_CONFIG, json.dumps(
        {"config": {"capabilities": {"knowledgeCutoff": OVERFLOW}}}).encode(), {}),
    "ModelPack config nested deeply": (MODELPACK_CONFIG, b'{"descriptor": ' + DEEP.encode() + b"}", {}),
    "ModelPack descriptor nested 500 deep": (MODELPACK_CONFIG, b'{"descriptor": {"x": ' + b"[" * 500 + b"]" * 500 +
                                             b"}}", {}),
    "Kitfile nested deeply": (KITOPS_CONFIG, b'{"package": ' + DEEP.encode() + b"}", {}),
    "Kitfile authors is a number": (KITOPS_CONFIG, b'{"package": {"authors": 7}}', {}),
    "Kitfile annotation nested deeply": (MODELPACK_CONFIG, b"{}", {"ml.kitops.modelkit.kitfile": DEEP}),
    "ormb metadata annotation nested deeply": (MODELPACK_CONFIG, b"{}", {"io.ormb.model.metadata+json": DEEP}),
    "ormb metadata annotation created out of range": (MODELPACK_CONFIG, b"{}", {
        "io.ormb.model.metadata+json": json.dumps({"created": OVERFLOW})}),
    "ormb metadata annotation with a lone surrogate": (MODELPACK_CONFIG, b"{}", {
        "io.ormb.model.metadata+json": '{"author": "\\udfff"}'}),
}


def test_models_inspect_and_export_survive_any_metadata(tmp_path: Path, settings: Settings,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """F7: one artifact with hostile metadata made 'ormb models' exit 70 for the whole cache (RecursionError,
    OverflowError, TypeError); 'inspect' and 'export' of it too.  Each is now a model like any other."""
    from ormb.cli.main import main

    api.save(make_model(tmp_path / "good", {"w.bin": b"good"}), "team/good:v1", settings=settings)
    layout = OCILayout(settings.cache_dir)
    layer = _put(layout, mediatypes.ORMB_LAYER, craft_layer([("model/w.bin", "file", b"w")]))
    tags = {}
    for i, (case, (config_type, config, notes)) in enumerate(HOSTILE_METADATA.items()):
        manifest = Manifest(_put(layout, config_type, config), (layer,), annotations=notes)
        layout.tag(_put(layout, mediatypes.OCI_MANIFEST, manifest.to_bytes()), f"{REF}:case{i}")
        tags[f"case{i}"] = case
    rows = {m.reference.tag: m for m in api.models(settings=settings)}
    assert set(rows) == {"v1", *tags}
    assert rows["v1"].problem == ""
    assert main(["models"]) == 0
    for tag, case in tags.items():
        capsys.readouterr()
        for argv in (["inspect", f"team/m:{tag}"], ["inspect", "--json", f"team/m:{tag}"],
                     ["export", f"team/m:{tag}", "-d", str(tmp_path / tag)]):
            code = main(argv)
            err = capsys.readouterr().err
            assert code in (0, 4) and "internal error" not in err, f"{case}: {' '.join(argv[:2])}: {err}"
