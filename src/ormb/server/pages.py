"""The model catalog web pages: repositories, their tags, and a page per model.

They read the registry's storage through the same interface as the API and obey the same
authorisation decision (:meth:`ormb.server.authz.Authoriser.authorise`, ``browser=True``: the
browser is challenged with Basic): a repository's pages need ``pull`` on it, the list shows
what the viewer may pull, anonymous viewers see what the policy's anonymous rules allow (and
are asked to log in when they may see nothing), and a model page reads only blobs linked to
the repository shown, through :func:`ormb.model.loaded.load_model` (only the fields the
manifest's media type defines; an index's entries only as links into the same repository).

What a page renders is capped, with a link to the next part: :data:`PER_PAGE` rows, and a
model's file listing is read only up to :data:`LISTING_CAP` files (a hostile layer may list
millions); the config's tables (signature, metrics, hyper-parameters) show their first
:data:`PER_PAGE` rows and say how many more there are.
"""

from __future__ import annotations

import secrets
import threading
import urllib.parse
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from ormb.errors import OrmbError
from ormb.model import modelpack
from ormb.model.loaded import LoadedModel, load_model
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest
from ormb.oci.grammar import is_decimal, is_digest, is_repository
from ormb.oci.graph import parse_node
from ormb.server.context import Context
from ormb.server.handlers.manifests import resolve
from ormb.server.http import Request, Response, SpecError
from ormb.server.model_files import LISTING_CAP, ModelFiles, RepositoryContent
from ormb.server.modelcard import CARD_CAP, render_card
from ormb.server.storage_api import ManifestRecord
from ormb.signing import FileRecords, catalog_status
from ormb.units import human_size

PER_PAGE = 1000  # rows a page renders (files, tags, repositories, index entries); a link shows the next ones
UNREADABLE_SHOWN = 10  # layers named as unreadable on a model page; the rest are counted

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
    found = _viewable(ctx, request, name, reference)
    if isinstance(found, Response):
        return found
    user, record = found
    start = _start(request)
    model = describe_model(ctx, name, record, start)
    more = _more(request, start, model["more"])
    pull = ctx.names.pull_command(request, name, record.digest if is_digest(reference) else reference)
    return _html("model.html", name=name, reference=reference, record=record, model=model, more=more,
                 listing_cap=f"{LISTING_CAP:,}", pull=pull, **_viewer(ctx, user))


def file_page(ctx: Context, request: Request) -> Response:
    """A model's card or licence as text: only those files, read as the model page reads them."""
    name, reference, path = (request.query.get(k, "") for k in ("name", "ref", "path"))
    found = _viewable(ctx, request, name, reference)
    if isinstance(found, Response):
        return found
    user, record = found
    described = _described(ctx, name, record) if record.media_type in mediatypes.MANIFEST_TYPES else None
    if described is None:
        return _missing(ctx, request, f"{name}:{reference}")
    document = ModelFiles(ctx, name, described).document(path)
    if document is None:
        return _html("missing.html", status=404, what=f"file {path!r} of {name}:{reference} to show (the catalog "
                     "shows a model's card and licence; pull the model for its other files)", **_viewer(ctx, user))
    model_url = "/model?" + urllib.parse.urlencode({"name": name, "ref": reference})
    return _html("file.html", name=name, reference=reference, document=document, model_url=model_url,
                 cap=human_size(CARD_CAP), **_viewer(ctx, user))


def login_page(ctx: Context, request: Request) -> Response:
    """Where the "Sign in" link leads: asks the browser for credentials, then back to the list."""
    if ctx.authz.access.enabled and ctx.authz.identify(request, browser=True).user is None:
        raise ctx.authz.challenge(request, None, "pull", None, "log in", browser=True)
    return Response(303, b"", {"Location": "/", "Cache-Control": "no-store"})


PAGES: dict[str, Callable[[Context, Request], Response]] = {
    "/": index_page, "/repository": repository_page, "/model": model_page, "/file": file_page, "/login": login_page}


def _viewable(ctx: Context, request: Request, name: str,
              reference: str) -> tuple[str | None | bool, ManifestRecord] | Response:
    """The viewer and the manifest ``name:reference`` names, if the viewer may pull it; else the page that says
    it is not there (the same for a repository that is hidden and one that is missing)."""
    user = _authorised(ctx, request, name)
    if user is False:
        return _missing(ctx, request, f"repository {name}")
    try:
        return user, resolve(ctx, name, reference)
    except SpecError:
        return _missing(ctx, request, f"{name}:{reference}")


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
    """A page; its own scripts carry a nonce, so no other script runs (a model card is text from the
    model's pusher: rendered without raw HTML, and this is the second wall)."""
    nonce = secrets.token_urlsafe(18)
    body = _env.get_template(template).render(nonce=nonce, **context).encode("utf-8")
    return Response(status, body, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
                                   "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                                   "Referrer-Policy": "no-referrer",
                                   "Content-Security-Policy": f"default-src 'none'; script-src 'nonce-{nonce}'; "
                                   "style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; "
                                   "frame-ancestors 'none'"})


