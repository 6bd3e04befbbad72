"""``ormb pull`` of an image index (a multi-platform image, an index of model variants), then every
cache command behaves as the README says, and skopeo and umoci still read the cache."""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import make_model
from ormb import api
from ormb.cli.main import main
from ormb.config import Settings
from ormb.content.layout import OCILayout

pytestmark = pytest.mark.integration
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:  # the test command installs it: missing is a failure, never a skip
        pytest.fail(f"{name} is not installed; run scripts/test, which installs it")
    return path


def _put_index(host: str, repo: str, tag: str, members: list[dict[str, Any]]) -> bytes:
    data = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": members}).encode()
    conn = http.client.HTTPConnection(host)
    conn.request("PUT", f"/v2/{repo}/manifests/{tag}", body=data, headers={"Content-Type": OCI_INDEX})
    response = conn.getresponse()
    assert response.status == 201, response.read()
    conn.close()
    return data


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_pull_of_an_index_then_models_inspect_export_prune_skopeo_umoci(
        tmp_path: Path, settings: Settings, registry: Any, capsys: pytest.CaptureFixture[str]) -> None:
    repo = "variants/m"
    pusher = Settings(home=tmp_path / "pusher", default_registry="localhost:5000")
    members = []
    for variant in ("fp16", "int8"):
        ref = f"{registry.host}/{repo}:{variant}"
        saved = api.save(make_model(tmp_path / variant, {f"{variant}.bin": variant.encode() * 100}), ref,
                         settings=pusher)
        api.push(ref, settings=pusher)
        raw = OCILayout(pusher.cache_dir).blob_path(saved.digest).read_bytes()
        members.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": saved.digest,
                        "size": len(raw), "annotations": {"variant": variant}})
    index = _put_index(registry.host, repo, "multi", members)
    index_digest = "sha256:" + hashlib.sha256(index).hexdigest()
    multi = f"{registry.host}/{repo}:multi"

    code, out, err = _run(capsys, "pull", multi)
    assert code == 0, err
    assert f"digest: {index_digest}" in out

    # models: the index is its own row saying what it is; the cache's other models are listed as usual
    api.save(make_model(tmp_path / "plain", {"w.bin": b"plain"}), "team/plain:v1", settings=settings)
    code, out, err = _run(capsys, "models")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split()[-1] == "PROBLEM"
    by_tag = {row.split()[1]: row for row in rows}
    assert "an index of 2 manifests, not one model" in by_tag["multi"]
    assert by_tag["v1"].split()[3] == "Others"

    # inspect and export name the members; a member by digest is a model like any other
    code, _, err = _run(capsys, "inspect", multi)
    assert code == 4 and f"{registry.host}/{repo}@{members[0]['digest']}" in err
    code, _, err = _run(capsys, "export", multi, "-d", str(tmp_path / "out"))
    assert code == 4 and not (tmp_path / "out").exists()
    code, _, err = _run(capsys, "export", f"{registry.host}/{repo}@{members[1]['digest']}", "-d",
                        str(tmp_path / "member"))
    assert code == 0, err
    assert (tmp_path / "member" / "model" / "int8.bin").read_bytes() == b"int8" * 100

    # prune keeps every blob the index reaches
    cache = OCILayout(settings.cache_dir)
    before = set(cache.blob_digests())
    code, out, _ = _run(capsys, "prune")
    assert code == 0 and out.startswith("Deleted 0 blobs")
    assert set(cache.blob_digests()) == before

    # other OCI tools read the cache: the index as it was pulled, every member copied along
    raw = subprocess.run([_tool("skopeo"), "inspect", "--raw", f"oci:{settings.cache_dir}:{multi}"],
                         check=True, capture_output=True).stdout
    assert raw == index
    subprocess.run([_tool("skopeo"), "copy", "--all", f"oci:{settings.cache_dir}:{multi}",
                    f"oci:{tmp_path / 'copied'}:multi"], check=True, capture_output=True)
    copied = OCILayout(tmp_path / "copied")
    assert {m["digest"] for m in members} <= set(copied.blob_digests())
    listed = subprocess.run([_tool("umoci"), "ls", "--layout", str(settings.cache_dir)], check=True,
                            capture_output=True, text=True).stdout.split()
    assert multi in listed and "localhost:5000/team/plain:v1" in listed

    # removing the index frees exactly what only it reached
    code, _, _ = _run(capsys, "rm", multi)
    assert code == 0
    code, out, _ = _run(capsys, "prune")
    assert code == 0
    left = set(cache.blob_digests())
    assert index_digest not in left and not {m["digest"] for m in members} & left
    assert api.inspect("team/plain:v1", settings=settings).metadata.format == "Others"  # the rest untouched
