"""The model catalog web pages: repositories, their tags, and a page per model.

They read the registry's storage through the same interface as the API and obey the same
authorisation decision (:class:`ormb.server.authz.Authoriser`): with authentication on, the
browser is asked for Basic credentials, a user sees only the repositories they may pull, and
a model page reads only blobs linked to the repository shown.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, BinaryIO

from isal import igzip
from jinja2 import Environment, PackageLoader, select_autoescape

from ormb.errors import NotFoundError, OrmbError
from ormb.model.loaded import load_model
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor
from ormb.oci.grammar import is_digest, is_repository
from ormb.server.context import Context
from ormb.server.handlers.manifests import resolve
from ormb.server.http import Request, Response, SpecError
from ormb.server.storage_api import ManifestRecord
from ormb.units import human_size

PATHS = ("/", "/repository", "/model")

_env = Environment(loader=PackageLoader("ormb.server", "templates"), autoescape=select_autoescape(["html"]))


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


_env.filters["size"] = human_size
_env.filters["when"] = _when


def page(ctx: Context, request: Request) -> Response | None:
    """Answer a catalog page; None when the path is not one of them."""
    if request.method not in ("GET", "HEAD") or request.path not in PATHS:
        return None
    user = _browser_user(ctx, request)
    if user is None:
        return Response(401, b"Log in to browse this registry.\n",
                        {"WWW-Authenticate": 'Basic realm="ormb registry"', "Content-Type": "text/plain"})
    storage, authz, query = ctx.storage, ctx.authz, request.query
    if request.path == "/":
        search = query.get("q", "").strip().lower()
        repositories = []
        for name in storage.catalog():
            if authz.may(user or None, name, "pull") and search in name:
                tags = storage.tag_records(name)
                repositories.append({"name": name, "tags": len(tags),
                                     "updated": max((t.updated for t in tags), default=None)})
        return _html("index.html", repositories=repositories, search=search, user=user)
    name = query.get("name", "")
    if not is_repository(name) or not storage.repository_exists(name) or not authz.may(user or None, name, "pull"):
        return _html("missing.html", status=404, what=f"repository {name}", user=user)
    if request.path == "/repository":
        return _html("repository.html", name=name, tags=storage.tag_records(name), user=user)
    reference = query.get("ref", "")
    try:
        record = resolve(ctx, name, reference)
    except SpecError:
        return _html("missing.html", status=404, what=f"{name}:{reference}", user=user)
    model = describe_model(ctx, name, record)
    pull_ref = f"{request.host}/{name}@{record.digest}" if is_digest(reference) else f"{request.host}/{name}:{reference}"
    return _html("model.html", name=name, reference=reference, record=record, model=model,
                 pull=f"ormb pull {pull_ref}", user=user)


def _browser_user(ctx: Context, request: Request) -> str | None:
    """The user name ('' for anonymous) when the page may be shown; None to ask for credentials."""
    access = ctx.authz.access
    if not access.enabled:
        return ""
    user = access.basic_user(request.header("Authorization"))
    if isinstance(user, str):
        request.user = user
        return user
    if user is None and access.anonymous_pull:
        return ""
    return None


def _html(template: str, status: int = 200, **context: Any) -> Response:
    body = _env.get_template(template).render(**context).encode("utf-8")
    return Response(status, body, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"})


class RepositoryContent:
    """The blobs and manifests of one repository as a Target (:class:`~ormb.content.target.Fetcher`),
    for :func:`ormb.model.loaded.load_model`: nothing linked to another repository is ever read."""

    def __init__(self, ctx: Context, repository: str) -> None:
        self._storage, self._repository = ctx.storage, repository

    @contextmanager
    def fetch(self, desc: Descriptor) -> Iterator[BinaryIO]:
        record = self._storage.manifest(self._repository, desc.digest) if is_digest(desc.digest) else None
        if record is not None:
            yield io.BytesIO(self._storage.manifest_bytes(record))
            return
        blob = self._storage.open_blob(self._repository, desc.digest)
        if blob is None:
            raise NotFoundError(f"blob {desc.digest} is not in {self._repository}")
        with blob:
            yield blob


def describe_model(ctx: Context, name: str, record: ManifestRecord) -> dict[str, Any]:
    """What the model page shows: the model as ``ormb inspect`` reads it (:func:`load_model`), read
    through the repository's own content, plus the sizes of an ormb layer's files."""
    model: dict[str, Any] = {"kind": "unknown", "config_type": "", "media_type": record.media_type, "files": [],
                             "fields": [], "inputs": [], "outputs": [], "metrics": [], "hyper_parameters": [],
                             "size": 0}
    if record.media_type not in mediatypes.MANIFEST_TYPES:
        return model  # an index: its entries are models of their own
    try:
        loaded = load_model(RepositoryContent(ctx, name), Descriptor(record.media_type, record.digest, record.size))
    except OrmbError:
        return model
    meta = loaded.metadata
    model.update(kind="modelpack" if loaded.is_modelpack else "ormb", size=loaded.size,
                 config_type=loaded.manifest.config.media_type)
    for label, value in (("Format", meta.format), ("Framework", meta.framework), ("Author", meta.author),
                         ("Description", meta.description), ("Created", meta.created), ("GPU type", meta.gpu_type),
                         ("Tags", ", ".join(meta.tags or []))):
        if value:
            model["fields"].append((label, str(value)))
    if meta.signature:
        model["inputs"] = [t.model_dump(by_alias=True) for t in meta.signature.inputs or []]
        model["outputs"] = [t.model_dump(by_alias=True) for t in meta.signature.outputs or []]
    model["metrics"] = [(stage, m.name, m.value) for stage, items in (meta.metrics or {}).items() for m in items]
    model["hyper_parameters"] = [(h.name, h.value) for h in meta.hyper_parameters or []]
    if loaded.is_modelpack:
        model["files"] = loaded.files()
    else:
        for layer in loaded.manifest.layers:
            if layer.media_type in (mediatypes.ORMB_LAYER, "application/vnd.oci.image.layer.v1.tar+gzip"):
                model["files"] += _tar_files(ctx, name, layer.digest)
        model["files"] = model["files"] or loaded.files()
    return model


def _tar_files(ctx: Context, name: str, digest: str) -> list[tuple[str, int]]:
    if not isinstance(digest, str) or not is_digest(digest):
        return []
    cached = ctx.storage.layer_files(digest)
    if cached is not None and ctx.storage.linked(name, digest) is not None:
        return cached
    blob = ctx.storage.open_blob(name, digest)
    if blob is None:
        return []
    files: list[tuple[str, int]] = []
    try:
        with blob:
            stream = igzip.IGzipFile(fileobj=blob, mode="rb")  # type: ignore[no-untyped-call]
            with tarfile.open(fileobj=stream, mode="r|", bufsize=1 << 20) as tar:
                files = [(m.name, m.size) for m in tar if m.isreg()]
    except (OSError, tarfile.TarError, EOFError):
        return files
    ctx.storage.remember_layer_files(digest, files)
    return files
