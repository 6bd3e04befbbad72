"""The model catalog web pages: repositories, their tags, and a page per model.

They read the registry's storage through the same interface as the API and obey the same
authorisation decision (:class:`ormb.server.authz.Authoriser`): with authentication on, the
browser is asked for Basic credentials, a user sees only the repositories they may pull, and
a model page reads only blobs linked to the repository shown.
"""

from __future__ import annotations

import json
import tarfile
from datetime import datetime, timezone
from typing import Any

from isal import igzip
from jinja2 import Environment, PackageLoader, select_autoescape

from ormb.oci import mediatypes
from ormb.oci.grammar import is_digest, is_repository
from ormb.server.context import Context
from ormb.server.handlers.manifests import resolve
from ormb.server.http import Request, Response, SpecError
from ormb.server.storage_api import ManifestRecord
from ormb.units import human_size

MODELPACK_CONFIGS = {"application/vnd.cncf.model.config.v1+json", "application/vnd.cnai.model.config.v1+json"}
FILEPATH_ANNOTATIONS = ("org.cncf.model.filepath", "org.cnai.model.filepath", "org.opencontainers.image.title")
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


def _read_json(ctx: Context, name: str, digest: str, limit: int = 4 << 20) -> Any:
    """A JSON blob of repository ``name`` (never of another), or {} when unreadable."""
    if not isinstance(digest, str) or not is_digest(digest):
        return {}
    blob = ctx.storage.open_blob(name, digest)
    if blob is None:
        return {}
    with blob:
        try:
            data = json.loads(blob.read(limit))
        except (OSError, ValueError, RecursionError):
            return {}
    return data if isinstance(data, dict) else {}


def describe_model(ctx: Context, name: str, record: ManifestRecord) -> dict[str, Any]:
    """What the model page shows, from the manifest and config of an ormb or ModelPack artifact."""
    try:
        manifest = json.loads(ctx.storage.manifest_bytes(record))
    except (OSError, ValueError, RecursionError):
        manifest = {}
    if not isinstance(manifest, dict):
        manifest = {}
    config_desc = manifest.get("config") or {}
    config_type = config_desc.get("mediaType", "")
    config = _read_json(ctx, name, config_desc.get("digest", "")) if isinstance(config_desc, dict) else {}
    layers = manifest.get("layers") or []
    model: dict[str, Any] = {"kind": "unknown", "config_type": config_type, "media_type": manifest.get("mediaType"),
                             "layers": layers, "files": [], "fields": [], "inputs": [], "outputs": [],
                             "metrics": [], "hyper_parameters": [], "size": sum(int(x.get("size", 0)) for x in layers)}
    if config_type == mediatypes.ORMB_CONFIG:
        model["kind"] = "ormb"
        for key, label in (("format", "Format"), ("framework", "Framework"), ("author", "Author"),
                           ("description", "Description"), ("created", "Created"), ("gpuType", "GPU type")):
            if config.get(key):
                model["fields"].append((label, config[key]))
        if config.get("tags"):
            model["fields"].append(("Tags", ", ".join(map(str, config["tags"]))))
        signature = config.get("signature") or {}
        model["inputs"], model["outputs"] = signature.get("inputs") or [], signature.get("outputs") or []
        model["metrics"] = [(group, m.get("name"), m.get("value")) for group, items in (config.get("metrics") or {}).items()
                            for m in items if isinstance(m, dict)]
        model["hyper_parameters"] = [(h.get("name"), h.get("value")) for h in config.get("hyperParameters") or []
                                     if isinstance(h, dict)]
        for layer in layers:
            if layer.get("mediaType") in (mediatypes.ORMB_LAYER, "application/vnd.oci.image.layer.v1.tar+gzip"):
                model["files"] += _tar_files(ctx, name, layer.get("digest", ""))
    elif config_type in MODELPACK_CONFIGS:
        model["kind"] = "modelpack"
        descriptor, settings = config.get("descriptor") or {}, config.get("config") or {}
        for key, label in (("name", "Name"), ("version", "Version"), ("description", "Description"),
                           ("createdAt", "Created")):
            if descriptor.get(key):
                model["fields"].append((label, descriptor[key]))
        if descriptor.get("authors"):
            model["fields"].append(("Authors", ", ".join(map(str, descriptor["authors"]))))
        for key, label in (("format", "Format"), ("architecture", "Architecture"), ("paramSize", "Parameters"),
                           ("precision", "Precision"), ("quantization", "Quantization")):
            if settings.get(key):
                model["fields"].append((label, settings[key]))
        for layer in layers:
            annotations = layer.get("annotations") or {}
            path = next((annotations[k] for k in FILEPATH_ANNOTATIONS if k in annotations), layer.get("digest"))
            model["files"].append((path, int(layer.get("size", 0))))
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