def describe_model(ctx: Context, name: str, record: ManifestRecord, start: int = 0) -> dict[str, Any]:
    """What the model page shows: the model as ``ormb inspect`` reads it (:func:`load_model`), read
    through the repository's own content, its files (rows ``start`` to ``start + PER_PAGE``; ``more``
    when there are further ones), its model card rendered and its licence's path."""
    model: dict[str, Any] = {"kind": "unknown", "config_type": "", "media_type": record.media_type, "files": [],
                             "fields": [], "inputs": [], "outputs": [], "metrics": [], "hyper_parameters": [],
                             "size": record.layers_size, "entries": [], "more": False, "listing_capped": False,
                             "card": None, "licence": None, "unreadable": [], "unreadable_more": 0,
                             "signature_left_out": 0, "metrics_left_out": 0, "hyper_parameters_left_out": 0,
                             "referrers": [], "more_referrers": 0, "signed_by": None, "unsigned_because": ""}
    if record.media_type not in mediatypes.MANIFEST_TYPES:
        entries = _index_entries(ctx, name, record)
        model.update(kind="index", entries=entries[start:start + PER_PAGE], more=len(entries) > start + PER_PAGE)
        return model
    described = _described(ctx, name, record)
    if described is None:
        return model
    model.update(described.fields)
    model.update(_signatures(ctx, name, record, described.manifest))  # signatures come and go: never kept
    files = ModelFiles(ctx, name, described)
    model.update(files=files.files[start:start + PER_PAGE], more=len(files.files) > start + PER_PAGE,
                 listing_capped=files.capped, licence=files.licence_path(),
                 unreadable=[digest[:19] for digest in files.unreadable[:UNREADABLE_SHOWN]],
                 unreadable_more=max(0, len(files.unreadable) - UNREADABLE_SHOWN))
    card = files.card()
    file_url = "/file?" + urllib.parse.urlencode({"name": name, "ref": record.digest}) + "&path="
    if card is not None:
        model["card"] = {"path": card.path, "html": render_card(card.text, card.path, file_url), "cut": card.cut,
                         "url": file_url + urllib.parse.quote(card.path, safe="/")}
    if model["licence"]:
        model["licence_url"] = file_url + urllib.parse.quote(model["licence"], safe="/")
    return model


def _described(ctx: Context, name: str, record: ManifestRecord) -> _Description | None:
    """The model as ``ormb inspect`` reads it (:func:`load_model`, through the repository's own content),
    kept by manifest digest (a config of 16 MiB takes seconds to read); None when it cannot be read."""
    key = (name, record.digest)
    with _DESCRIBED_LOCK:
        kept = _DESCRIBED.setdefault(ctx.storage, {})
        found = kept.pop(key, None)
        if found is not None:
            kept[key] = found  # the most recently used last
            return found
    try:
        loaded = load_model(RepositoryContent(ctx, name), Descriptor(record.media_type, record.digest, record.size))
    except OrmbError:
        return None
    described = _Description(_describe(loaded), loaded.manifest, loaded.is_modelpack,
                             tuple(loaded.files()[:LISTING_CAP]) if not loaded.is_modelpack else ())
    with _DESCRIBED_LOCK:
        kept[key] = described
        while len(kept) > DESCRIBED_KEPT:
            del kept[next(iter(kept))]
    return described


@dataclass(frozen=True)
class _Description:
    """What the model page shows of a manifest and its config (fields, capped tables), and what
    :class:`ModelFiles` reads of them: kept, so a later view does not read the config again."""

    fields: dict[str, Any]
    manifest: Manifest
    is_modelpack: bool
    listed: tuple[tuple[str, int | None], ...]  # an ormb config's own file list (directoryStructure), capped

    def files(self) -> list[tuple[str, int | None]]:
        return list(self.listed)


DESCRIBED_KEPT = 16  # model descriptions kept per worker and store, the most recently viewed
_DESCRIBED: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], _Description]] = weakref.WeakKeyDictionary()
_DESCRIBED_LOCK = threading.Lock()


