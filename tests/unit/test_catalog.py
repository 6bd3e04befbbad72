"""The web catalog's pages in-process (no server): one size per model, the names the Copy button
copies, the model card and licence, and what other tools' artifacts show.

The same pages run under gunicorn in tests/browser/test_catalog.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_registry_app import OCI_MANIFEST, WSGIClient, sha

from conftest import craft_layer
from ormb.server.access import AccessControl
from ormb.server.app import create_app
from ormb.server.store import Store
from ormb.units import human_size

ORMB_CONFIG = "application/vnd.caicloud.model.config.v1alpha1+json"


@pytest.fixture
def c(tmp_path: Path) -> WSGIClient:
    return WSGIClient(create_app(Store(tmp_path / "registry"), AccessControl()))


def push(c: WSGIClient, repo: str, tag: str, config: tuple[str, bytes], layers: list[tuple[str, bytes, dict[str, str]]],
         *, artifact_type: str | None = None, sizes: list[int] | None = None) -> dict[str, Any]:
    """Push an artifact as any tool would (``sizes``: declare these layer sizes instead of the real ones);
    returns the manifest."""
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type:
        manifest["artifactType"] = artifact_type
    manifest["config"] = {"mediaType": config[0], "digest": c.upload(repo, config[1]), "size": len(config[1])}
    manifest["layers"] = []
    for i, (media_type, data, notes) in enumerate(layers):
        entry: dict[str, Any] = {"mediaType": media_type, "digest": c.upload(repo, data),
                                 "size": sizes[i] if sizes else len(data)}
        if notes:
            entry["annotations"] = notes
        manifest["layers"].append(entry)
    status, _, body = c.manifest(repo, tag, json.dumps(manifest).encode())
    assert status == 201, body
    return manifest


def page(c: WSGIClient, target: str, headers: dict[str, str] | None = None) -> str:
    status, _, body = c("GET", target, headers=headers)
    assert status == 200, (status, body[:500])
    return body.decode()


SIZE = r"(\d+(?:\.\d)? (?:B|KiB|MiB|GiB|TiB|PiB))"


def shown_sizes(c: WSGIClient, repo: str, tag: str) -> tuple[str, str]:
    """(the size on the repository page's row for ``tag``, the size on the model page)."""
    repository = page(c, f"/repository?name={repo}")
    row = next(r for r in repository.split("<tr") if f"ref={tag}\"" in r)
    model = page(c, f"/model?name={repo}&ref={tag}")
    found_row = re.search(rf"<td[^>]*>{SIZE}</td>", row)
    found_model = re.search(rf"<dt>Size</dt>\s*<dd[^>]*>{SIZE}</dd>", model)
    assert found_row and found_model, (row, model[:3000])
    return found_row.group(1), found_model.group(1)


# -- one size -----------------------------------------------------------------------------------

def test_the_repository_page_and_the_model_page_show_one_size_the_layers_sum(c: WSGIClient) -> None:
    """The newcomer's 200.7 vs 200.0 KiB: the repository page added the config (and counted a layer
    pushed twice once); ormb inspect and ormb models count the layers."""
    layer = craft_layer([("model/weights.bin", "file", os.urandom(204_000))])  # ~200 KiB
    config = json.dumps({"format": "Others", "description": "d" * 700}).encode()
    push(c, "t/size", "v1", (ORMB_CONFIG, config), [("application/tar+gzip", layer, {})])
    assert shown_sizes(c, "t/size", "v1") == (human_size(len(layer)),) * 2


@given(st.lists(st.integers(0, (1 << 63) - 1), max_size=6), st.lists(st.integers(0, 5), max_size=6))
def test_any_layers_give_one_size_on_both_pages(declared: list[int], repeats: list[int]) -> None:
    """Any declared sizes (registries do not check them against the blobs; ormb inspect adds them up
    as declared), any layer pushed several times: both pages show human_size of the sum."""
    import tempfile

    blobs = [b"layer %d" % (r % 3) for r in repeats[: len(declared)]] + [b"x"] * (len(declared) - len(repeats))
    with tempfile.TemporaryDirectory() as root:
        client = WSGIClient(create_app(Store(Path(root)), AccessControl()))
        layers = [("application/vnd.cncf.model.weight.v1.raw", data, {"org.cncf.model.filepath": f"w{i}.bin"})
                  for i, data in enumerate(blobs)]
        config = json.dumps({"descriptor": {"name": "m"}, "config": {},
                             "modelfs": {"type": "layers", "diffIds": []}}).encode()
        push(client, "t/any", "v1", ("application/vnd.cncf.model.config.v1+json", config), layers,
             artifact_type="application/vnd.cncf.model.manifest.v1+json", sizes=declared)
        assert shown_sizes(client, "t/any", "v1") == (human_size(sum(declared)),) * 2


def test_an_index_has_no_size_of_its_own_on_either_page(c: WSGIClient) -> None:
    member = push(c, "t/idx", "m1", (ORMB_CONFIG, b'{"format":"Others"}'), [("application/tar+gzip", b"x" * 5000, {})])
    data = json.dumps(member).encode()
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha(data), "size": len(data)}]}
    assert c.manifest("t/idx", "multi", json.dumps(index).encode(), index["mediaType"])[0] == 201
    repository = page(c, "/repository?name=t/idx")
    row = next(r for r in repository.split("<tr") if 'ref=multi"' in r)
    assert re.search(SIZE, row) is None and "<td>-</td>" in row
    model = page(c, "/model?name=t/idx&ref=multi")
    assert re.search(rf"<dt>Size</dt>\s*<dd[^>]*>{SIZE}</dd>", model) is None


def test_sizes_of_manifests_pushed_before_the_size_was_recorded_are_filled_in_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "registry")
    client = WSGIClient(create_app(store, AccessControl()))
    layer = os.urandom(3000)
    push(client, "t/old", "v1", (ORMB_CONFIG, b'{"format":"Others"}'), [("application/tar+gzip", layer, {})])
    store.db.execute("ALTER TABLE manifests DROP COLUMN layers_size")  # the database of an older ormb
    reopened = WSGIClient(create_app(Store(tmp_path / "registry"), AccessControl()))
    assert shown_sizes(reopened, "t/old", "v1") == (human_size(len(layer)),) * 2


def test_a_size_beyond_int64_is_refused_as_distribution_does(c: WSGIClient) -> None:
    """The image spec's size is an int64; distribution (Go) refuses more.  Without the bound a
    declared size of any length reached the database and the pages' arithmetic."""
    layer = c.upload("t/huge", b"x")
    config = c.upload("t/huge", b"{}")
    for size, status in (((1 << 63) - 1, 201), (1 << 63, 400), (10 ** 4000, 400)):
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
                    "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": size}]}
        answer, _, body = c.manifest("t/huge", "v1", json.dumps(manifest).encode())
        assert answer == status, body
        assert status == 201 or json.loads(body)["errors"][0]["code"] == "MANIFEST_INVALID"
