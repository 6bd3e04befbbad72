"""A repository on a registry as a Target (OCI distribution spec v1.1)."""

from __future__ import annotations

import hashlib
import io
import json
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import urllib3

from ormb.errors import IntegrityError, InvalidArtifactError, NetworkError, NotFoundError, RegistryError
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor
from ormb.oci.grammar import IO_CHUNK, MAX_MANIFEST, MAX_TAG_PAGE, UPLOAD_CHUNK, is_digest
from ormb.registry.client import Registry, _discard, pull_scope, push_scope
from ormb.registry.transport import BodyFactory

MANIFEST_ACCEPT = ", ".join([
    mediatypes.OCI_MANIFEST, mediatypes.OCI_INDEX, mediatypes.DOCKER_MANIFEST, mediatypes.DOCKER_MANIFEST_LIST,
])
CHUNK = IO_CHUNK
AUTO_CHUNK = UPLOAD_CHUNK  # PATCH size when a layer is chunked because it is above chunked_above
_TRANSIENT = (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError,
              urllib3.exceptions.IncompleteRead, ConnectionError, TimeoutError)


def _is_manifest(desc: Descriptor) -> bool:
    return desc.media_type in mediatypes.MANIFEST_TYPES or desc.media_type in mediatypes.INDEX_TYPES


class _BlobReader:
    """Streams a blob; when the connection breaks, asks again with ``Range`` from the byte reached."""

    def __init__(self, repo: RemoteRepository, desc: Descriptor) -> None:
        self._repo = repo
        self._desc = desc
        self.received = 0
        self.resumes = 0
        self._response = self._open()

    def _open(self) -> urllib3.BaseHTTPResponse:
        headers = {"Range": f"bytes={self.received}-"} if self.received else {}
        response = self._repo.registry.request(
            "GET", self._repo.path(f"blobs/{self._desc.digest}"), scope=pull_scope(self._repo.name),
            headers=headers, expect=(200, 206), what=f"blob {self._desc.digest} of {self._repo.name}",
        )
        if self.received and response.status == 200:  # the server ignored Range: skip what we have
            skip = self.received
            while skip:
                chunk = response.read(min(skip, CHUNK))
                if not chunk:
                    break
                skip -= len(chunk)
        return response

    def read(self, n: int = -1) -> bytes:
        remaining = self._desc.size - self.received
        if remaining <= 0:
            return b""
        n = remaining if n < 0 else min(n, remaining)
        while True:
            try:
                data = self._response.read(n)
                if not data:
                    raise urllib3.exceptions.IncompleteRead(self.received, remaining)
                self.received += len(data)
                return data
            except _TRANSIENT as exc:
                self._response.release_conn()
                if self.resumes >= self._repo.registry.options.retries:
                    raise NetworkError(
                        f"the download of {self._desc.digest} from {self._repo.registry.host} broke off "
                        f"after {self.received} of {self._desc.size} bytes ({type(exc).__name__})",
                        "run the same command again",
                    ) from None
                time.sleep(self._repo.registry.options.backoff * (2**self.resumes))
                self.resumes += 1
                self._response = self._open()

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self._response.release_conn()


