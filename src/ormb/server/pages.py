"""The model catalog web pages: repositories, their tags, and a page per model.

They read the registry's storage through the same interface as the API and obey the same
authorisation decision (:meth:`ormb.server.authz.Authoriser.authorise`, ``browser=True``: the
browser is challenged with Basic): a repository's pages need ``pull`` on it, the list shows
what the viewer may pull, anonymous viewers see what the policy's anonymous rules allow (and
are asked to log in when they may see nothing), and a model page reads only blobs linked to
the repository shown, through :func:`ormb.model.loaded.load_model` (only the fields the
manifest's media type defines; an index's entries only as links into the same repository).

What a page renders is capped, with a link to the next part: :data:`PER_PAGE` rows, and a
layer's file listing is read only up to :data:`LISTING_CAP` files (a hostile layer may list
millions).
"""

from __future__ import annotations

import io
import tarfile
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, BinaryIO

from isal import igzip
from jinja2 import Environment, PackageLoader, select_autoescape

from ormb.errors import NotFoundError, OrmbError
from ormb.model.loaded import load_model
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor
from ormb.oci.grammar import is_decimal, is_digest, is_repository
from ormb.oci.graph import parse_node
from ormb.server.context import Context
from ormb.server.handlers.manifests import resolve
from ormb.server.http import Request, Response, SpecError
from ormb.server.storage_api import ManifestRecord
from ormb.units import human_size

PER_PAGE = 1000  # rows a page renders (files, tags, repositories, index entries); a link shows the next ones
LISTING_CAP = 10_000  # files read from one layer's tar listing (and remembered); the page says where it stops
MEMBERS_CAP = 2 * LISTING_CAP  # tar members read at most (directories and links count too)

_env = Environment(loader=PackageLoader("ormb.server", "templates"), autoescape=select_autoescape(["html"]))


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


_env.filters["size"] = human_size
_env.filters["when"] = _when


def page(ctx: Context, request: Request) -> Response | None:
    """Answer a catalog page; None when the path is not one of them."""
    handler = PAGES.get(request.path)
    if request.method not in ("GET", "HEAD") or handler is None:
        return None
    try:
        return handler(ctx, request)
    except SpecError as err:
        if err.status == 401:  # the browser asks for a user name and password
            return Response(401, b"Log in to browse this registry.\n",
                            {**err.headers, "Content-Type": "text/plain", "Cache-Control": "no-store"})
        if err.status == 403:  # logged in, not allowed: the same answer as for a repository that does not exist
            return _html("missing.html", status=404, what=f"repository {request.query.get('name', '')}",
                         user=request.user or "", sign_in=False)
        raise


def index_page(ctx: Context, request: Request) -> Response:
    authz, access = ctx.authz, ctx.authz.access
    user = authz.identify(request, browser=True).user
    if access.enabled and user is None and not access.anonymous_may_pull:
        raise authz.challenge(request, None, "pull", None, "log in to browse this registry", browser=True)
    search = request.query.get("q", "").strip().lower()
    start = _start(request)
    visible = [name for name in ctx.storage.catalog() if search in name and authz.may(user, name, "pull")]
    repositories = []
    for name in visible[start:start + PER_PAGE]:
        tags = ctx.storage.tag_records(name)
        repositories.append({"name": name, "tags": len(tags), "updated": max((t.updated for t in tags), default=None)})
    more = _more(request, start, len(visible) > start + PER_PAGE)
    return _html("index.html", repositories=repositories, search=search, more=more, **_viewer(ctx, user))


def repository_page(ctx: Context, request: Request) -> Response:
    name = request.query.get("name", "")
    user = _authorised(ctx, request, name)
    if user is False:
        return _missing(ctx, request, f"repository {name}")
    start = _start(request)
    tags = ctx.storage.tag_records(name)
    more = _more(request, start, len(tags) > start + PER_PAGE)
    return _html("repository.html", name=name, tags=tags[start:start + PER_PAGE], more=more, **_viewer(ctx, user))


def model_page(ctx: Context, request: Request) -> Response:
    name, reference = request.query.get("name", ""), request.query.get("ref", "")
    user = _authorised(ctx, request, name)
    if user is False:
        return _missing(ctx, request, f"repository {name}")
    try:
        record = resolve(ctx, name, reference)
    except SpecError:
        return _missing(ctx, request, f"{name}:{reference}")
    start = _start(request)
    model = describe_model(ctx, name, record, start)
    more = _more(request, start, model["more"])
    pull_ref = f"{request.host}/{name}@{record.digest}" if is_digest(reference) else f"{request.host}/{name}:{reference}"
    return _html("model.html", name=name, reference=reference, record=record, model=model, more=more,
                 listing_cap=f"{LISTING_CAP:,}", pull=f"ormb pull {pull_ref}", **_viewer(ctx, user))


def login_page(ctx: Context, request: Request) -> Response:
    """Where the "Sign in" link leads: asks the browser for credentials, then back to the list."""
    if ctx.authz.access.enabled and ctx.authz.identify(request, browser=True).user is None:
        raise ctx.authz.challenge(request, None, "pull", None, "log in", browser=True)
    return Response(303, b"", {"Location": "/", "Cache-Control": "no-store"})


