"""The embedded registry against the OCI distribution spec v1.1, endpoint by endpoint, with raw HTTP.

These include cases CNCF distribution 2.8 gets wrong (out-of-order chunks, the referrers API),
so they run against ``ormb registry serve`` only.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from registries import USERS, EmbeddedRegistry

pytestmark = pytest.mark.integration
EMPTY = b"{}"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class Client:
    def __init__(self, host: str, auth: str | None = None) -> None:
        self.host, self.auth = host, auth

    def __call__(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = http.client.HTTPConnection(self.host, timeout=30)
        headers = dict(headers or {})
        if self.auth:
            headers.setdefault("Authorization", self.auth)
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, response.headers, data

    def upload(self, repo: str, data: bytes) -> str:
        digest = sha(data)
        status, headers, _ = self("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data,
                                  {"Content-Type": "application/octet-stream"})
        assert status == 201, status
        return digest

    def manifest(self, repo: str, ref: str, data: bytes, media_type: str = OCI_MANIFEST) -> tuple[int, Any, bytes]:
        return self("PUT", f"/v2/{repo}/manifests/{ref}", data, {"Content-Type": media_type})


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def code(body: bytes) -> str:
    return str(json.loads(body)["errors"][0]["code"])


def image(client: Client, repo: str, layer: bytes, **extra: Any) -> bytes:
    config = client.upload(repo, EMPTY)
    digest = client.upload(repo, layer)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
                "layers": [{"mediaType": "application/octet-stream", "digest": digest, "size": len(layer)}], **extra}
    return json.dumps(manifest).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRegistry]:
    reg = EmbeddedRegistry(tmp_path_factory.mktemp("protocol"))
    yield reg
    reg.stop()


@pytest.fixture
def c(server: EmbeddedRegistry) -> Client:
    return Client(server.host)


def test_api_root(c: Client) -> None:
    status, headers, body = c("GET", "/v2/")
    assert (status, body, headers["Docker-Distribution-API-Version"]) == (200, b"{}", "registry/2.0")


def test_monolithic_upload_and_blob_reads_with_ranges(c: Client) -> None:
    data = os.urandom(1000)
    status, headers, _ = c("POST", "/v2/proto/mono/blobs/uploads/")
    assert status == 202 and headers["Location"].startswith("/v2/proto/mono/blobs/uploads/")
    status, headers, _ = c("PUT", f"{headers['Location']}?digest={sha(data)}", data,
                           {"Content-Type": "application/octet-stream"})
    assert status == 201
    assert headers["Docker-Content-Digest"] == sha(data)
    assert headers["Location"] == f"/v2/proto/mono/blobs/{sha(data)}"
    status, headers, body = c("HEAD", f"/v2/proto/mono/blobs/{sha(data)}")
    assert (status, headers["Content-Length"], body) == (200, "1000", b"")
    assert c("GET", f"/v2/proto/mono/blobs/{sha(data)}")[2] == data
    status, headers, body = c("GET", f"/v2/proto/mono/blobs/{sha(data)}", headers={"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, data[10:20], "bytes 10-19/1000")
    status, _, body = c("GET", f"/v2/proto/mono/blobs/{sha(data)}", headers={"Range": "bytes=990-"})
    assert (status, body) == (206, data[990:])
    status, _, body = c("GET", f"/v2/proto/mono/blobs/{sha(data)}", headers={"Range": "bytes=-5"})
    assert (status, body) == (206, data[-5:])
    status, headers, _ = c("GET", f"/v2/proto/mono/blobs/{sha(data)}", headers={"Range": "bytes=5000-"})
    assert status == 416 and headers["Content-Range"] == "bytes */1000"


def test_single_request_upload_and_sha512(c: Client) -> None:
    data = b"single post"
    assert c.upload("proto/single", data) == sha(data)
    digest512 = "sha512:" + hashlib.sha512(data).hexdigest()
    status, headers, _ = c("POST", f"/v2/proto/single/blobs/uploads/?digest={digest512}", data)
    assert status == 201 and headers["Docker-Content-Digest"] == digest512
    assert c("GET", f"/v2/proto/single/blobs/{digest512}")[2] == data


def test_wrong_digest_is_refused_and_nothing_is_kept(c: Client) -> None:
    status, headers, _ = c("POST", "/v2/proto/wrong/blobs/uploads/")
    location = headers["Location"]
    wrong = sha(b"something else")
    status, _, body = c("PUT", f"{location}?digest={wrong}", b"the real bytes")
    assert (status, code(body)) == (400, "DIGEST_INVALID")
    assert code(c("GET", location)[2]) == "BLOB_UPLOAD_UNKNOWN"
    assert c("HEAD", f"/v2/proto/wrong/blobs/{wrong}")[0] == 404
    assert c("HEAD", f"/v2/proto/wrong/blobs/{sha(b'the real bytes')}")[0] == 404


@pytest.mark.parametrize("bad", ["sha256:abc", "md5:" + "a" * 32, "sha256:" + "A" * 64, "nonsense"])
def test_invalid_digests(c: Client, bad: str) -> None:
    status, _, body = c("GET", f"/v2/proto/x/blobs/{bad}")
    assert (status, code(body)) == (400, "DIGEST_INVALID")


def test_chunked_upload_with_out_of_order_chunk_status_and_cancel(c: Client) -> None:
    data = os.urandom(30)
    _, headers, _ = c("POST", "/v2/proto/chunked/blobs/uploads/")
    location = headers["Location"]
    status, headers, _ = c("PATCH", location, data[:10], {"Content-Range": "0-9", "Content-Type": "application/octet-stream"})
    assert (status, headers["Range"]) == (202, "0-9")
    location = headers["Location"]
    status, headers, body = c("PATCH", location, data[20:], {"Content-Range": "20-29"})
    assert (status, code(body), headers["Range"]) == (416, "BLOB_UPLOAD_INVALID", "0-9")
    status, headers, _ = c("GET", location)
    assert (status, headers["Range"]) == (204, "0-9")
    status, _, body = c("PATCH", location, data[10:15], {"Content-Range": "10-19"})  # length does not match
    assert (status, code(body)) == (400, "BLOB_UPLOAD_INVALID")
    assert c("PATCH", location, data[10:20], {"Content-Range": "10-19"})[0] == 202
    status, headers, _ = c("PUT", f"{location}?digest={sha(data)}", data[20:])  # the last chunk with the PUT
    assert status == 201
    assert c("GET", f"/v2/proto/chunked/blobs/{sha(data)}")[2] == data
    _, headers, _ = c("POST", "/v2/proto/chunked/blobs/uploads/")
    assert c("DELETE", headers["Location"])[0] == 204
    status, _, body = c("PATCH", headers["Location"], b"x")
    assert (status, code(body)) == (404, "BLOB_UPLOAD_UNKNOWN")


def test_streamed_patch_with_chunked_transfer_encoding(c: Client, server: EmbeddedRegistry) -> None:
    data = os.urandom(200_000)
    _, headers, _ = c("POST", "/v2/proto/stream/blobs/uploads/")
    conn = http.client.HTTPConnection(server.host, timeout=30)
    conn.request("PATCH", headers["Location"], body=iter([data[:70_000], data[70_000:]]),
                 headers={"Transfer-Encoding": "chunked"}, encode_chunked=True)
    response = conn.getresponse()
    response.read()
    assert (response.status, response.headers["Range"]) == (202, f"0-{len(data) - 1}")
    conn.close()
    assert c("PUT", f"{response.headers['Location']}?digest={sha(data)}")[0] == 201


def test_cross_repository_mount_and_fallback(c: Client) -> None:
    digest = c.upload("proto/mount-src", b"shared weights")
    status, headers, _ = c("POST", f"/v2/proto/mount-dst/blobs/uploads/?mount={digest}&from=proto/mount-src")
    assert (status, headers["Location"]) == (201, f"/v2/proto/mount-dst/blobs/{digest}")
    assert c("GET", f"/v2/proto/mount-dst/blobs/{digest}")[2] == b"shared weights"
    status, headers, _ = c("POST", f"/v2/proto/mount-dst/blobs/uploads/?mount={digest}&from=proto/nowhere")
    assert status == 202 and "/blobs/uploads/" in headers["Location"]  # a normal upload instead


def test_manifests_put_get_head_and_their_errors(c: Client) -> None:
    data = image(c, "proto/manifests", b"layer")
    status, headers, _ = c.manifest("proto/manifests", "v1", data)
    assert (status, headers["Docker-Content-Digest"]) == (201, sha(data))
    assert headers["Location"] == f"/v2/proto/manifests/manifests/{sha(data)}"
    for ref in ("v1", sha(data)):
        status, headers, body = c("GET", f"/v2/proto/manifests/manifests/{ref}")
        assert (status, body, headers["Content-Type"], headers["Docker-Content-Digest"]) == \
            (200, data, OCI_MANIFEST, sha(data))
    status, headers, body = c("HEAD", "/v2/proto/manifests/manifests/v1")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(data)))
    status, _, body = c("GET", "/v2/proto/manifests/manifests/nope")
    assert (status, code(body)) == (404, "MANIFEST_UNKNOWN")
    status, _, body = c.manifest("proto/manifests", sha(b"other"), data)
    assert (status, code(body)) == (400, "DIGEST_INVALID")
    missing = json.loads(data)
    missing["layers"][0]["digest"] = sha(b"never uploaded")
    status, _, body = c.manifest("proto/manifests", "v2", json.dumps(missing).encode())
    assert (status, code(body)) == (400, "MANIFEST_BLOB_UNKNOWN")
    status, _, body = c.manifest("proto/manifests", "v3", b"{not json")
    assert (status, code(body)) == (400, "MANIFEST_INVALID")
    status, _, body = c.manifest("proto/manifests", "v3", json.dumps({"schemaVersion": 1}).encode())
    assert (status, code(body)) == (400, "MANIFEST_INVALID")
    status, _, body = c.manifest("proto/manifests", "v4", b" " * (5 << 20))
    assert (status, code(body)) == (413, "SIZE_INVALID")
    status, _, body = c.manifest("proto/manifests", "bad!tag", data)
    assert (status, code(body)) == (400, "MANIFEST_INVALID")


def test_index_and_docker_media_types(c: Client) -> None:
    data = image(c, "proto/index", b"arch layer")
    c.manifest("proto/index", sha(data), data)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha(data), "size": len(data)}]}
    assert c.manifest("proto/index", "multi", json.dumps(index).encode(), OCI_INDEX)[0] == 201
    index["manifests"][0]["digest"] = sha(b"unknown manifest")
    status, _, body = c.manifest("proto/index", "bad", json.dumps(index).encode(), OCI_INDEX)
    assert (status, code(body)) == (400, "MANIFEST_BLOB_UNKNOWN")
    docker = json.loads(data)
    docker["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
    docker_bytes = json.dumps(docker).encode()
    assert c.manifest("proto/index", "docker", docker_bytes, docker["mediaType"])[0] == 201
    assert c("GET", "/v2/proto/index/manifests/docker")[1]["Content-Type"] == docker["mediaType"]


def test_deletes_never_break_a_manifest_that_shares_blobs(c: Client) -> None:
    shared = os.urandom(100)
    first = image(c, "proto/delete", shared, annotations={"n": "1"})
    second = image(c, "proto/delete", shared, annotations={"n": "2"})
    c.manifest("proto/delete", "one", first)
    c.manifest("proto/delete", "two", second)
    assert c("DELETE", f"/v2/proto/delete/manifests/{sha(first)}")[0] == 202
    status, _, body = c("GET", "/v2/proto/delete/manifests/one")
    assert (status, code(body)) == (404, "MANIFEST_UNKNOWN")
    assert c("GET", "/v2/proto/delete/manifests/two")[2] == second
    assert c("GET", f"/v2/proto/delete/blobs/{sha(shared)}")[2] == shared
    assert c("DELETE", "/v2/proto/delete/manifests/two")[0] == 202  # a tag: only the tag goes
    assert c("GET", f"/v2/proto/delete/manifests/{sha(second)}")[0] == 200
    assert c("DELETE", f"/v2/proto/delete/blobs/{sha(shared)}")[0] == 202
    status, _, body = c("GET", f"/v2/proto/delete/blobs/{sha(shared)}")
    assert (status, code(body)) == (404, "BLOB_UNKNOWN")


def test_subject_and_referrers_with_artifact_type_filter(c: Client) -> None:
    subject = image(c, "proto/refs", b"the model")
    c.manifest("proto/refs", "v1", subject)
    subject_desc = {"mediaType": OCI_MANIFEST, "digest": sha(subject), "size": len(subject)}
    signature = image(c, "proto/refs", b"a signature", artifactType="application/vnd.example.sig",
                      subject=subject_desc, annotations={"who": "alice"})
    sbom = image(c, "proto/refs", b"an sbom", artifactType="application/vnd.example.sbom", subject=subject_desc)
    status, headers, _ = c.manifest("proto/refs", sha(signature), signature)
    assert (status, headers["OCI-Subject"]) == (201, sha(subject))
    c.manifest("proto/refs", sha(sbom), sbom)
    status, headers, body = c("GET", f"/v2/proto/refs/referrers/{sha(subject)}")
    index = json.loads(body)
    assert (status, headers["Content-Type"], index["mediaType"]) == (200, OCI_INDEX, OCI_INDEX)
    assert {(m["digest"], m["artifactType"]) for m in index["manifests"]} == {
        (sha(signature), "application/vnd.example.sig"), (sha(sbom), "application/vnd.example.sbom")}
    assert next(m for m in index["manifests"] if m["digest"] == sha(signature))["annotations"] == {"who": "alice"}
    status, headers, body = c("GET", f"/v2/proto/refs/referrers/{sha(subject)}?artifactType=application/vnd.example.sig")
    assert headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["digest"] for m in json.loads(body)["manifests"]] == [sha(signature)]
    status, _, body = c("GET", f"/v2/proto/refs/referrers/{sha(b'no such subject')}")
    assert (status, json.loads(body)["manifests"]) == (200, [])


def test_tag_and_catalog_pagination(c: Client) -> None:
    data = image(c, "proto/paged", b"p")
    for tag in ("a", "b", "c", "d", "e"):
        c.manifest("proto/paged", tag, data)
    status, headers, body = c("GET", "/v2/proto/paged/tags/list?n=2")
    assert (status, json.loads(body)) == (200, {"name": "proto/paged", "tags": ["a", "b"]})
    assert headers["Link"] == '</v2/proto/paged/tags/list?n=2&last=b>; rel="next"'
    _, headers, body = c("GET", "/v2/proto/paged/tags/list?n=2&last=b")
    assert json.loads(body)["tags"] == ["c", "d"]
    _, headers, body = c("GET", "/v2/proto/paged/tags/list?n=2&last=d")
    assert json.loads(body)["tags"] == ["e"] and "Link" not in headers
    assert json.loads(c("GET", "/v2/proto/paged/tags/list")[2])["tags"] == ["a", "b", "c", "d", "e"]
    status, _, body = c("GET", "/v2/proto/never/tags/list")
    assert (status, code(body)) == (404, "NAME_UNKNOWN")
    status, headers, body = c("GET", "/v2/_catalog?n=1")
    assert status == 200 and len(json.loads(body)["repositories"]) == 1 and 'rel="next"' in headers["Link"]


@pytest.mark.parametrize("name", ["../../etc", "proto/../../x", "UPPER/case", "a" * 256, "proto//double", "-bad"])
def test_repository_names_are_checked_before_touching_the_disk(c: Client, server: EmbeddedRegistry, name: str) -> None:
    status, _, body = c("POST", f"/v2/{name}/blobs/uploads/")
    assert (status, code(body)) == (400, "NAME_INVALID")
    assert not (server.directory.parent / "etc").exists()


def test_unsupported_methods(c: Client) -> None:
    status, headers, body = c("PATCH", "/v2/proto/x/manifests/v1", b"x")
    assert (status, code(body)) == (405, "UNSUPPORTED") and "GET" in headers["Allow"]


def _raw(server: EmbeddedRegistry, request: bytes, wait_for_answer: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        if not wait_for_answer:
            sock.shutdown(socket.SHUT_WR)
        return sock.recv(65536)


def test_a_client_that_disconnects_mid_upload_leaves_the_session_as_it_was(c: Client, server: EmbeddedRegistry) -> None:
    _, headers, _ = c("POST", "/v2/proto/gone/blobs/uploads/")
    location = headers["Location"]
    assert c("PATCH", location, b"0123456789", {"Content-Range": "0-9"})[0] == 202
    # announce 1000 bytes, send 300, hang up
    _raw(server, f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nContent-Range: 10-1009\r\n\r\n"
         .encode() + b"x" * 300)
    status, headers, _ = c("GET", location)
    assert (status, headers["Range"]) == (204, "0-9")
    data = b"0123456789" + b"y" * 5
    assert c("PUT", f"{location}?digest={sha(data)}", b"y" * 5)[0] == 201


def test_a_wrong_content_length_commits_nothing(c: Client, server: EmbeddedRegistry) -> None:
    data = b"short body"
    _raw(server, f"POST /v2/proto/length/blobs/uploads/?digest={sha(data)} HTTP/1.1\r\nHost: x\r\n"
         f"Content-Length: {len(data) + 50}\r\n\r\n".encode() + data)
    assert c("HEAD", f"/v2/proto/length/blobs/{sha(data)}")[0] == 404
    status, _, body = c("POST", f"/v2/proto/length/blobs/uploads/?digest={sha(data)}", data + b"!!")
    assert (status, code(body)) == (400, "DIGEST_INVALID")


# -- auth ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRegistry]:
    reg = EmbeddedRegistry(tmp_path_factory.mktemp("protocol-auth"), auth="bearer")
    yield reg
    reg.stop()


def _token(host: str, user: str | None, scope: str) -> str:
    auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()} if user else {}
    status, _, body = Client(host)("GET", f"/token?service=ormb-registry&scope={scope}", headers=auth)
    assert status == 200
    return "Bearer " + json.loads(body)["token"]


def test_auth_challenges_denials_and_tokens(secured: EmbeddedRegistry) -> None:
    anonymous = Client(secured.host)
    status, headers, body = anonymous("GET", "/v2/alice/m/tags/list")
    assert (status, code(body)) == (401, "UNAUTHORIZED")
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer realm="http://{secured.host}/token"')
    assert 'service="ormb-registry"' in challenge and 'scope="repository:alice/m:pull"' in challenge
    push_scope = "repository:alice/m:pull,push"
    alice = Client(secured.host, _token(secured.host, "alice", push_scope))
    image_bytes = image(alice, "alice/m", b"alice's model")
    assert alice.manifest("alice/m", "v1", image_bytes)[0] == 201
    bob = Client(secured.host, _token(secured.host, "bob", push_scope))  # granted pull only
    assert bob("GET", "/v2/alice/m/manifests/v1")[0] == 200
    status, _, body = bob("POST", "/v2/alice/m/blobs/uploads/")
    assert (status, code(body)) == (403, "DENIED")
    pull_only = Client(secured.host, _token(secured.host, "alice", "repository:alice/m:pull"))
    status, headers, body = pull_only("POST", "/v2/alice/m/blobs/uploads/")  # allowed, but not by this token
    assert status == 401 and 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    stranger = Client(secured.host, _token(secured.host, None, "repository:alice/m:pull"))
    status, _, body = stranger("GET", "/v2/alice/m/manifests/v1")
    assert (status, code(body)) == (401, "UNAUTHORIZED")
    assert b"alice's model" not in body
    wrong = "Basic " + base64.b64encode(b"alice:wrong").decode()
    assert Client(secured.host)("GET", "/token?scope=repository:alice/m:pull", headers={"Authorization": wrong})[0] == 401
    assert Client(secured.host, "Bearer forged.token")("GET", "/v2/alice/m/manifests/v1")[0] == 401


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_anonymous_pull(tmp_path: Path, scheme: str) -> None:
    """Anonymous users pull, never push: Basic with ``--anonymous-pull`` (no policy), Bearer with the
    policy's ``anonymous`` rule (a policy and the flag together are refused: test_registry_access.py)."""
    registry = EmbeddedRegistry(tmp_path / scheme, auth=scheme, anonymous_pull=True)
    try:
        alice = Client(registry.host, "Basic " + base64.b64encode(f"alice:{USERS['alice']}".encode()).decode())
        if scheme == "bearer":
            alice = Client(registry.host, _token(registry.host, "alice", "repository:alice/open:pull,push"))
        data = image(alice, "alice/open", b"for everyone")
        assert alice.manifest("alice/open", "v1", data)[0] == 201
        anonymous = Client(registry.host)
        if scheme == "bearer":
            anonymous = Client(registry.host, _token(registry.host, None, "repository:alice/open:pull,push"))
        assert anonymous("GET", "/v2/alice/open/manifests/v1")[2] == data
        status, _, body = anonymous("POST", "/v2/alice/open/blobs/uploads/")
        assert (status, code(body)) == (401, "UNAUTHORIZED")
        assert Client(registry.host)("GET", "/")[0] == 200  # the catalog page too
    finally:
        registry.stop()
