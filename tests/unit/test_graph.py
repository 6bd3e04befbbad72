"""One successors function (ormb.oci.graph) for every walk of the manifest graph."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ormb.errors import InvalidArtifactError
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor
from ormb.oci.graph import digests_mentioned, parse_node, successors

D = [f"sha256:{c * 64}" for c in "0123456789abcdef"]


def desc(i: int, media_type: str = "application/octet-stream") -> dict[str, object]:
    return {"mediaType": media_type, "digest": D[i], "size": i}


def manifest(**extra: object) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST, "config": desc(1),
                       "layers": [desc(2), desc(3)], **extra}).encode()


def test_a_manifest_has_subject_config_and_layers_in_that_order() -> None:
    data = manifest(subject=desc(9, mediatypes.OCI_MANIFEST))
    found = successors(Descriptor(mediatypes.OCI_MANIFEST, D[0], len(data)), data)
    assert [d.digest for d in found] == [D[9], D[1], D[2], D[3]]


def test_an_index_has_its_manifests() -> None:
    data = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX,
                       "manifests": [desc(4, mediatypes.OCI_MANIFEST), desc(5, mediatypes.DOCKER_MANIFEST)]}).encode()
    found = successors(Descriptor(mediatypes.OCI_INDEX, D[0], len(data)), data)
    assert [d.digest for d in found] == [D[4], D[5]]


def test_a_manifest_recorded_as_plain_json_is_still_followed() -> None:
    data = json.dumps({"schemaVersion": 2, "config": desc(1), "layers": [desc(2)]}).encode()
    assert [d.digest for d in successors(Descriptor("application/json", D[0], len(data)), data)] == [D[1], D[2]]
    index = json.dumps({"schemaVersion": 2, "manifests": [desc(4)]}).encode()
    assert parse_node(index, "application/json").kind == "index"


def test_blobs_that_are_not_nodes_have_no_successors() -> None:
    assert successors(Descriptor(mediatypes.ORMB_CONFIG, D[0], 2), b"{}") == ()
    assert successors(Descriptor("application/json", D[0], 2), b'{"format":"ONNX"}') == ()
    assert successors(Descriptor("application/json", D[0], 4), b"\xff\xfe") == ()


@pytest.mark.parametrize("data", [
    b"[]", b"{", b'{"schemaVersion": 1}', b'{"schemaVersion": true, "config": {}, "layers": []}',
    json.dumps({"schemaVersion": 2, "mediaType": 7, "config": desc(1), "layers": []}).encode(),
    json.dumps({"schemaVersion": 2, "config": desc(1), "layers": {}}).encode(),
    json.dumps({"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:zz", "size": 1},
                "layers": []}).encode(),
    json.dumps({"schemaVersion": 2, "config": desc(1), "layers": [], "artifactType": ["x"]}).encode(),
    json.dumps({"schemaVersion": 2, "config": desc(1), "layers": [], "annotations": {"a": 1}}).encode(),
    b'{"schemaVersion": 2, "layers": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
])
def test_a_malformed_manifest_is_an_invalid_artifact_never_another_exception(data: bytes) -> None:
    with pytest.raises(InvalidArtifactError):
        successors(Descriptor(mediatypes.OCI_MANIFEST, D[0], len(data)), data)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["schemaVersion", "mediaType", "config", "layers", "manifests", "subject",
                                         "digest", "size", "annotations", "artifactType"]), inner, max_size=4),
                    max_leaves=20))
def test_any_json_either_parses_or_raises_invalid_artifact(value: object) -> None:
    data = json.dumps(value).encode()
    for media_type in (mediatypes.OCI_MANIFEST, mediatypes.OCI_INDEX, "application/json"):
        try:
            successors(Descriptor(media_type, D[0], len(data)), data)
        except InvalidArtifactError:
            pass


def test_digests_mentioned_finds_every_digest_even_in_a_broken_document() -> None:
    broken = manifest()[:-20] + b"... " + D[7].encode()
    assert {D[1], D[2], D[7]} <= digests_mentioned(broken)
    assert digests_mentioned(b"sha256:" + b"a" * 65) == set()
