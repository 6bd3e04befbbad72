"""A repository on a registry as a Target (OCI distribution spec v1.1)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import urllib3

from ormb.content.target import Readable, read_up_to, rewindable
from ormb.errors import IntegrityError, InvalidArtifactError, NetworkError, NotFoundError, RegistryError
from ormb.oci import grammar, mediatypes
from ormb.oci.descriptor import Descriptor, canonical_json, load_json
from ormb.oci.grammar import IO_CHUNK, MAX_MANIFEST, MAX_TAG_PAGE, UPLOAD_CHUNK, is_decimal, is_digest, is_tag
from ormb.oci.graph import parse_node
from ormb.registry.client import Registry, _discard, pull_scope, push_scope, release
from ormb.registry.transport import BodyFactory, FileRegion

MANIFEST_ACCEPT = ", ".join([
    mediatypes.OCI_MANIFEST, mediatypes.OCI_INDEX, mediatypes.DOCKER_MANIFEST, mediatypes.DOCKER_MANIFEST_LIST,
])
CHUNK = IO_CHUNK
AUTO_CHUNK = UPLOAD_CHUNK  # PATCH size when a layer is chunked because it is above chunked_above
_TRANSIENT = (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError,
              urllib3.exceptions.IncompleteRead, ConnectionError, TimeoutError)


BLOB_MISMATCH_HINT = ("the registry's blob and manifest disagree: the artifact there is corrupt, or the registry "
                      "is not to be trusted; tell its administrator")


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
        self._check_length(response)
        if self.received and response.status == 200:  # the server ignored Range: skip what we have
            skip = self.received
            try:
                while skip:
                    chunk = response.read(min(skip, CHUNK))
                    if not chunk:
                        break  # ends early: the next read resumes again
                    skip -= len(chunk)
            except BaseException:
                release(response)
                raise
        return response

    def _check_length(self, response: urllib3.BaseHTTPResponse) -> None:
        """A blob whose length (``Content-Length``) is not what the manifest declares is refused before it
        is read: the manifest's size is the registry's claim, and so is the length; one is wrong."""
        length = response.headers.get("Content-Length")
        if length is None or not is_decimal(length) or response.headers.get("Content-Encoding"):
            return
        expected = self._desc.size - (self.received if response.status == 206 else 0)
        if int(length) != expected:
            response.release_conn()
            raise IntegrityError(
                f"the registry {self._repo.registry.host} sends {int(length) + self._desc.size - expected} bytes "
                f"for blob {self._desc.digest}, whose manifest declares {self._desc.size}", BLOB_MISMATCH_HINT)

    def read(self, n: int = -1, /) -> bytes:
        remaining = self._desc.size - self.received
        if remaining <= 0:
            return b""  # never past the declared size, whatever the registry would send
        n = remaining if n < 0 else min(n, remaining)
        while True:
            try:
                data = self._response.read(n)
                if not data:  # the answer ended cleanly (a cut connection raises): the registry sent too little
                    raise IntegrityError(
                        f"the registry {self._repo.registry.host} ended blob {self._desc.digest} after "
                        f"{self.received} of {self._desc.size} bytes its manifest declares", BLOB_MISMATCH_HINT)
                self.received += len(data)
                return data
            except urllib3.exceptions.DecodeError:
                release(self._response)
                raise self._repo.registry.bad_answer(f"blob {self._desc.digest}",
                                                     "its body is not the Content-Encoding it claims") from None
            except _TRANSIENT as exc:
                self._resume(exc)

    def _resume(self, exc: BaseException) -> None:
        """Open the blob again from the byte reached; a download that breaks while it skips is resumed again."""
        while True:
            release(self._response)
            if self.resumes >= self._repo.registry.options.retries:
                raise NetworkError(
                    f"the download of {self._desc.digest} from {self._repo.registry.host} broke off "
                    f"after {self.received} of {self._desc.size} bytes ({type(exc).__name__})",
                    "run the same command again",
                ) from None
            time.sleep(self._repo.registry.options.backoff * (2**self.resumes))
            self.resumes += 1
            try:
                self._response = self._open()
                return
            except urllib3.exceptions.DecodeError:
                raise self._repo.registry.bad_answer(f"blob {self._desc.digest}",
                                                     "its body is not the Content-Encoding it claims") from None
            except _TRANSIENT as again:
                exc = again

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        release(self._response)


class RemoteRepository:
    """Target over ``https://HOST/v2/NAME/``; see DESIGN.md section 5.

    It keeps no state between calls: :meth:`fetch_reference` returns a manifest with its
    bytes in one request, and ``copy`` hands those bytes on explicitly.
    """

    def __init__(self, registry: Registry, name: str, *, pushing: bool = False) -> None:
        self.registry = registry
        self.name = name
        # A repository pushed to asks for pull,push tokens even to look (HEAD before upload), as Docker does:
        # one token instead of two, and a user without rights is told they may not push, not "pull".
        self._look_scope = push_scope(name) if pushing else pull_scope(name)

    def path(self, rest: str) -> str:
        return f"/v2/{self.name}/{rest}"

    # -- reading -----------------------------------------------------------------------------
    def exists(self, desc: Descriptor) -> bool:
        kind = "manifests" if _is_manifest(desc) else "blobs"
        response = self.registry.request(
            "HEAD", self.path(f"{kind}/{desc.digest}"), scope=self._look_scope, expect=(200, 404),
            headers={"Accept": MANIFEST_ACCEPT} if kind == "manifests" else None,
        )
        _discard(response)
        return response.status == 200

    @contextmanager
    def fetch(self, desc: Descriptor) -> Iterator[Readable]:
        if _is_manifest(desc):
            yield io.BytesIO(self._get_manifest(desc.digest)[0])
            return
        reader = _BlobReader(self, desc)
        try:
            yield reader
        finally:
            reader.close()

    def _get_manifest(self, reference: str) -> tuple[bytes, str]:
        response = self.registry.request(
            "GET", self.path(f"manifests/{reference}"), scope=self._look_scope,
            headers={"Accept": MANIFEST_ACCEPT}, what=f"manifest {self.name}:{reference}",
        )
        data = self.registry.read_body(response, MAX_MANIFEST + 1, f"the manifest {self.name}:{reference}")
        if len(data) > MAX_MANIFEST:
            raise InvalidArtifactError(f"the manifest of {self.name}:{reference} is larger than {MAX_MANIFEST} bytes")
        claimed = response.headers.get("Docker-Content-Digest")
        expected = reference if is_digest(reference) else claimed if claimed and is_digest(claimed) else None
        algorithm = expected.partition(":")[0] if expected else "sha256"
        digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
        if expected and expected != digest:
            raise IntegrityError(f"the manifest {self.name}:{reference} from {self.registry.host} does not match "
                                 f"its digest (got {digest}, expected {expected})")
        header_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        try:  # what the document says it is, read the one strict way (nesting, odd types, bad JSON)
            node = parse_node(data, header_type)
        except InvalidArtifactError as exc:
            raise InvalidArtifactError(f"the manifest {self.name}:{reference} from {self.registry.host}: "
                                       f"{exc.message}", exc.hint) from None
        return data, node.media_type

    def fetch_reference(self, reference: str) -> tuple[Descriptor, bytes]:
        """The manifest a tag or digest names, with its bytes (verified), in one request."""
        data, media_type = self._get_manifest(reference)
        algorithm = reference.partition(":")[0] if is_digest(reference) else "sha256"
        desc = Descriptor(media_type, f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}", len(data))
        return desc, data

    def resolve(self, reference: str) -> Descriptor:
        return self.fetch_reference(reference)[0]

    def manifest_bytes(self, reference: str) -> bytes:
        return self._get_manifest(reference)[0]

    def tags(self, page_size: int = 100) -> Iterator[str]:
        """Every tag, following the ``Link`` header page by page.

        A link to another origin is followed without credentials (the registry client decides);
        a link already followed ends the list; more than ``grammar.MAX_TAG_PAGES`` pages, or
        ``grammar.MAX_TAGS`` tags, or ``grammar.MAX_TAG_LIST_BYTES`` bytes in all, is an error.
        One page at a time is held: the caller may stream them.
        """
        what = f"the tag list of {self.name}"
        url: str | None = self.registry.url(self.path(f"tags/list?n={page_size}"))
        followed: set[str] = set()
        count = size = 0
        while url is not None and url not in followed:
            if len(followed) >= grammar.MAX_TAG_PAGES:
                raise self.registry.bad_answer(what, f"it runs over more than {grammar.MAX_TAG_PAGES} pages")
            followed.add(url)
            response = self.registry.request("GET", url, scope=pull_scope(self.name), what=what)
            body = self.registry.read_body(response, MAX_TAG_PAGE + 1, what)
            if len(body) > MAX_TAG_PAGE:
                raise self.registry.bad_answer(what, f"a page is larger than {MAX_TAG_PAGE} bytes")
            size += len(body)
            if size > grammar.MAX_TAG_LIST_BYTES:
                raise self.registry.bad_answer(what, f"its pages hold more than {grammar.MAX_TAG_LIST_BYTES} bytes")
            page = self._page_tags(body, what)
            count += len(page)
            if count > grammar.MAX_TAGS:
                raise self.registry.bad_answer(what, f"it lists more than {grammar.MAX_TAGS} tags")
            yield from page
            link = _next_link(response.headers.get("Link", ""))
            url = self.registry.resolve_url(url, link, what) if link else None

    def _page_tags(self, body: bytes, what: str) -> list[str]:
        try:
            data: Any = load_json(body, "tag list")
        except InvalidArtifactError as exc:
            raise self.registry.bad_answer(what, exc.message) from None
        tags = data.get("tags") if isinstance(data, dict) else None
        if tags is None and isinstance(data, dict):
            return []  # distribution answers "tags": null for a repository without tags
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise self.registry.bad_answer(what, "'tags' is not a list of strings")
        bad = next((t for t in tags if not is_tag(t)), None)
        if bad is not None:
            raise self.registry.bad_answer(what, f"{bad[:80]!r} is not a valid tag")
        return tags

    def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        """Manifests whose subject is ``digest``: the referrers API, else the tag schema ``sha256-<hex>``."""
        query = f"?artifactType={urllib.parse.quote(artifact_type)}" if artifact_type else ""
        response = self.registry.request(
            "GET", self.path(f"referrers/{digest}{query}"), scope=pull_scope(self.name), expect=(200, 404, 405),
            headers={"Accept": mediatypes.OCI_INDEX}, what=f"the referrers of {digest}",
        )
        body = self.registry.read_body(response, MAX_MANIFEST + 1, f"the referrers of {digest}")
        if response.status != 200:  # no referrers API (e.g. CNCF distribution 2.8): the fallback tag
            tag = fallback_tag(digest)
            try:
                body = self.manifest_bytes(tag)
            except NotFoundError:
                return []
        try:
            index = parse_node(body, mediatypes.OCI_INDEX)
        except InvalidArtifactError as exc:
            raise InvalidArtifactError(f"the referrers index of {digest} from {self.registry.host}: {exc.message}",
                                       exc.hint) from None
        if index.kind != "index":
            raise InvalidArtifactError(f"the referrers of {digest} from {self.registry.host} are not an index")
        return [d for d in index.manifests if not artifact_type or d.artifact_type == artifact_type]

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

    def push(self, desc: Descriptor, content: Readable) -> None:
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
            rewind = rewindable(content)  # a file can be sent again when a retry or a redirect needs it
            start = rewind.tell() if rewind is not None else 0
            sent = False

            def body() -> Iterator[bytes | FileRegion]:
                nonlocal sent
                if rewind is not None:
                    rewind.seek(start)
                elif sent:  # a stream (registry to registry) is read once
                    raise RegistryError(
                        f"{self.registry.host} asked for the upload of {desc.digest} to be sent again (a retry or a "
                        "redirect), and it comes as a stream from another registry that cannot be read twice",
                        "run the same command again, or pull the model first and push it from the cache")
                sent = True
                return self._chunks(content, desc.size)
        response = self.registry.request(
            "PUT", _with_query(location, digest=desc.digest), scope=push_scope(self.name),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            body=body, expect=(201, 204), what=f"the upload of {desc.digest}",
        )
        _discard(response)
        self._check_digest(response, desc)

    def _chunks(self, content: Readable, size: int) -> Iterator[bytes | FileRegion]:
        """``size`` bytes of ``content`` from where it stands, as body pieces: a regular file (a cached blob)
        as one :class:`FileRegion` (sent by the kernel, not read through Python), anything else in chunks."""
        region = _file_region(content, size)
        if region is not None:
            yield region
            return
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
        minimum = response.headers.get("OCI-Chunk-Min-Length") or "0"
        if not is_decimal(minimum):
            raise self.registry.bad_answer("starting an upload", f"OCI-Chunk-Min-Length {minimum[:40]!r} is not a size")
        self._min_chunk = int(minimum)
        return self._location(response)

    def _location(self, response: urllib3.BaseHTTPResponse) -> str:
        """Where the upload goes on: the ``Location`` made absolute (on another origin, no credentials go)."""
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.registry.host} started an upload without a Location header")
        return self.registry.resolve_url(self.path("blobs/uploads/"), location, "an upload")

    def _upload_chunks(self, location: str, desc: Descriptor, content: Readable) -> str:
        chunk_size = max(self.registry.options.chunk_size or AUTO_CHUNK, self._min_chunk)
        rewind = rewindable(content)
        seekable = rewind is not None
        base = rewind.tell() if rewind is not None else 0
        offset = 0
        patches = 0
        max_patches = 2 * -(-desc.size // chunk_size) + 8  # each chunk twice (a registry that kept less), and some
        while offset < desc.size:
            patches += 1
            if patches > max_patches:
                raise self.registry.bad_answer(f"the upload of {desc.digest}",
                                               f"it took more than {max_patches} chunks without keeping the blob")
            length = min(chunk_size, desc.size - offset)
            end = offset + length - 1
            body: BodyFactory
            if seekable:  # stream the chunk from the file: memory stays flat whatever the chunk size

                def body(start: int = offset, count: int = length) -> Iterator[bytes | FileRegion]:
                    assert rewind is not None
                    rewind.seek(base + start)
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
            if received.startswith("0-") and is_decimal(received[2:]) and int(received[2:]) != end:
                kept = int(received[2:]) + 1  # bytes the registry says it holds: more than before, at most what was sent
                if not offset < kept <= end + 1:
                    raise self.registry.bad_answer(
                        f"a chunk of {desc.digest}",
                        f"after bytes {offset}-{end} it says it holds {received!r}, which is "
                        f"{'no progress' if kept <= offset else 'more than was sent'}")
                if seekable:  # the registry kept less than we sent: continue from what it has
                    offset = kept
                    continue
            offset = end + 1
        return location

    def _check_digest(self, response: urllib3.BaseHTTPResponse, desc: Descriptor) -> None:
        claimed = response.headers.get("Docker-Content-Digest")
        if claimed and claimed != desc.digest:
            raise IntegrityError(f"{self.registry.host} stored {claimed} for {desc.digest}")

    def push_reference(self, desc: Descriptor, content: Readable, reference: str) -> None:
        """PUT the manifest under ``reference``.  A manifest with a ``subject`` on a registry without the
        referrers API (no ``OCI-Subject`` in the answer, e.g. CNCF distribution 2.8) is also added to
        the subject's fallback index, the tag ``sha256-<hex>`` (distribution spec v1.1, as oras-go does)."""
        data = read_up_to(content, MAX_MANIFEST + 1)
        if len(data) > MAX_MANIFEST:
            raise InvalidArtifactError(f"the manifest {desc.digest} is larger than {MAX_MANIFEST} bytes")
        response = self.registry.request(
            "PUT", self.path(f"manifests/{reference}"), scope=push_scope(self.name),
            headers={"Content-Type": desc.media_type}, body=lambda: data, expect=(201, 200),
            what=f"the manifest {self.name}:{reference}",
        )
        _discard(response)
        self._check_digest(response, desc)
        if b'"subject"' in data and not response.headers.get("OCI-Subject"):
            node = parse_node(data, desc.media_type)
            if node.subject is not None:
                kind = desc.artifact_type or node.artifact_type or (node.config.media_type if node.config else None)
                self._index_referrer(node.subject.digest, Descriptor(node.media_type, desc.digest, len(data),
                                                                     node.annotations, kind))

    def _index_referrer(self, subject: str, referrer: Descriptor) -> None:
        """Add ``referrer`` to the fallback index of ``subject`` (read, add, write back; a referrer
        listed already is not added twice)."""
        tag = fallback_tag(subject)
        try:
            existing = list(parse_node(self.manifest_bytes(tag), mediatypes.OCI_INDEX).manifests)
        except NotFoundError:
            existing = []
        except InvalidArtifactError as exc:
            raise InvalidArtifactError(f"the referrers index {self.name}:{tag} on {self.registry.host} is not an index: "
                                       f"{exc.message}", "delete that tag, then push again") from None
        if any(d.digest == referrer.digest for d in existing):
            return
        index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX,
                 "manifests": [d.to_dict() for d in (*existing, referrer)]}
        body = canonical_json(index)
        self.push_reference(Descriptor.of_bytes(mediatypes.OCI_INDEX, body), io.BytesIO(body), tag)

    def tag(self, desc: Descriptor, reference: str) -> None:
        data = self.manifest_bytes(desc.digest)
        self.push_reference(desc, io.BytesIO(data), reference)


def _file_region(content: Readable, size: int) -> FileRegion | None:
    """``size`` bytes of ``content`` from its position as a :class:`FileRegion`, when ``content`` is a regular
    file (its ``fileno()``; a reader that reports progress passes its ``sent``); None for anything else."""
    rewind = rewindable(content)
    fileno = getattr(content, "fileno", None)
    if rewind is None or fileno is None:
        return None
    try:
        fd = fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    return FileRegion(fd, rewind.tell(), size, getattr(content, "sent", None))


def fallback_tag(digest: str) -> str:
    """The referrers tag schema: ``<alg>-<hex>`` (distribution spec v1.1, "Referrers Tag Schema")."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm[:32]}-{hexpart[:64]}"


def _with_query(url: str, **params: str) -> str:
    return url + ("&" if "?" in url else "?") + urllib.parse.urlencode(params)


def _next_link(header: str) -> str | None:
    for part in header.split(","):
        if 'rel="next"' in part or "rel=next" in part:
            start, end = part.find("<"), part.find(">")
            if 0 <= start < end:
                return part[start + 1 : end]
    return None
