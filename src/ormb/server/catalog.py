"""The model catalog web page: repositories, their tags, and a page per model.

It reads the registry's own storage and obeys the same access rules as the API: with
authentication on, the browser is asked for Basic credentials, and a user sees only the
repositories they may pull.
"""

from __future__ import annotations

import json
import tarfile
import urllib.parse
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from isal import igzip
from jinja2 import Environment, PackageLoader, select_autoescape

from ormb.oci import mediatypes
from ormb.oci.grammar import is_repository
from ormb.units import human_size

if TYPE_CHECKING:
    from ormb.server.routes import RegistryHandler

MODELPACK_CONFIGS = {"application/vnd.cncf.model.config.v1+json", "application/vnd.cnai.model.config.v1+json"}
FILEPATH_ANNOTATIONS = ("org.cncf.model.filepath", "org.cnai.model.filepath", "org.opencontainers.image.title")

_env = Environment(loader=PackageLoader("ormb.server", "templates"), autoescape=select_autoescape(["html"]))


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


_env.filters["size"] = human_size
_env.filters["when"] = _when


def serve_ui(handler: RegistryHandler) -> bool:
    """Answer a non-API GET; False when the path is not the catalog's."""
    from ormb.server.routes import SpecError

    parts = urllib.parse.urlsplit(handler.path)
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
    if handler.command not in ("GET", "HEAD") or parts.path not in ("/", "/repository", "/model"):
        return False
    user = _browser_user(handler)
    if user is None:  # asked the browser for credentials
        return True
    storage, access = handler.storage, handler.config.access
    if parts.path == "/":
        search = query.get("q", "").strip().lower()
        repositories = []
        for name in storage.catalog():
            if access.allowed(user or None, name, "pull") and search in name:
                tags = storage.tag_records(name)
                repositories.append({"name": name, "tags": len(tags),
                                     "updated": max((t.updated for t in tags), default=None)})
        _html(handler, "index.html", repositories=repositories, search=search, user=user)
        return True
    name = query.get("name", "")
    if not is_repository(name) or not storage.repository_exists(name) or not access.allowed(user or None, name, "pull"):
        _html(handler, "missing.html", status=404, what=f"repository {name}", user=user)
        return True
    if parts.path == "/repository":
        _html(handler, "repository.html", name=name, tags=storage.tag_records(name), user=user)
        return True
    reference = query.get("ref", "")
    try:
        record = handler._resolve(name, reference)
    except SpecError:
        _html(handler, "missing.html", status=404, what=f"{name}:{reference}", user=user)
        return True
    host = handler.headers.get("Host") or "localhost:5000"
    model = describe_model(handler, name, record.digest)
    pull_ref = f"{host}/{name}@{record.digest}" if reference.startswith("sha") else f"{host}/{name}:{reference}"
    _html(handler, "model.html", name=name, reference=reference, record=record, model=model,
          pull=f"ormb pull {pull_ref}", user=user)
    return True


def _browser_user(handler: RegistryHandler) -> str | None:
    """The user name ('' for anonymous) when the page may be shown; None after asking for credentials."""
    access = handler.config.access
    if not access.enabled:
        return ""
    user = access.basic_user(handler.headers.get("Authorization", ""))
    if isinstance(user, str):
        return user
    if user is None and access.anonymous_pull:
        return ""
    handler._send(401, b"Log in to browse this registry.\n",
                  {"WWW-Authenticate": 'Basic realm="ormb registry"', "Content-Type": "text/plain"})
    return None


def _html(handler: RegistryHandler, template: str, status: int = 200, **context: Any) -> None:
    body = _env.get_template(template).render(**context).encode("utf-8")
    handler._send(status, body, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"})


def _read_json(handler: RegistryHandler, digest: str, limit: int = 4 << 20) -> Any:
    path = handler.storage.blob_path(digest)
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(limit))
    except (OSError, ValueError):
        return {}


def describe_model(handler: RegistryHandler, name: str, digest: str) -> dict[str, Any]:
    """What the model page shows, from the manifest and config of an ormb or ModelPack artifact."""
    manifest = _read_json(handler, digest)
    config_desc = manifest.get("config") or {}
    config_type = config_desc.get("mediaType", "")
    config = _read_json(handler, config_desc["digest"]) if config_desc.get("digest") else {}
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
                model["files"] += _tar_files(handler, layer["digest"])
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


def _tar_files(handler: RegistryHandler, digest: str) -> list[tuple[str, int]]:
    cached = handler.storage.layer_files(digest)
    if cached is not None:
        return cached
    files: list[tuple[str, int]] = []
    try:
        with open(handler.storage.blob_path(digest), "rb") as raw:
            stream = igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[no-untyped-call]
            with tarfile.open(fileobj=stream, mode="r|", bufsize=1 << 20) as tar:
                files = [(m.name, m.size) for m in tar if m.isreg()]
    except (OSError, tarfile.TarError, EOFError):
        return files
    handler.storage.remember_layer_files(digest, files)
    return files