PAGES: dict[str, Callable[[Context, Request], Response]] = {
    "/": index_page, "/repository": repository_page, "/model": model_page, "/login": login_page}


def _authorised(ctx: Context, request: Request, name: str) -> str | None | bool:
    """The viewer when they may pull ``name`` and it exists; False for a page that says "not here".
    Raises the 401 that makes the browser ask for credentials (anonymous and not allowed)."""
    if not is_repository(name):
        return False
    user = ctx.authz.authorise(request, name, "pull", browser=True)  # the API's decision, before existence
    return user if ctx.storage.repository_exists(name) else False


def _viewer(ctx: Context, user: str | None | bool) -> dict[str, Any]:
    access = ctx.authz.access
    return {"user": user or "", "sign_in": access.enabled and not user}


def _missing(ctx: Context, request: Request, what: str) -> Response:
    return _html("missing.html", status=404, what=what, **_viewer(ctx, request.user))


def _start(request: Request) -> int:
    value = request.query.get("start", "0")
    return min(int(value), 1 << 31) if is_decimal(value) else 0


def _more(request: Request, start: int, more: bool) -> str | None:
    """The link to the next :data:`PER_PAGE` rows of this page, when there are more."""
    if not more:
        return None
    query = {k: v for k, v in request.query.items() if k != "start"}
    return f"{request.path}?{urllib.parse.urlencode({**query, 'start': start + PER_PAGE})}"


def _html(template: str, status: int = 200, **context: Any) -> Response:
    body = _env.get_template(template).render(**context).encode("utf-8")
    return Response(status, body, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
                                   "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                                   "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                                              "script-src 'unsafe-inline'; frame-ancestors 'none'"})


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


def describe_model(ctx: Context, name: str, record: ManifestRecord, start: int = 0) -> dict[str, Any]:
    """What the model page shows: the model as ``ormb inspect`` reads it (:func:`load_model`), read
    through the repository's own content, plus the files of an ormb layer (rows ``start`` to
    ``start + PER_PAGE``; ``more`` when there are further ones)."""
    model: dict[str, Any] = {"kind": "unknown", "config_type": "", "media_type": record.media_type, "files": [],
                             "fields": [], "inputs": [], "outputs": [], "metrics": [], "hyper_parameters": [],
                             "size": 0, "entries": [], "more": False, "listing_capped": False}
    if record.media_type not in mediatypes.MANIFEST_TYPES:
        entries = _index_entries(ctx, name, record)
        model.update(kind="index", entries=entries[start:start + PER_PAGE], more=len(entries) > start + PER_PAGE)
        return model
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
    files: list[tuple[str, int | None]] = []
    if not loaded.is_modelpack:
        for layer in loaded.manifest.layers:
            if layer.media_type in (mediatypes.ORMB_LAYER, "application/vnd.oci.image.layer.v1.tar+gzip"):
                listed, capped = _tar_files(ctx, name, layer.digest)
                model["listing_capped"] |= capped
                files += listed
    files = files or loaded.files()
    model.update(files=files[start:start + PER_PAGE], more=len(files) > start + PER_PAGE)
    return model


def _index_entries(ctx: Context, name: str, record: ManifestRecord) -> list[dict[str, Any]]:
    """An index's entries, each linked only when it is a manifest of this repository."""
    try:
        node = parse_node(ctx.storage.manifest_bytes(record), record.media_type)
    except (OrmbError, OSError):
        return []
    return [{"digest": d.digest, "media_type": d.media_type, "artifact_type": d.artifact_type or "",
             "linked": ctx.storage.manifest(name, d.digest) is not None} for d in node.manifests]


def _tar_files(ctx: Context, name: str, digest: str) -> tuple[list[tuple[str, int]], bool]:
    """The regular files a tar+gzip layer of ``name`` lists (sorted by path), and whether the listing
    went on past what was read: at most LISTING_CAP files and MEMBERS_CAP members, remembered."""
    if not isinstance(digest, str) or not is_digest(digest):
        return [], False
    cached = ctx.storage.layer_files(digest)
    if cached is not None and ctx.storage.linked(name, digest) is not None:
        return [f for f in cached if f[1] != CAPPED[1]], CAPPED in cached
    blob = ctx.storage.open_blob(name, digest)
    if blob is None:
        return [], False
    files: list[tuple[str, int]] = []
    capped = False
    try:
        with blob:
            stream = igzip.IGzipFile(fileobj=blob, mode="rb")  # type: ignore[no-untyped-call]
            with tarfile.open(fileobj=stream, mode="r|", bufsize=1 << 20) as tar:
                for count, member in enumerate(tar, 1):
                    if member.isreg():  # names as text a page can show (tar names may be any bytes)
                        files.append((member.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                                      member.size))
                    if len(files) >= LISTING_CAP or count >= MEMBERS_CAP:
                        capped = tar.next() is not None  # anything after this one?
                        break
    except (OSError, tarfile.TarError, EOFError):
        return sorted(files), capped
    files.sort()
    ctx.storage.remember_layer_files(digest, [*files, CAPPED] if capped else files)
    return files, capped


CAPPED = ("", -1)  # the row that marks a remembered listing as cut short (no file has size -1)