def _describe(loaded: LoadedModel) -> dict[str, Any]:
    """The model page's fields and tables of a model (each table up to PER_PAGE rows)."""
    meta = loaded.metadata
    model: dict[str, Any] = {"fields": []}
    model.update(kind="modelpack" if loaded.is_modelpack else "ormb", config_type=loaded.manifest.config.media_type,
                 artifact_kind=modelpack.artifact_kind(loaded.manifest))
    block = meta.modelpack
    for label, value in (("Title", block and block.title), ("Name", block and block.name),
                         ("Version", block and block.version), ("Format", meta.format), ("Framework", meta.framework),
                         ("Author", meta.author), ("Vendor", block and block.vendor), ("Description", meta.description),
                         ("Created", meta.created), ("Licences", ", ".join(block.licenses or []) if block else None),
                         ("Architecture", block and block.architecture), ("Family", block and block.family),
                         ("Parameters", block and block.param_size), ("Precision", block and block.precision),
                         ("Quantization", block and block.quantization), ("GPU type", meta.gpu_type),
                         ("Tags", ", ".join(meta.tags or [])), ("Source", block and block.source_url),
                         ("Revision", block and block.revision), ("Documentation", block and block.doc_url)):
        if value:
            text = str(value)
            model["fields"].append((label, text, text if label in LINKED_FIELDS and _web_address(text) else None))
    if meta.signature:
        inputs, outputs = meta.signature.inputs or [], meta.signature.outputs or []
        model["inputs"] = [t.model_dump(by_alias=True) for t in inputs[:PER_PAGE]]
        model["outputs"] = [t.model_dump(by_alias=True) for t in outputs[:PER_PAGE - len(model["inputs"])]]
        model["signature_left_out"] = len(inputs) + len(outputs) - len(model["inputs"]) - len(model["outputs"])
    metrics = [(stage, m) for stage, items in (meta.metrics or {}).items() for m in items]
    model["metrics"] = [(stage, m.name, m.value) for stage, m in metrics[:PER_PAGE]]
    model["metrics_left_out"] = len(metrics) - len(model["metrics"])
    hyper_parameters = meta.hyper_parameters or []
    model["hyper_parameters"] = [(h.name, h.value) for h in hyper_parameters[:PER_PAGE]]
    model["hyper_parameters_left_out"] = len(hyper_parameters) - len(model["hyper_parameters"])
    return model


MAX_REFERRERS_SHOWN = 100  # referrers listed on a model page (anyone who can push may attach thousands)


def _signatures(ctx: Context, name: str, record: ManifestRecord, manifest: Manifest) -> dict[str, Any]:
    """The model's referrers (what the registry lists for it) and whether a signature by a key the server
    trusts (``--trust-key``/``--trust-dir``) matches its files: :func:`ormb.signing.catalog_status`,
    reading only this repository's blobs, at most ``grammar.MAX_SIGNATURES`` signatures."""
    listed = ctx.storage.referrers(name, record.digest)
    entries = [Descriptor(r.media_type, r.digest, r.size, r.annotations, r.artifact_type) for r in listed]
    shown = [{"digest": r.digest, "artifact_type": r.artifact_type or "-",
              "created": r.annotations.get(mediatypes.ANNOTATION_CREATED, "")} for r in listed[:MAX_REFERRERS_SHOWN]]
    records = FileRecords(ctx.file_records) if ctx.file_records is not None else None
    signed_by, why = catalog_status(RepositoryContent(ctx, name), Descriptor(record.media_type, record.digest,
                                                                              record.size),
                                    manifest, entries, ctx.trusted_keys, read_layers=True, records=records)
    return {"referrers": shown, "more_referrers": max(0, len(listed) - MAX_REFERRERS_SHOWN), "signed_by": signed_by,
            "unsigned_because": why}


LINKED_FIELDS = ("Source", "Documentation")


def _web_address(text: str) -> bool:
    """An http(s) address with a host: the only values of a config the page turns into links."""
    parts = urllib.parse.urlsplit(text)
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc) and text == text.strip()


def _index_entries(ctx: Context, name: str, record: ManifestRecord) -> list[dict[str, Any]]:
    """An index's entries, each linked only when it is a manifest of this repository."""
    try:
        node = parse_node(ctx.storage.manifest_bytes(record), record.media_type)
    except (OrmbError, OSError):
        return []
    return [{"digest": d.digest, "media_type": d.media_type, "artifact_type": d.artifact_type or "",
             "linked": ctx.storage.manifest(name, d.digest) is not None} for d in node.manifests]
