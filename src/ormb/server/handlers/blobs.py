"""``/v2/<name>/blobs/<digest>``: GET and HEAD (with Range), DELETE."""

from __future__ import annotations

import os
import re

from ormb.server.context import Context, Handler
from ormb.server.handlers.common import digest_param
from ormb.server.http import Request, Response, SpecError

_RANGE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})\Z", re.ASCII)


def get(ctx: Context, request: Request, name: str, digest: str) -> Response:
    digest = digest_param(digest)
    blob = ctx.storage.open_blob(name, digest)
    if blob is None:
        raise SpecError(404, "BLOB_UNKNOWN", f"blob {digest} is not known to {name}")
    try:
        size = os.fstat(blob.fileno()).st_size
        start, count, status, headers = 0, size, 200, {
            "Content-Type": "application/octet-stream", "Docker-Content-Digest": digest,
            "Accept-Ranges": "bytes", "ETag": f'"{digest}"'}
        wanted = request.header("Range").strip()
        if wanted:
            start, count = _range(wanted, size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + count - 1}/{size}"
    except BaseException:
        blob.close()
        raise
    return Response(status, headers=headers, file=blob, file_range=(start, count))


def _range(value: str, size: int) -> tuple[int, int]:
    found = _RANGE.match(value)
    unsatisfiable = SpecError(416, "BLOB_UNKNOWN", f"unsupported or unsatisfiable Range {value[:100]!r}",
                              {"Content-Range": f"bytes */{size}"})
    if not found or (not found.group(1) and not found.group(2)):
        raise unsatisfiable
    if found.group(1):
        start = int(found.group(1))
        end = min(int(found.group(2)), size - 1) if found.group(2) else size - 1
    else:  # the last N bytes
        start, end = max(0, size - int(found.group(2))), size - 1
    if start >= size or start > end:
        raise unsatisfiable
    return start, end - start + 1


def delete(ctx: Context, request: Request, name: str, digest: str) -> Response:
    digest = digest_param(digest)
    if not ctx.storage.unlink(name, digest):
        raise SpecError(404, "BLOB_UNKNOWN", f"blob {digest} is not known to {name}")
    return Response(202)


HANDLERS: dict[str, Handler] = {"GET": get, "HEAD": get, "DELETE": delete}
