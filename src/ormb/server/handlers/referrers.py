"""``/v2/<name>/referrers/<digest>``: the manifests whose subject is ``digest``, with the artifactType filter."""

from __future__ import annotations

from typing import Any

from ormb.oci import mediatypes
from ormb.server.context import Context, Handler
from ormb.server.handlers.common import digest_param
from ormb.server.http import Request, Response


def get(ctx: Context, request: Request, name: str, digest: str) -> Response:
    digest = digest_param(digest)
    wanted = request.query.get("artifactType")
    manifests = []
    for record in ctx.storage.referrers(name, digest):
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
    return Response.json(200, {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": manifests}, headers)


HANDLERS: dict[str, Handler] = {"GET": get}
