"""The registry application in-process: every endpoint and its errors, with no server and no socket.

``create_app`` returns a WSGI callable; :class:`WSGIClient` calls it the way a server would.
The same application runs under gunicorn in the integration tests.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ormb.server.access import AccessControl, Rule
from ormb.server.app import create_app
from ormb.server.store import Store

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class WSGIClient:
    def __init__(self, app: Any, auth: str | None = None) -> None:
        self.app, self.auth = app, auth

    def __call__(self, method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                 chunked: bool = False, scheme: str = "http") -> tuple[int, dict[str, str], bytes]:
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "5000", "wsgi.url_scheme": scheme, "wsgi.input": io.BytesIO(body or b""),
            "REMOTE_ADDR": "127.0.0.1",
        }
        if body is not None and not chunked:
            environ["CONTENT_LENGTH"] = str(len(body))
        if chunked:
            environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        for key, value in {**({"Authorization": self.auth} if self.auth else {}), **(headers or {})}.items():
            name = key.upper().replace("-", "_")
            environ[name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + name] = value
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            answer["status"], answer["headers"] = int(status.split()[0]), dict(headers)

        data = b"".join(self.app(environ, start_response))
        return answer["status"], answer["headers"], data

    def upload(self, repo: str, data: bytes) -> str:
        digest = sha(data)
        status, _, body = self("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data)
        assert status == 201, body
        return digest

    def image(self, repo: str, layer: bytes, **extra: Any) -> bytes:
        config = self.upload(repo, b"{}")
        digest = self.upload(repo, layer)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
                    "layers": [{"mediaType": "application/octet-stream", "digest": digest, "size": len(layer)}], **extra}
        return json.dumps(manifest).encode()

    def manifest(self, repo: str, ref: str, data: bytes, media_type: str = OCI_MANIFEST) -> tuple[int, Any, bytes]:
        return self("PUT", f"/v2/{repo}/manifests/{ref}", data, {"Content-Type": media_type})


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def code(body: bytes) -> str:
    return str(json.loads(body)["errors"][0]["code"])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "registry")


@pytest.fixture
def c(store: Store) -> WSGIClient:
    return WSGIClient(create_app(store, AccessControl()))


def test_api_root_and_unknown_paths(c: WSGIClient) -> None:
    status, headers, body = c("GET", "/v2/")
    assert (status, body, headers["Docker-Distribution-API-Version"]) == (200, b"{}", "registry/2.0")
    assert c("GET", "/nowhere")[0] == 404
    status, _, body = c("GET", "/v2/a/b/nothing/here")
    assert (status, code(body)) == (404, "NAME_UNKNOWN")


def test_blob_upload_get_head_range_delete(c: WSGIClient) -> None:
    data = bytes(range(256)) * 4
    digest = c.upload("t/blob", data)
    status, headers, body = c("HEAD", f"/v2/t/blob/blobs/{digest}")
    assert (status, headers["Content-Length"], body, headers["Docker-Content-Digest"]) == (200, "1024", b"", digest)
    assert c("GET", f"/v2/t/blob/blobs/{digest}")[2] == data
    status, headers, body = c("GET", f"/v2/t/blob/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, data[10:20], "bytes 10-19/1024")
    assert c("GET", f"/v2/t/blob/blobs/{digest}", headers={"Range": "bytes=-4"})[2] == data[-4:]
    for bad in ("bytes=2000-", "bytes=-", "lines=1-2", "bytes=5-1", "bytes=" + "9" * 40 + "-"):
        status, headers, body = c("GET", f"/v2/t/blob/blobs/{digest}", headers={"Range": bad})
        assert (status, headers["Content-Range"], code(body)) == (416, "bytes */1024", "BLOB_UNKNOWN"), bad
    assert c("GET", f"/v2/t/other/blobs/{digest}")[0] == 404  # linked to t/blob only
    assert c("DELETE", f"/v2/t/blob/blobs/{digest}")[0] == 202
    status, _, body = c("GET", f"/v2/t/blob/blobs/{digest}")
    assert (status, code(body)) == (404, "BLOB_UNKNOWN")
    status, _, body = c("DELETE", f"/v2/t/blob/blobs/{digest}")
    assert (status, code(body)) == (404, "BLOB_UNKNOWN")


@pytest.mark.parametrize("bad", ["sha256:abc", "md5:" + "a" * 32, "sha256:" + "A" * 64, "nonsense", "sha256:" + "a" * 64 + "\n"])
def test_invalid_digests(c: WSGIClient, bad: str) -> None:
    status, _, body = c("GET", f"/v2/t/x/blobs/{bad}")
    assert (status, code(body)) == (400, "DIGEST_INVALID")


def test_chunked_session_status_out_of_order_cancel(c: WSGIClient) -> None:
    data = bytes(range(30))
    status, headers, _ = c("POST", "/v2/t/chunks/blobs/uploads/")
    assert (status, headers["Range"]) == (202, "0-0")
    location = headers["Location"]
    status, headers, _ = c("PATCH", location, data[:10], {"Content-Range": "0-9"})
    assert (status, headers["Range"]) == (202, "0-9")
    status, headers, body = c("PATCH", location, data[20:], {"Content-Range": "20-29"})
    assert (status, code(body), headers["Range"]) == (416, "BLOB_UPLOAD_INVALID", "0-9")
    status, _, body = c("PATCH", location, data[10:15], {"Content-Range": "10-19"})
    assert (status, code(body)) == (400, "BLOB_UPLOAD_INVALID")
    status, _, body = c("PATCH", location, data[10:20], {"Content-Range": "bogus"})
    assert (status, code(body)) == (400, "BLOB_UPLOAD_INVALID")
    assert c("PATCH", location, data[10:20], chunked=True)[0] == 202  # a streamed PATCH without Content-Range
    assert c("GET", location)[1]["Range"] == "0-19"
    status, _, body = c("PUT", f"{location}?digest={sha(data)}", data[20:], {"Content-Range": "25-29"})
    assert (status, code(body)) == (416, "BLOB_UPLOAD_INVALID")  # a final PUT that skips ahead
    status, _, _ = c("PUT", f"{location}?digest={sha(data)}", data[20:], {"Content-Range": "20-29"})
    assert status == 201
    assert c("GET", f"/v2/t/chunks/blobs/{sha(data)}")[2] == data
    status, headers, _ = c("POST", "/v2/t/chunks/blobs/uploads/")
    assert c("DELETE", headers["Location"])[0] == 204
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        status, _, body = c(method, headers["Location"] + ("?digest=" + sha(b"") if method == "PUT" else ""), b"x")
        assert (status, code(body)) == (404, "BLOB_UPLOAD_UNKNOWN"), method
    status, _, body = c("PUT", "/v2/t/chunks/blobs/uploads/../../x?digest=" + sha(b""))
    assert status in (400, 404)


def test_final_put_needs_a_valid_digest_and_a_wrong_one_keeps_nothing(c: WSGIClient, store: Store) -> None:
    _, headers, _ = c("POST", "/v2/t/wrong/blobs/uploads/")
    location = headers["Location"]
    status, _, body = c("PUT", location, b"x")
    assert (status, code(body)) == (400, "DIGEST_INVALID")
    status, _, body = c("PUT", f"{location}?digest={sha(b'other')}", b"the real bytes")
    assert (status, code(body)) == (400, "DIGEST_INVALID")
    assert c("GET", location)[0] == 404
    assert c("HEAD", f"/v2/t/wrong/blobs/{sha(b'the real bytes')}")[0] == 404
    assert list((store.root / "uploads").iterdir()) == []


def test_sha512_and_mounts(c: WSGIClient) -> None:
    data = b"sha512 content"
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    status, headers, _ = c("POST", f"/v2/t/src/blobs/uploads/?digest={digest}", data)
    assert (status, headers["Docker-Content-Digest"]) == (201, digest)
    status, headers, _ = c("POST", f"/v2/t/dst/blobs/uploads/?mount={digest}&from=t/src")
    assert (status, headers["Location"]) == (201, f"/v2/t/dst/blobs/{digest}")
    assert c("GET", f"/v2/t/dst/blobs/{digest}")[2] == data
    status, headers, _ = c("POST", f"/v2/t/dst2/blobs/uploads/?mount={digest}&from=t/nowhere")
    assert status == 202 and "/blobs/uploads/" in headers["Location"]
    status, _, body = c("POST", "/v2/t/dst2/blobs/uploads/?mount=bad")
    assert (status, code(body)) == (400, "DIGEST_INVALID")
    status, _, body = c("POST", "/v2/t/dst2/blobs/uploads/someid")
    assert (status, code(body)) == (405, "UNSUPPORTED")


def test_manifests_and_their_errors(c: WSGIClient) -> None:
    data = c.image("t/m", b"layer")
    status, headers, _ = c.manifest("t/m", "v1", data)
    assert (status, headers["Docker-Content-Digest"], headers["Location"]) == (201, sha(data), f"/v2/t/m/manifests/{sha(data)}")
    for ref in ("v1", sha(data)):
        status, headers, body = c("GET", f"/v2/t/m/manifests/{ref}")
        assert (status, body, headers["Content-Type"]) == (200, data, OCI_MANIFEST)
    status, headers, body = c("HEAD", "/v2/t/m/manifests/v1")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(data)))
    cases: list[tuple[str, bytes, str, int, str]] = [
        ("nope", b"", "GET", 404, "MANIFEST_UNKNOWN"),
        (sha(b"other"), data, "PUT", 400, "DIGEST_INVALID"),
        ("v3", b"{not json", "PUT", 400, "MANIFEST_INVALID"),
        ("v3", json.dumps({"schemaVersion": 1}).encode(), "PUT", 400, "MANIFEST_INVALID"),
        ("v3", b"[" * 100_000 + b"]" * 100_000, "PUT", 400, "MANIFEST_INVALID"),
        ("v4", b" " * (5 << 20), "PUT", 413, "SIZE_INVALID"),
        ("bad!tag", data, "PUT", 400, "MANIFEST_INVALID"),
        ("sha256:zz", data, "GET", 400, "DIGEST_INVALID"),
    ]
    for ref, body_bytes, method, want_status, want_code in cases:
        if method == "PUT":
            status, _, body = c.manifest("t/m", ref, body_bytes)
        else:
            status, _, body = c(method, f"/v2/t/m/manifests/{ref}")
        assert (status, code(body)) == (want_status, want_code), ref
    missing = json.loads(data)
    missing["layers"][0]["digest"] = sha(b"never uploaded")
    status, _, body = c.manifest("t/m", "v2", json.dumps(missing).encode())
    assert (status, code(body)) == (400, "MANIFEST_BLOB_UNKNOWN")
    status, _, body = c.manifest("t/m", "v5", data, "application/vnd.docker.distribution.manifest.v2+json")
    assert (status, code(body)) == (400, "MANIFEST_INVALID")  # Content-Type contradicts mediaType
    status, headers, body = c("PATCH", "/v2/t/m/manifests/v1", b"x")
    assert (status, code(body)) == (405, "UNSUPPORTED") and "GET" in headers["Allow"]


def test_non_distributable_layers_with_urls_need_no_blob(c: WSGIClient) -> None:
    manifest = json.loads(c.image("t/foreign", b"local layer"))
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                               "digest": sha(b"elsewhere"), "size": 9, "urls": ["https://example.com/layer"]})
    assert c.manifest("t/foreign", "v1", json.dumps(manifest).encode())[0] == 201
    del manifest["layers"][1]["urls"]
    status, _, body = c.manifest("t/foreign", "v2", json.dumps(manifest).encode())
    assert (status, code(body)) == (400, "MANIFEST_BLOB_UNKNOWN")


@pytest.mark.parametrize("field,value", [("mediaType", 5), ("mediaType", ["x"]), ("artifactType", {"a": 1}),
                                         ("artifactType", 7), ("annotations", {"a": 1}), ("subject", "sha256:x"),
                                         ("layers", {"a": 1}), ("config", None), ("schemaVersion", True)])
def test_odd_types_in_manifests_are_refused(c: WSGIClient, field: str, value: Any) -> None:
    manifest = json.loads(c.image("t/odd", b"odd"))
    manifest[field] = value
    status, _, body = c.manifest("t/odd", "v1", json.dumps(manifest).encode())
    assert (status, code(body)) == (400, "MANIFEST_INVALID")


def test_index_docker_types_subject_and_referrers(c: WSGIClient) -> None:
    data = c.image("t/idx", b"arch layer")
    c.manifest("t/idx", sha(data), data)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha(data), "size": len(data)}]}
    assert c.manifest("t/idx", "multi", json.dumps(index).encode(), OCI_INDEX)[0] == 201
    index["manifests"][0]["digest"] = sha(b"unknown")
    status, _, body = c.manifest("t/idx", "bad", json.dumps(index).encode(), OCI_INDEX)
    assert (status, code(body)) == (400, "MANIFEST_BLOB_UNKNOWN")
    subject = {"mediaType": OCI_MANIFEST, "digest": sha(data), "size": len(data)}
    sig = c.image("t/idx", b"sig", artifactType="application/vnd.example.sig", subject=subject, annotations={"a": "b"})
    status, headers, _ = c.manifest("t/idx", sha(sig), sig)
    assert (status, headers["OCI-Subject"]) == (201, sha(data))
    status, headers, body = c("GET", f"/v2/t/idx/referrers/{sha(data)}")
    assert (status, headers["Content-Type"]) == (200, OCI_INDEX)
    assert [(m["digest"], m["artifactType"], m["annotations"]) for m in json.loads(body)["manifests"]] == \
        [(sha(sig), "application/vnd.example.sig", {"a": "b"})]
    status, headers, body = c("GET", f"/v2/t/idx/referrers/{sha(data)}?artifactType=other")
    assert (json.loads(body)["manifests"], headers["OCI-Filters-Applied"]) == ([], "artifactType")
    status, _, body = c("GET", "/v2/t/idx/referrers/nonsense")
    assert (status, code(body)) == (400, "DIGEST_INVALID")


def test_deletes(c: WSGIClient) -> None:
    data = c.image("t/del", b"shared")
    c.manifest("t/del", "one", data)
    assert c("DELETE", "/v2/t/del/manifests/one")[0] == 202  # the tag only
    assert c("GET", f"/v2/t/del/manifests/{sha(data)}")[0] == 200
    assert c("DELETE", f"/v2/t/del/manifests/{sha(data)}")[0] == 202
    for ref, want in (("one", "MANIFEST_UNKNOWN"), (sha(data), "MANIFEST_UNKNOWN"), ("bad!", "DIGEST_INVALID")):
        status, _, body = c("DELETE", f"/v2/t/del/manifests/{ref}")
        assert code(body) == want and status in (400, 404)


def test_tags_and_catalog_pagination_with_huge_n(c: WSGIClient) -> None:
    data = c.image("t/paged", b"p")
    for tag in ("a", "b", "c"):
        c.manifest("t/paged", tag, data)
    status, headers, body = c("GET", "/v2/t/paged/tags/list?n=2")
    assert (json.loads(body)["tags"], headers["Link"]) == (["a", "b"], '</v2/t/paged/tags/list?n=2&last=b>; rel="next"')
    assert json.loads(c("GET", "/v2/t/paged/tags/list?n=2&last=b")[2])["tags"] == ["c"]
    for n in ("9" * 30, "18446744073709551616", "100000"):
        status, _, body = c("GET", f"/v2/t/paged/tags/list?n={n}")
        assert (status, json.loads(body)["tags"]) == (200, ["a", "b", "c"])
        assert c("GET", f"/v2/_catalog?n={n}")[0] == 200
    for n in ("-1", "x", "1_0", "²"):
        status, _, body = c("GET", f"/v2/t/paged/tags/list?n={n}")
        assert (status, code(body)) == (400, "PAGINATION_NUMBER_INVALID"), n
    status, _, body = c("GET", "/v2/t/never/tags/list")
    assert (status, code(body)) == (404, "NAME_UNKNOWN")
    c.upload("t/second", b"s")
    status, headers, body = c("GET", "/v2/_catalog?n=1")
    assert len(json.loads(body)["repositories"]) == 1 and 'rel="next"' in headers["Link"]


@pytest.mark.parametrize("name", ["../../etc", "t/../../x", "UPPER/case", "a" * 256, "t//double", "-bad"])
def test_repository_names_are_checked(c: WSGIClient, name: str) -> None:
    status, _, body = c("POST", f"/v2/{name}/blobs/uploads/")
    assert (status, code(body)) == (400, "NAME_INVALID")


def test_a_body_that_ends_early_is_a_400_and_the_session_keeps_what_was_acknowledged(c: WSGIClient) -> None:
    _, headers, _ = c("POST", "/v2/t/short/blobs/uploads/")
    location = headers["Location"]
    assert c("PATCH", location, b"0123456789")[0] == 202
    status, _, body = c("PATCH", location, b"abc", {"Content-Length": "100"})  # announces more than it sends
    assert (status, code(body)) == (400, "BLOB_UPLOAD_INVALID")
    assert c("GET", location)[1]["Range"] == "0-9"
    status, _, body = c("POST", f"/v2/t/short/blobs/uploads/?digest={sha(b'abc')}", b"abc", {"Content-Length": "9"})
    assert (status, code(body)) == (400, "BLOB_UPLOAD_INVALID")
    assert c("HEAD", f"/v2/t/short/blobs/{sha(b'abc')}")[0] == 404
    for bad in ("²", "-1", "1_0", "0x10", "99999999999999999999999"):
        status, _, body = c("PATCH", location, b"x", {"Content-Length": bad})
        assert (status, code(body)) == (400, "SIZE_INVALID"), bad


def test_an_unexpected_error_is_a_500_with_a_spec_body_and_one_log_line(store: Store, caplog: pytest.LogCaptureFixture,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    c = WSGIClient(create_app(store, AccessControl()))

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(store, "catalog", broken)
    status, _, body = c("GET", "/v2/_catalog")
    assert (status, code(body)) == (500, "UNKNOWN")
    errors = [r for r in caplog.records if r.name == "ormb.registry"]
    assert len(errors) == 1 and "RuntimeError: boom" in errors[0].getMessage()


def test_the_access_log_has_one_line_per_request_and_no_secret(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    password = "correct horse battery"
    users = {"alice": bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))}
    c = WSGIClient(create_app(store, AccessControl(users=users, secret=b"k"), auth_scheme="basic"),
                   "Basic " + base64.b64encode(f"alice:{password}".encode()).decode())
    caplog.set_level("INFO", logger="ormb.registry.access")
    c("GET", "/v2/")
    c.upload("alice/x", b"12345")
    lines = [r.getMessage() for r in caplog.records if r.name == "ormb.registry.access"]
    assert len(lines) == 2
    assert ' alice "GET /v2/" 200 2 ' in lines[0] and ' alice "POST /v2/alice/x/blobs/uploads/?digest=' in lines[1]
    assert " 201 0 " in lines[1]
    assert all(password not in line and "Basic" not in line for line in lines)


def test_auth_basic_bearer_policy_and_challenges(store: Store) -> None:
    users = {u: bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)) for u, p in (("alice", "a-pw"), ("bob", "b-pw"))}
    rules = [Rule(("alice",), ("alice/*",), frozenset({"pull", "push", "delete"})),
             Rule(("*",), ("*",), frozenset({"pull"}))]
    access = AccessControl(users=users, rules=rules, secret=b"secret")
    app = create_app(store, access)
    anonymous = WSGIClient(app)
    status, headers, body = anonymous("GET", "/v2/alice/m/tags/list")
    assert (status, code(body)) == (401, "UNAUTHORIZED")
    assert headers["WWW-Authenticate"].startswith('Bearer realm="http://127.0.0.1:5000/token"')

    def token(user: str | None, password: str | None, scope: str) -> str:
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() if user else None
        status, _, body = WSGIClient(app, auth)("GET", f"/token?scope={scope}")
        assert status == 200
        return "Bearer " + json.loads(body)["token"]

    alice = WSGIClient(app, token("alice", "a-pw", "repository:alice/m:pull,push"))
    assert alice.manifest("alice/m", "v1", alice.image("alice/m", b"x"))[0] == 201
    bob = WSGIClient(app, token("bob", "b-pw", "repository:alice/m:pull,push"))
    assert bob("GET", "/v2/alice/m/manifests/v1")[0] == 200
    status, _, body = bob("POST", "/v2/alice/m/blobs/uploads/")
    assert (status, code(body)) == (403, "DENIED")
    pull_only = WSGIClient(app, token("alice", "a-pw", "repository:alice/m:pull"))
    status, headers, _ = pull_only("POST", "/v2/alice/m/blobs/uploads/")
    assert status == 401 and 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    assert WSGIClient(app, "Bearer forged.token")("GET", "/v2/alice/m/manifests/v1")[0] == 401
    wrong = "Basic " + base64.b64encode(b"alice:wrong").decode()
    assert WSGIClient(app, wrong)("GET", "/token?scope=repository:alice/m:pull")[0] == 401
    catalog = WSGIClient(app, token("bob", "b-pw", "registry:catalog:*"))
    assert json.loads(catalog("GET", "/v2/_catalog")[2])["repositories"] == ["alice/m"]
    assert anonymous("GET", "/")[0] == 401  # the catalog page asks the browser to log in
    assert WSGIClient(app, "Basic " + base64.b64encode(b"bob:b-pw").decode())("GET", "/")[0] == 200


def test_concurrent_requests_on_one_session_are_refused_not_interleaved(c: WSGIClient, store: Store) -> None:
    _, headers, _ = c("POST", "/v2/t/race/blobs/uploads/")
    session = headers["Location"].rpartition("/")[2]
    with store.open_session("t/race", session):  # another request holds it
        status, headers, body = c("PATCH", f"/v2/t/race/blobs/uploads/{session}", b"evil")
        assert (status, code(body), headers["Range"]) == (416, "BLOB_UPLOAD_INVALID", "0-0")
        status, _, _ = c("PUT", f"/v2/t/race/blobs/uploads/{session}?digest={sha(b'evil')}", b"evil")
        assert status == 416
    assert c("PUT", f"/v2/t/race/blobs/uploads/{session}?digest={sha(b'good')}", b"good")[0] == 201


def test_a_file_without_a_row_is_never_trusted(c: WSGIClient, store: Store) -> None:
    data = b"the real bytes"
    planted = store.blob_path(sha(data))
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(b"planted, not verified")
    c.upload("t/plant", data)
    assert c("GET", f"/v2/t/plant/blobs/{sha(data)}")[2] == data


@given(st.binary(max_size=300))
def test_any_bytes_as_a_manifest_get_an_answer_never_an_exception(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        c = WSGIClient(create_app(Store(Path(root)), AccessControl()))
        status, _, body = c.manifest("t/fuzz", "v1", data)
        assert status in (400, 413) and code(body) in ("MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "SIZE_INVALID")


def test_the_model_page_reads_the_model_as_inspect_does_and_only_from_its_repository(c: WSGIClient, store: Store) -> None:
    from conftest import craft_layer
    from ormb.errors import NotFoundError
    from ormb.oci.descriptor import Descriptor
    from ormb.server.access import AccessControl as Access
    from ormb.server.authz import Authoriser
    from ormb.server.context import Context
    from ormb.server.model_files import RepositoryContent

    config = json.dumps({"format": "ONNX", "author": "Ada Lovelace", "signature": {
        "inputs": [{"name": "pixels", "dType": "float32", "size": [-1, 64]}]}}).encode()
    layer = craft_layer([("model/weights.bin", "file", b"w" * 3000)])
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.caicloud.model.config.v1alpha1+json", "digest": c.upload("t/page", config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/tar+gzip", "digest": c.upload("t/page", layer), "size": len(layer)}],
    }).encode()
    assert c.manifest("t/page", "v1", manifest)[0] == 201
    status, _, body = c("GET", "/model?name=t/page&ref=v1")
    page = body.decode()
    assert status == 200 and "Ada Lovelace" in page and "pixels" in page and "model/weights.bin" in page
    assert "2.9 KiB" in page and "ormb pull localhost:5000/t/page:v1" in page
    other = RepositoryContent(Context(store, Authoriser(Access())), "t/other")
    with pytest.raises(NotFoundError), other.fetch(Descriptor("application/json", sha(config), len(config))):
        pass
