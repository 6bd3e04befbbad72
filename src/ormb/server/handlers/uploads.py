"""``/v2/<name>/blobs/uploads/<id>``: POST (new session, single-request upload, mount), PATCH,
PUT (the final chunk and the digest), GET (status) and DELETE (cancel).  A mount without
``from`` takes the blob from any repository the caller may pull it from.

A session is held by one request at a time (the store's lock): a second concurrent request on
it gets 416 with the session's current range, as an out-of-order chunk does.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from contextlib import contextmanager

from ormb.oci.grammar import is_repository
from ormb.server.context import Context, Handler
from ormb.server.handlers.common import digest_param
from ormb.server.http import ClientGone, Request, Response, SpecError
from ormb.server.storage_api import UploadConflict, UploadWriter

_CONTENT_RANGE = re.compile(r"(?:bytes )?([0-9]{1,19})-([0-9]{1,19})\Z", re.ASCII)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
MOUNT_CANDIDATES = 100  # repositories tried for a mount without ``from``


def _location(name: str, session: str) -> str:
    return f"/v2/{name}/blobs/uploads/{session}"


def _range(size: int) -> str:
    return f"0-{max(size - 1, 0)}"


def _session_headers(name: str, session: str, size: int) -> dict[str, str]:
    return {"Location": _location(name, session), "Range": _range(size), "Docker-Upload-UUID": session}


@contextmanager
def _held(ctx: Context, name: str, session: str) -> Iterator[UploadWriter]:
    try:
        with ctx.storage.open_session(name, session) as writer:
            yield writer
    except LookupError:
        raise SpecError(404, "BLOB_UPLOAD_UNKNOWN", f"upload {session[:100]!r} is not known") from None
    except UploadConflict as exc:
        size = ctx.storage.session_size(name, session) or 0
        raise SpecError(416, "BLOB_UPLOAD_INVALID", str(exc), _session_headers(name, session, size)) from None


def _append(writer: UploadWriter, request: Request) -> int:
    """Append the body; a broken body leaves the session as it was, a full disk ends it (507)."""
    try:
        return writer.append(request.body())
    except OSError as exc:
        if exc.errno in DISK_FULL:
            writer.cancel()
            raise SpecError(507, "UNKNOWN", "the registry's disk is full; the upload was discarded "
                            "(ask the operator to free space, e.g. 'ormb registry gc')") from None
        raise


def _check_start(request: Request, name: str, session: str, size: int, final: bool) -> None:
    value = request.header("Content-Range").strip()
    if not value:
        return
    found = _CONTENT_RANGE.match(value)
    if not found:
        raise SpecError(400 if not final else 416, "BLOB_UPLOAD_INVALID", f"malformed Content-Range {value[:100]!r}",
                        _session_headers(name, session, size))
    start, end = int(found.group(1)), int(found.group(2))
    if start != size or end < start:
        raise SpecError(416, "BLOB_UPLOAD_INVALID", f"the upload is at byte {size}; a chunk starting at "
                        f"{start} is out of order", _session_headers(name, session, size))
    length = request.content_length()
    if length is not None and length != end - start + 1:
        raise SpecError(400, "BLOB_UPLOAD_INVALID", "Content-Length does not match Content-Range")


def post(ctx: Context, request: Request, name: str, session: str) -> Response:
    if session:
        raise SpecError(405, "UNSUPPORTED", "POST goes to /blobs/uploads/", {"Allow": "GET, PATCH, PUT, DELETE"})
    mount, source = request.query.get("mount"), request.query.get("from")
    if mount is not None:
        digest = digest_param(mount)
        if _mount(ctx, request, name, digest, source):
            return Response(201, headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})
        # not visible to this user: fall back to a normal upload session (the spec's 202)
    single = request.query.get("digest")
    if single is not None and mount is None:  # the whole blob in this one request
        digest = digest_param(single)
        return _finish(ctx, request, name, ctx.storage.new_session(name), digest, monolithic=True)
    session = ctx.storage.new_session(name)
    return Response(202, headers=_session_headers(name, session, 0))


def _mount(ctx: Context, request: Request, name: str, digest: str, source: str | None) -> bool:
    """Link ``digest`` into ``name`` from ``source`` (or, with no ``from``, from any repository holding it)
    when the caller may pull it there: a mount never reveals a blob the caller could not pull."""
    if source is None:
        candidates = ctx.storage.linked_from(digest, MOUNT_CANDIDATES)
    else:
        candidates = [source] if is_repository(source) else []
    for repository in candidates:
        if ctx.authz.may(request.user, repository, "pull") and ctx.storage.linked(repository, digest) is not None:
            return ctx.storage.link(name, digest)
    return False


def status(ctx: Context, request: Request, name: str, session: str) -> Response:
    size = ctx.storage.session_size(name, session)
    if size is None:
        raise SpecError(404, "BLOB_UPLOAD_UNKNOWN", f"upload {session[:100]!r} is not known")
    return Response(204, headers=_session_headers(name, session, size))


def cancel(ctx: Context, request: Request, name: str, session: str) -> Response:
    with _held(ctx, name, session) as writer:
        writer.cancel()
    return Response(204)


def patch(ctx: Context, request: Request, name: str, session: str) -> Response:
    with _held(ctx, name, session) as writer:
        _check_start(request, name, session, writer.size, final=False)
        size = _append(writer, request)
    return Response(202, headers=_session_headers(name, session, size))


def put(ctx: Context, request: Request, name: str, session: str) -> Response:
    digest = request.query.get("digest")
    if not digest:
        raise SpecError(400, "DIGEST_INVALID", "the final PUT needs ?digest=")
    return _finish(ctx, request, name, session, digest_param(digest), monolithic=False)


def _finish(ctx: Context, request: Request, name: str, session: str, digest: str, monolithic: bool) -> Response:
    """Append the final body, then verify the bytes on disk and commit the blob."""
    with _held(ctx, name, session) as writer:
        try:
            if not monolithic:
                _check_start(request, name, session, writer.size, final=True)
            _append(writer, request)
        except ClientGone:
            if monolithic:
                writer.cancel()  # a broken single-request upload leaves nothing behind
            raise  # a chunked session keeps what was acknowledged
        except SpecError as err:
            if monolithic or err.status != 416:
                writer.cancel()  # a refused body ends the session
            raise
        actual = writer.digest(digest.partition(":")[0])
        if actual != digest:
            writer.cancel()
            raise SpecError(400, "DIGEST_INVALID", f"the uploaded content has digest {actual}, not {digest}")
        writer.commit(name, digest)
    return Response(201, headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})


HANDLERS: dict[str, Handler] = {"POST": post, "GET": status, "DELETE": cancel, "PATCH": patch, "PUT": put}
