"""``/v2/<name>/manifests/<reference>``: GET, HEAD, PUT (validated by :mod:`ormb.server.validate`), DELETE.

A PUT by digest may tag the manifest too, with ``?tag=a&tag=b`` (distribution-spec 1.1+dev); the
answer names the tags set in ``OCI-Tag``.  This is how a manifest hashed with sha512 gets a tag.
"""

from __future__ import annotations

import time

from ormb.oci.grammar import MAX_MANIFEST, is_digest, is_tag
from ormb.server.context import Context, Handler
from ormb.server.http import Request, Response, SpecError
from ormb.server.storage_api import ManifestRecord
from ormb.server.validate import validate_manifest


def resolve(ctx: Context, name: str, reference: str) -> ManifestRecord:
    """The manifest a tag or digest names in ``name``; 404 when there is none (used by the catalog too)."""
    if is_digest(reference):
        record = ctx.storage.manifest(name, reference)
    elif is_tag(reference):
        digest = ctx.storage.resolve_tag(name, reference)
        record = ctx.storage.manifest(name, digest) if digest else None
    elif ":" in reference:
        raise SpecError(400, "DIGEST_INVALID", f"invalid digest {reference[:200]!r}")
    else:
        raise SpecError(400, "MANIFEST_INVALID", f"invalid tag {reference[:200]!r}")
    if record is None:
        raise SpecError(404, "MANIFEST_UNKNOWN", f"manifest {reference[:200]} is not known to {name}")
    return record


def get(ctx: Context, request: Request, name: str, reference: str) -> Response:
    record = resolve(ctx, name, reference)
    data = ctx.storage.manifest_bytes(record)
    return Response(200, data, {"Content-Type": record.media_type, "Docker-Content-Digest": record.digest,
                                "ETag": f'"{record.digest}"'})


def put(ctx: Context, request: Request, name: str, reference: str) -> Response:
    if not is_digest(reference) and not is_tag(reference):
        raise SpecError(400, "MANIFEST_INVALID" if ":" not in reference else "DIGEST_INVALID",
                        f"invalid tag or digest {reference[:200]!r}")
    tags = [] if is_digest(reference) else [reference]
    if is_digest(reference):
        tags = list(dict.fromkeys(request.query_lists.get("tag", [])))
        bad = next((t for t in tags if not is_tag(t)), None)
        if bad is not None:
            raise SpecError(400, "MANIFEST_INVALID", f"invalid tag {bad[:200]!r} in ?tag=")
    data = request.read_all(MAX_MANIFEST)
    checked = validate_manifest(data, reference, request.header("Content-Type"))
    record = ManifestRecord(name, checked.digest, checked.media_type, checked.artifact_type, len(data),
                            checked.subject, checked.annotations, time.time(), checked.layers_size)
    missing = ctx.storage.put_manifest(record, data, checked.children, checked.blobs, tags, sparse=ctx.sparse)
    if missing:
        kind = "manifest" if missing[0] in checked.children else "blob"
        raise SpecError(400, "MANIFEST_BLOB_UNKNOWN", f"{kind} {missing[0]} is not in {name}")
    headers = {"Location": f"/v2/{name}/manifests/{checked.digest}", "Docker-Content-Digest": checked.digest}
    if checked.subject:
        headers["OCI-Subject"] = checked.subject
    if tags and is_digest(reference):
        headers["OCI-Tag"] = ", ".join(tags)
    return Response(201, headers=headers)


def delete(ctx: Context, request: Request, name: str, reference: str) -> Response:
    if is_digest(reference):
        if not ctx.storage.delete_manifest(name, reference):
            raise SpecError(404, "MANIFEST_UNKNOWN", f"manifest {reference} is not known to {name}")
    elif is_tag(reference):
        if not ctx.storage.delete_tag(name, reference):
            raise SpecError(404, "MANIFEST_UNKNOWN", f"tag {reference} is not known to {name}")
    else:
        raise SpecError(400, "DIGEST_INVALID", f"invalid reference {reference[:200]!r}")
    return Response(202)


HANDLERS: dict[str, Handler] = {"GET": get, "HEAD": get, "PUT": put, "DELETE": delete}
