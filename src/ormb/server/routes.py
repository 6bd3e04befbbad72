"""The OCI distribution spec v1.1 over HTTP, on :class:`~ormb.server.storage.Storage`.

Each request is authorised (:mod:`ormb.server.access`), then handled by one method.  Errors
are the spec's JSON bodies with its codes.  Blob bodies stream through a fixed buffer
(hashed as they are written) and are sent with ``sendfile``: memory does not grow with size.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from ormb.content.background import write_sliced
from ormb.oci import mediatypes
from ormb.oci.grammar import DIGEST_RE, IO_CHUNK, MAX_MANIFEST, TAG_RE, is_repository
from ormb.server.access import AccessControl
from ormb.server.storage import ManifestRecord, Storage

BUFFER = IO_CHUNK
MANIFEST_TYPES = mediatypes.MANIFEST_TYPES | mediatypes.INDEX_TYPES

ROUTES = [
    ("upload", re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<id>[^/]*)$")),
    ("blob", re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)$")),
    ("manifest", re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$")),
    ("tags", re.compile(r"^/v2/(?P<name>.+)/tags/list$")),
    ("referrers", re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)$")),
]


class SpecError(Exception):
    """An error the spec defines: HTTP status, code, message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class ClientGone(Exception):
    """The client sent fewer bytes than it announced, or closed the connection."""


@dataclass
class RegistryConfig:
    storage: Storage
    access: AccessControl
    service: str = "ormb-registry"
    auth_scheme: str = "bearer"  # or "basic"
    ui: Callable[[RegistryHandler], bool] | None = None  # serves non-API paths; returns False for 404


class RegistryHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ormb-registry"
    config: RegistryConfig  # set on the subclass made for each server

    # -- plumbing -----------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        pass  # access logs would print; the server reports nothing unless asked

    @property
    def storage(self) -> Storage:
        return self.config.storage

    def _split(self) -> tuple[str, dict[str, str]]:
        parts = urllib.parse.urlsplit(self.path)
        return parts.path, {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items()}

    def _dispatch(self) -> None:
        self._request_body_done = False
        try:
            path, query = self._split()
            if path == "/token":
                self._token(query)
            elif path in ("/v2", "/v2/"):
                self._authorise(None, "pull")
                self._send(200, b"{}", {"Content-Type": "application/json"})
            elif path == "/v2/_catalog":
                user = self._authorise("registry:catalog", "*")
                self._catalog(query, user)
            elif path.startswith("/v2/"):
                self._api(path, query)
            elif not (self.config.ui and self.config.ui(self)):
                self._send(404, b"not found\n", {"Content-Type": "text/plain"})
        except SpecError as err:
            self._error(err)
        except ClientGone:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def _api(self, path: str, query: dict[str, str]) -> None:
        found = next(((kind, m) for kind, pattern in ROUTES if (m := pattern.match(path))), None)
        if found is None:
            raise SpecError(404, "NAME_UNKNOWN", "no such API endpoint")
        kind, match = found
        name = match.group("name")
        if not is_repository(name):
            raise SpecError(400, "NAME_INVALID", f"invalid repository name {name[:300]!r}")
        method = self.command
        action = {"GET": "pull", "HEAD": "pull", "DELETE": "delete"}.get(method, "push")
        if kind == "upload" and method in ("GET", "DELETE"):
            action = "push"
        user = self._authorise(name, action)
        handler = getattr(self, f"_{kind}_{method.lower()}", None)
        if handler is None:
            raise SpecError(405, "UNSUPPORTED", f"{method} is not supported here", {"Allow": _allowed(kind)})
        handler(name, match, query, user)

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self._drain_request()
        self.send_response(status)
        headers = {"Docker-Distribution-API-Version": "registry/2.0", **(headers or {})}
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, err: SpecError) -> None:
        body = {"errors": [{"code": err.code, "message": err.message, "detail": None}]}
        self._json(err.status, body, err.headers)

    # -- request bodies -----------------------------------------------------------------------
    def _chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None:
            return None
        if not value.isdigit():
            raise SpecError(400, "SIZE_INVALID", "Content-Length is not a number")
        return int(value)

    def _read_body(self, out: BinaryIO | None, hasher: Any | None, limit: int | None = None) -> int:
        """Stream the request body into ``out`` and ``hasher``; return its length."""
        self._request_body_done = True
        buffer = bytearray(BUFFER)
        view = memoryview(buffer)
        total = 0

        def take(count: int) -> None:
            nonlocal total
            while count:
                n = self.rfile.readinto(view[: min(BUFFER, count)])
                if not n:
                    self.close_connection = True
                    raise ClientGone
                if hasher is not None:
                    hasher.update(view[:n])
                if out is not None:
                    write_sliced(out, view[:n])
                count -= n
                total += n
                if limit is not None and total > limit:
                    self.close_connection = True
                    raise SpecError(413, "SIZE_INVALID", f"the body is larger than {limit} bytes")

        if self._chunked():
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    self.close_connection = True
                    raise ClientGone
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    self.close_connection = True
                    raise SpecError(400, "BLOB_UPLOAD_INVALID", "malformed chunked encoding") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return total
                take(size)
                self.rfile.readline(8)
        length = self._length() or 0
        take(length)
        return total

    def _drain_request(self) -> None:
        """Read an unread request body so the connection can serve the next request."""
        if self._request_body_done:
            return
        self._request_body_done = True
        length = self._length() if not self._chunked() else None
        if self._chunked() or (length and length > BUFFER * 16):
            self.close_connection = True  # not worth reading: close instead
            return
        if length:
            self.rfile.read(length)

    def _body_bytes(self, limit: int) -> bytes:
        buffer = io.BytesIO()
        self._read_body(buffer, None, limit)
        return buffer.getvalue()

    # -- auth ---------------------------------------------------------------------------------
    def _authorise(self, name: str | None, action: str) -> str | None:
        """The user, when allowed ``action`` on ``name`` (None: the API root); else raise 401/403."""
        access = self.config.access
        if not access.enabled:
            return None
        header = self.headers.get("Authorization", "")
        token_access: dict[str, frozenset[str]] | None = None
        user: str | None
        if header.startswith("Bearer "):
            claims = access.verify(header[7:].strip())
            if claims is None:
                raise self._challenge(name, action, "invalid_token", "the token is invalid or expired")
            user, token_access = claims.user, claims.access
        else:
            basic = access.basic_user(header)
            if basic is False:
                raise self._challenge(name, action, None, "invalid username or password")
            user = basic if isinstance(basic, str) else None
        if name is None:  # GET /v2/: any valid credentials or token (anonymous tokens too), never none
            if not header:
                raise self._challenge(None, action, None, "authentication required")
            return user
        if name == "registry:catalog":
            if user is None and not access.anonymous_pull:
                raise self._challenge(name, action, None, "authentication required")
            return user
        permitted = access.allowed(user, name, action)
        if token_access is not None:
            if action in token_access.get(name, frozenset()):
                return user
            if permitted:
                raise self._challenge(name, action, "insufficient_scope", "the token does not cover this request")
        elif permitted:
            return user
        if user is None:
            raise self._challenge(name, action, None, "authentication required")
        raise SpecError(403, "DENIED", f"requested access to {action} {name} is denied")

    def _challenge(self, name: str | None, action: str, error: str | None, message: str) -> SpecError:
        if self.config.auth_scheme == "basic":
            return SpecError(401, "UNAUTHORIZED", message, {"WWW-Authenticate": 'Basic realm="ormb-registry"'})
        scheme = "https" if getattr(self.server, "tls", False) else "http"
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])  # type: ignore[index]
        params = [f'realm="{scheme}://{host}/token"', f'service="{self.config.service}"']
        if name == "registry:catalog":
            params.append('scope="registry:catalog:*"')
        elif name:
            actions = "pull,push" if action == "push" else action
            params.append(f'scope="repository:{name}:{actions}"')
        if error:
            params.append(f'error="{error}"')
        return SpecError(401, "UNAUTHORIZED", message, {"WWW-Authenticate": "Bearer " + ",".join(params)})

    def _token(self, query: dict[str, str]) -> None:
        access = self.config.access
        basic = access.basic_user(self.headers.get("Authorization", ""))
        if basic is False:
            raise SpecError(401, "UNAUTHORIZED", "invalid username or password",
                            {"WWW-Authenticate": 'Basic realm="ormb-registry"'})
        user = basic if isinstance(basic, str) else None
        parts = urllib.parse.urlsplit(self.path)
        scopes = [s for value in urllib.parse.parse_qs(parts.query).get("scope", []) for s in value.split(" ") if s]
        token, lifetime = access.issue(user, scopes)
        self._json(200, {"token": token, "access_token": token, "expires_in": lifetime})

    # -- catalog and tags ---------------------------------------------------------------------
    def _page(self, query: dict[str, str]) -> tuple[int | None, str | None]:
        n = query.get("n")
        if n is not None and not n.isdigit():
            raise SpecError(400, "PAGINATION_NUMBER_INVALID", "n must be a non-negative number")
        return (int(n) if n is not None else None), (query.get("last") or None)

    def _catalog(self, query: dict[str, str], user: str | None) -> None:
        n, last = self._page(query)
        visible = [r for r in self.storage.catalog(last) if self.config.access.allowed(user, r, "pull")]
        page = visible if n is None else visible[:n]
        headers = {}
        if n is not None and len(visible) > n and page:
            headers["Link"] = f'</v2/_catalog?n={n}&last={urllib.parse.quote(page[-1])}>; rel="next"'
        self._json(200, {"repositories": page}, headers)

    def _tags_get(self, name: str, match: re.Match[str], query: dict[str, str], user: str | None) -> None:
        if not self.storage.repository_exists(name):
            raise SpecError(404, "NAME_UNKNOWN", f"repository {name} is not known")
        n, last = self._page(query)
        tags = self.storage.tags(name, last, None if n is None else n + 1)
        page = tags if n is None else tags[:n]
        headers = {}
        if n is not None and len(tags) > n and page:
            headers["Link"] = f'</v2/{name}/tags/list?n={n}&last={urllib.parse.quote(page[-1])}>; rel="next"'
        self._json(200, {"name": name, "tags": page}, headers)

    # -- blobs --------------------------------------------------------------------------------
    def _digest(self, value: str) -> str:
        if not DIGEST_RE.match(value):
            raise SpecError(400, "DIGEST_INVALID", f"invalid digest {value[:200]!r}")
        return value

    def _blob_get(self, name: str, match: re.Match[str], query: dict[str, str], user: str | None) -> None:
        digest = self._digest(match.group("digest"))
        size = self.storage.linked(name, digest)
        if size is None:
            raise SpecError(404, "BLOB_UNKNOWN", f"blob {digest} is not known to {name}")
        start, end = 0, size - 1
        status = 200
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest,
                   "Accept-Ranges": "bytes", "ETag": f'"{digest}"'}
        requested = self.headers.get("Range")
        if requested:
            found = re.match(r"^bytes=(\d*)-(\d*)$", requested.strip())
            if not found or (not found.group(1) and not found.group(2)):
                raise SpecError(416, "BLOB_UNKNOWN", f"unsupported Range {requested!r}",
                                {"Content-Range": f"bytes */{size}"})
            if found.group(1):
                start = int(found.group(1))
                end = min(int(found.group(2)), size - 1) if found.group(2) else size - 1
            else:  # the last N bytes
                start, end = max(0, size - int(found.group(2))), size - 1
            if start >= size or start > end:
                raise SpecError(416, "BLOB_UNKNOWN", "the range is not satisfiable",
                                {"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        count = end - start + 1 if size else 0
        headers["Content-Length"] = str(count)
        if self.command == "HEAD":
            self._send(status, b"", headers)
            return
        with open(self.storage.blob_path(digest), "rb") as blob:
            self._send(status, b"", headers)
            if count:
                self.connection.sendfile(blob, start, count)

    _blob_head = _blob_get

    def _blob_delete(self, name: str, match: re.Match[str], query: dict[str, str], user: str | None) -> None:
        digest = self._digest(match.group("digest"))
        if not self.storage.unlink(name, digest):
            raise SpecError(404, "BLOB_UNKNOWN", f"blob {digest} is not known to {name}")
        self._send(202)

    # -- uploads ------------------------------------------------------------------------------
    def _upload_location(self, name: str, upload_id: str) -> str:
        return f"/v2/{name}/blobs/uploads/{upload_id}"

    def _upload_post(self, name: str, match: re.Match[str], query: dict[str, str], user: str | None) -> None:
        if match.group("id"):
            raise SpecError(405, "UNSUPPORTED", "POST goes to /blobs/uploads/")
        mount, source = query.get("mount"), query.get("from")
        if mount is not None:
            digest = self._digest(mount)
            if source and is_repository(source) and self.storage.linked(source, digest) is not None and \
                    self.config.access.allowed(user, source, "pull"):
                self.storage.link(name, digest)
                self._send(201, b"", {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})
                return
            # not visible to this user: fall back to a normal upload session (the spec's 202)
        single = query.get("digest")
        if single is not None and mount is None:  # the whole blob in this one request
            upload_id = self.storage.new_upload(name)
            self._finish_upload(name, upload_id, self._digest(single), start=0)
            return
        upload_id = self.storage.new_upload(name)
        self._send(202, b"", {"Location": self._upload_location(name, upload_id), "Range": "0-0",
                              "Docker-Upload-UUID": upload_id})

    def _session(self, name: str, match: re.Match[str]) -> tuple[str, int]:
        upload_id = match.group("id") or ""
        size = self.storage.upload_size(name, upload_id) if upload_id else None
        if size is None:
            raise SpecError(404, "BLOB_UPLOAD_UNKNOWN", f"upload {upload_id!r} is not known")
        return upload_id, size

    def _range_header(self, size: int) -> str:
        return f"0-{max(size - 1, 0)}"

    def _upload_get(self, name: str, match: re.Match[str], query: dict[str, str], user: str | None) -> None:
        upload_id, size = self._session(name, match)
        self._send(204, b"", {"Location": self._upload_location(name, upload_id), "Range": self._range_header(size),
                              "Docker-Upload-UUID": upload_id})

    def _upload_delete(self, name: str, match: re.Match[str], query: dict[str, str], user: str | None) -> None:
        upload_id, _ = self._session(name, match)
        self.storage.drop_upload(upload_id)
        self._send(204)

    def _append(self, upload_id: str, start: int) -> int:
        """Append the request body at ``start``; on a broken body, cut the file back. Returns the new size."""
        path = self.storage.upload_path(upload_id)
        hasher = self.storage.upload_hasher(upload_id, start)
        with open(path, "r+b") as out:
            out.truncate(start)  # a killed earlier request may have left bytes past the acknowledged size
            out.seek(start)
            try:
                self._read_body(out, hasher)
            except (ClientGone, SpecError):
                out.truncate(start)
                raise
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        self.storage.set_upload_size(upload_id, size)
        self.storage.remember_hasher(upload_id, size, hasher)
        return size

    def _upload_patch(self, name: str, match: re.Match[str], query: dict[str, str], user: str | None) -> None:
        upload_id, size = self._session(name, match)
        content_range = self.headers.get("Content-Range")
        if content_range:
            found = re.match(r"^(?:bytes )?(\d+)-(\d+)$", content_range.strip())
            if not found:
                raise SpecError(400, "BLOB_UPLOAD_INVALID", f"malformed Content-Range {content_range!r}")
            start, end = int(found.group(1)), int(found.group(2))
            if start != size:
                raise SpecError(416, "BLOB_UPLOAD_INVALID", f"the upload is at byte {size}; a chunk starting at "
                                f"{start} is out of order", {"Location": self._upload_location(name, upload_id),
                                                              "Range": self._range_header(size)})
            length = self._length()
            if length is not None and length != end - start + 1:
                raise SpecError(400, "BLOB_UPLOAD_INVALID", "Content-Length does not match Content-Range")
        size = self._append(upload_id, size)
        self._send(202, b"", {"Location": self._upload_location(name, upload_id), "Range": self._range_header(size),
                              "Docker-Upload-UUID": upload_id})

    def _upload_put(self, name: str, match: re.Match[str], query: dict[str, str], user: str | None) -> None:
        upload_id, size = self._session(name, match)
        digest = query.get("digest")
        if not digest:
            raise SpecError(400, "DIGEST_INVALID", "the final PUT needs ?digest=")
        self._digest(digest)
        self._finish_upload(name, upload_id, digest, start=size)

    def _finish_upload(self, name: str, upload_id: str, digest: str, start: int) -> None:
        """Append the final body at ``start``, then verify and commit the blob."""
        try:
            size = self._append(upload_id, start)
        except SpecError:  # a client that went away keeps its session; a refused body ends it
            self.storage.drop_upload(upload_id)
            raise
        algorithm = digest.partition(":")[0]
        if algorithm == "sha256":
            actual = "sha256:" + self.storage.upload_hasher(upload_id, size).hexdigest()
        else:
            hasher = hashlib.new(algorithm)
            with open(self.storage.upload_path(upload_id), "rb") as f:
                while chunk := f.read(BUFFER):
                    hasher.update(chunk)
            actual = f"{algorithm}:{hasher.hexdigest()}"
        if actual != digest:
            self.storage.drop_upload(upload_id)
            raise SpecError(400, "DIGEST_INVALID", f"the uploaded content has digest {actual}, not {digest}")
        self.storage.commit_blob(name, digest, size, self.storage.upload_path(upload_id))
        self.storage.drop_upload(upload_id)
        self._send(201, b"", {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})

    # -- manifests ----------------------------------------------------------------------------
    def _resolve(self, name: str, reference: str) -> ManifestRecord:
        if DIGEST_RE.match(reference):
            record = self.storage.manifest(name, reference)
        elif TAG_RE.match(reference):
            digest = self.storage.resolve_tag(name, reference)
            record = self.storage.manifest(name, digest) if digest else None
        elif ":" in reference:
            raise SpecError(400, "DIGEST_INVALID", f"invalid digest {reference[:200]!r}")
        else:
            raise SpecError(400, "MANIFEST_INVALID", f"invalid tag {reference[:200]!r}")
        if record is None:
            raise SpecError(404, "MANIFEST_UNKNOWN", f"manifest {reference} is not known to {name}")
        return record

    def _manifest_get(self, name: str, match: re.Match[str], query: dict[str, str], user: str | None) -> None:
        record = self._resolve(name, match.group("reference"))
        with open(self.storage.blob_path(record.digest), "rb") as f:
            data = f.read()
        self._send(200, data, {"Content-Type": record.media_type, "Docker-Content-Digest": record.digest,
                               "ETag": f'"{record.digest}"'})

    _manifest_head = _manifest_get

    def _manifest_put(self, name: str, match: re.Match[str], query: dict[str, str], user: str | None) -> None:
        reference = match.group("reference")
        is_digest = bool(DIGEST_RE.match(reference))
        if not is_digest and not TAG_RE.match(reference):
            raise SpecError(400, "MANIFEST_INVALID" if ":" not in reference else "DIGEST_INVALID",
                            f"invalid tag or digest {reference[:200]!r}")
        length = self._length()
        if length is not None and length > MAX_MANIFEST:
            self.close_connection = True
            raise SpecError(413, "SIZE_INVALID", f"manifests may be at most {MAX_MANIFEST} bytes")
        data = self._body_bytes(MAX_MANIFEST)
        algorithm = reference.partition(":")[0] if is_digest else "sha256"
        digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
        if is_digest and digest != reference:
            raise SpecError(400, "DIGEST_INVALID", f"the manifest's digest is {digest}, not {reference}")
        try:
            manifest = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise SpecError(400, "MANIFEST_INVALID", "the manifest is not JSON") from None
        if not isinstance(manifest, dict) or manifest.get("schemaVersion") != 2:
            raise SpecError(400, "MANIFEST_INVALID", "the manifest needs schemaVersion 2")
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
        media_type = manifest.get("mediaType") or content_type
        if media_type not in MANIFEST_TYPES:
            raise SpecError(400, "MANIFEST_INVALID", f"unsupported manifest media type {media_type!r}")
        if manifest.get("mediaType") and content_type and content_type != media_type:
            raise SpecError(400, "MANIFEST_INVALID", f"Content-Type {content_type} does not match {media_type}")
        children = self._check_children(name, manifest, media_type)
        subject = manifest.get("subject")
        subject_digest = None
        if subject is not None:
            if not isinstance(subject, dict) or not DIGEST_RE.match(str(subject.get("digest", ""))):
                raise SpecError(400, "MANIFEST_INVALID", "the subject is not a valid descriptor")
            subject_digest = str(subject["digest"])
        artifact_type = manifest.get("artifactType")
        if artifact_type is None and media_type in mediatypes.MANIFEST_TYPES:
            config = manifest.get("config") or {}
            if config.get("mediaType") != mediatypes.OCI_EMPTY:
                artifact_type = config.get("mediaType")
        annotations = manifest.get("annotations") if isinstance(manifest.get("annotations"), dict) else {}
        self.storage.store_bytes(data, digest)
        record = ManifestRecord(name, digest, media_type, artifact_type, len(data), subject_digest,
                                {str(k): str(v) for k, v in (annotations or {}).items()}, time.time())
        self.storage.put_manifest(record, children, None if is_digest else reference)
        headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
        if subject_digest:
            headers["OCI-Subject"] = subject_digest
        self._send(201, b"", headers)

    def _check_children(self, name: str, manifest: dict[str, Any], media_type: str) -> list[str]:
        def descriptor(item: Any, where: str) -> str:
            if not isinstance(item, dict) or not DIGEST_RE.match(str(item.get("digest", ""))) or \
                    not isinstance(item.get("size"), int) or not isinstance(item.get("mediaType"), str):
                raise SpecError(400, "MANIFEST_INVALID", f"{where} is not a valid descriptor")
            return str(item["digest"])

        children = []
        if media_type in mediatypes.INDEX_TYPES:
            entries = manifest.get("manifests")
            if not isinstance(entries, list):
                raise SpecError(400, "MANIFEST_INVALID", "an index needs a 'manifests' list")
            for i, entry in enumerate(entries):
                digest = descriptor(entry, f"manifests[{i}]")
                if self.storage.manifest(name, digest) is None:
                    raise SpecError(400, "MANIFEST_BLOB_UNKNOWN", f"manifest {digest} is not in {name}")
                children.append(digest)
            return children
        layers = manifest.get("layers")
        if not isinstance(layers, list):
            raise SpecError(400, "MANIFEST_INVALID", "a manifest needs a 'layers' list")
        for where, item in [("config", manifest.get("config")), *((f"layers[{i}]", d) for i, d in enumerate(layers))]:
            digest = descriptor(item, where)
            if self.storage.linked(name, digest) is None:
                raise SpecError(400, "MANIFEST_BLOB_UNKNOWN", f"blob {digest} ({where}) is not in {name}")
            children.append(digest)
        return children

    def _manifest_delete(self, name: str, match: re.Match[str], query: dict[str, str], user: str | None) -> None:
        reference = match.group("reference")
        if DIGEST_RE.match(reference):
            if not self.storage.delete_manifest(name, reference):
                raise SpecError(404, "MANIFEST_UNKNOWN", f"manifest {reference} is not known to {name}")
        elif TAG_RE.match(reference):
            if not self.storage.delete_tag(name, reference):
                raise SpecError(404, "MANIFEST_UNKNOWN", f"tag {reference} is not known to {name}")
        else:
            raise SpecError(400, "DIGEST_INVALID", f"invalid reference {reference[:200]!r}")
        self._send(202)

    # -- referrers ----------------------------------------------------------------------------
    def _referrers_get(self, name: str, match: re.Match[str], query: dict[str, str], user: str | None) -> None:
        digest = self._digest(match.group("digest"))
        wanted = query.get("artifactType")
        manifests = []
        for record in self.storage.referrers(name, digest):
            if wanted and record.artifact_type != wanted:
                continue
            entry: dict[str, Any] = {"mediaType": record.media_type, "digest": record.digest, "size": record.size}
            if record.artifact_type:
                entry["artifactType"] = record.artifact_type
            if record.annotations:
                entry["annotations"] = record.annotations
            manifests.append(entry)
        headers = {"Content-Type": mediatypes.OCI_INDEX}
        if wanted:
            headers["OCI-Filters-Applied"] = "artifactType"
        body = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": manifests}
        self._send(200, json.dumps(body).encode(), headers)


def _allowed(kind: str) -> str:
    return {"upload": "GET, POST, PATCH, PUT, DELETE", "blob": "GET, HEAD, DELETE",
            "manifest": "GET, HEAD, PUT, DELETE", "tags": "GET", "referrers": "GET"}[kind]