class RemoteRepository:
    """Target over ``https://HOST/v2/NAME/``; see DESIGN.md section 5."""

    def __init__(self, registry: Registry, name: str) -> None:
        self.registry = registry
        self.name = name
        self._resolved: dict[str, bytes] = {}  # manifests fetched by resolve(), so copy() does not ask twice

    def path(self, rest: str) -> str:
        return f"/v2/{self.name}/{rest}"

    # -- reading -----------------------------------------------------------------------------
    def exists(self, desc: Descriptor) -> bool:
        kind = "manifests" if _is_manifest(desc) else "blobs"
        response = self.registry.request(
            "HEAD", self.path(f"{kind}/{desc.digest}"), scope=pull_scope(self.name), expect=(200, 404),
            headers={"Accept": MANIFEST_ACCEPT} if kind == "manifests" else None,
        )
        _discard(response)
        return response.status == 200

    @contextmanager
    def fetch(self, desc: Descriptor) -> Iterator[BinaryIO]:
        if _is_manifest(desc):
            data = self._resolved.pop(desc.digest, None)
            yield io.BytesIO(data if data is not None else self._get_manifest(desc.digest)[0])
            return
        reader = _BlobReader(self, desc)
        try:
            yield reader  # type: ignore[misc]
        finally:
            reader.close()

    def _get_manifest(self, reference: str) -> tuple[bytes, str]:
        response = self.registry.request(
            "GET", self.path(f"manifests/{reference}"), scope=pull_scope(self.name),
            headers={"Accept": MANIFEST_ACCEPT}, what=f"manifest {self.name}:{reference}",
        )
        try:
            data = response.read(MAX_MANIFEST + 1)
        finally:
            response.release_conn()
        if len(data) > MAX_MANIFEST:
            raise InvalidArtifactError(f"the manifest of {self.name}:{reference} is larger than {MAX_MANIFEST} bytes")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        claimed = response.headers.get("Docker-Content-Digest")
        expected = reference if is_digest(reference) else claimed
        if expected and expected.startswith("sha256:") and expected != digest:
            raise IntegrityError(f"the manifest {self.name}:{reference} from {self.registry.host} does not match "
                                 f"its digest (got {digest}, expected {expected})")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            media_type = json.loads(data).get("mediaType") or media_type
        except (ValueError, AttributeError):
            raise InvalidArtifactError(f"the manifest of {self.name}:{reference} is not JSON") from None
        return data, media_type or mediatypes.OCI_MANIFEST

    def resolve(self, reference: str) -> Descriptor:
        data, media_type = self._get_manifest(reference)
        desc = Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
        self._resolved = {desc.digest: data}
        return desc

    def manifest_bytes(self, reference: str) -> bytes:
        return self._get_manifest(reference)[0]

    def tags(self, page_size: int = 100) -> Iterator[str]:
        """Every tag, following the ``Link`` header page by page."""
        path: str | None = self.path(f"tags/list?n={page_size}")
        while path:
            response = self.registry.request("GET", path, scope=pull_scope(self.name), what=f"the tags of {self.name}")
            try:
                body = response.read(MAX_TAG_PAGE)
            finally:
                response.release_conn()
            try:
                tags = json.loads(body).get("tags") or []
            except (ValueError, AttributeError):
                raise RegistryError(f"{self.registry.host} answered the tag list with something that is not JSON") from None
            yield from tags
            path = _next_link(response.headers.get("Link", ""))

    def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        """Manifests whose subject is ``digest``: the referrers API, else the tag schema ``sha256-<hex>``."""
        query = f"?artifactType={urllib.parse.quote(artifact_type)}" if artifact_type else ""
        response = self.registry.request(
            "GET", self.path(f"referrers/{digest}{query}"), scope=pull_scope(self.name), expect=(200, 404, 405),
            headers={"Accept": mediatypes.OCI_INDEX}, what=f"the referrers of {digest}",
        )
        try:
            body = response.read(MAX_MANIFEST + 1)
        finally:
            response.release_conn()
        if response.status != 200:  # no referrers API (e.g. CNCF distribution 2.8): the fallback tag
            tag = digest.replace(":", "-")
            try:
                body = self.manifest_bytes(tag)
            except NotFoundError:
                return []
        try:
            entries = json.loads(body).get("manifests") or []
        except (ValueError, AttributeError):
            raise InvalidArtifactError(f"the referrers index of {digest} is not JSON") from None
        found = [Descriptor.from_dict(e, "referrer") for e in entries]
        return [d for d in found if not artifact_type or d.artifact_type == artifact_type]

    # -- writing -----------------------------------------------------------------------------
    def mount(self, desc: Descriptor, source_repository: str) -> bool:
        """Cross-repository mount; False (and nothing left open) when the registry will not."""
        if source_repository == self.name:
            return False
        response = self.registry.request(
            "POST", self.path(f"blobs/uploads/?mount={desc.digest}&from={urllib.parse.quote(source_repository)}"),
            scope=f"{push_scope(self.name)} {pull_scope(source_repository)}", expect=(201, 202),
            headers={"Content-Length": "0"}, body=lambda: b"", what=f"mounting {desc.digest}",
        )
        _discard(response)
        if response.status == 201:
            return True
        location = response.headers.get("Location")
        if location:  # the registry opened an upload instead: close it, the caller uploads
            cancel = self.registry.request("DELETE", self._location(response), scope=push_scope(self.name),
                                           expect=(204, 202, 404, 405), what="cancelling an upload")
            _discard(cancel)
        return False

    def push(self, desc: Descriptor, content: BinaryIO) -> None:
        if _is_manifest(desc):
            self.push_reference(desc, content, desc.digest)
            return
        location = self._start_upload()
        body: BodyFactory
        options = self.registry.options
        if options.chunk_size or (options.chunked_above is not None and desc.size > options.chunked_above):
            location = self._upload_chunks(location, desc, content)
            length = 0

            def body() -> bytes:
                return b""
        else:
            length = desc.size
            start = content.tell() if content.seekable() else 0

            def body() -> Iterator[bytes]:
                if content.seekable():
                    content.seek(start)
                return self._chunks(content, desc.size)
        response = self.registry.request(
            "PUT", _with_query(location, digest=desc.digest), scope=push_scope(self.name),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            body=body, expect=(201, 204), what=f"the upload of {desc.digest}",
        )
        _discard(response)
        self._check_digest(response, desc)

    def _chunks(self, content: BinaryIO, size: int) -> Iterator[bytes]:
        remaining = size
        while remaining:
            data = content.read(min(CHUNK, remaining))
            if not data:
                raise IntegrityError(f"the local content ended {remaining} bytes early")
            remaining -= len(data)
            yield data

    def _start_upload(self) -> str:
        response = self.registry.request(
            "POST", self.path("blobs/uploads/"), scope=push_scope(self.name), expect=(202,),
            headers={"Content-Length": "0"}, body=lambda: b"", what=f"starting an upload to {self.name}",
        )
        _discard(response)
        self._min_chunk = int(response.headers.get("OCI-Chunk-Min-Length") or 0)
        return self._location(response)

    def _location(self, response: urllib3.BaseHTTPResponse) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.registry.host} started an upload without a Location header")
        return urllib.parse.urljoin(self.registry.url(self.path("blobs/uploads/")), location)

    def _upload_chunks(self, location: str, desc: Descriptor, content: BinaryIO) -> str:
        chunk_size = max(self.registry.options.chunk_size or AUTO_CHUNK, self._min_chunk)
        seekable = content.seekable()
        base = content.tell() if seekable else 0
        offset = 0
        while offset < desc.size:
            length = min(chunk_size, desc.size - offset)
            end = offset + length - 1
            body: BodyFactory
            if seekable:  # stream the chunk from the file: memory stays flat whatever the chunk size

                def body(start: int = offset, count: int = length) -> Iterator[bytes]:
                    content.seek(base + start)
                    return self._chunks(content, count)
            else:  # a stream (registry to registry): hold one chunk, so a retry can send it again
                data = content.read(length)
                if len(data) != length:
                    raise IntegrityError(f"the content of {desc.digest} ended early")

                def body(chunk: bytes = data) -> bytes:
                    return chunk
            response = self.registry.request(
                "PATCH", location, scope=push_scope(self.name), body=body, expect=(202,),
                headers={"Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{end}",
                         "Content-Length": str(length)},
                what=f"a chunk of {desc.digest}",
            )
            _discard(response)
            location = self._location(response)
            received = response.headers.get("Range", "")
            if received.startswith("0-") and received[2:].isdigit() and int(received[2:]) != end and seekable:
                offset = int(received[2:]) + 1  # the registry kept less than we sent: continue from what it has
                continue
            offset = end + 1
        return location

    def _check_digest(self, response: urllib3.BaseHTTPResponse, desc: Descriptor) -> None:
        claimed = response.headers.get("Docker-Content-Digest")
        if claimed and claimed != desc.digest:
            raise IntegrityError(f"{self.registry.host} stored {claimed} for {desc.digest}")

    def push_reference(self, desc: Descriptor, content: BinaryIO, reference: str) -> None:
        data = content.read(MAX_MANIFEST + 1)
        response = self.registry.request(
            "PUT", self.path(f"manifests/{reference}"), scope=push_scope(self.name),
            headers={"Content-Type": desc.media_type}, body=lambda: data, expect=(201, 200),
            what=f"the manifest {self.name}:{reference}",
        )
        _discard(response)
        self._check_digest(response, desc)

    def tag(self, desc: Descriptor, reference: str) -> None:
        data = self.manifest_bytes(desc.digest)
        self.push_reference(desc, io.BytesIO(data), reference)


def _with_query(url: str, **params: str) -> str:
    return url + ("&" if "?" in url else "?") + urllib.parse.urlencode(params)


def _next_link(header: str) -> str | None:
    for part in header.split(","):
        if 'rel="next"' in part or "rel=next" in part:
            start, end = part.find("<"), part.find(">")
            if 0 <= start < end:
                return part[start + 1 : end]
    return None
