"""The registry as a WSGI application: routing, authorisation, errors and the access log.

>>> app = create_app(Store(Path("/tmp/registry")), AccessControl())   # no server, no socket
>>> # any WSGI server runs it; ``ormb registry serve`` runs it on gunicorn (ormb.server.serve)

A request is first checked by :class:`~ormb.server.browser.BrowserGuard` (a Host this registry
serves; no state change from another site), then routed to one handler module per resource
(``ormb.server.handlers.*``), after :class:`~ormb.server.authz.Authoriser` has decided.  Every outcome is an HTTP answer: the spec's
JSON errors for refusals, 400 for a body that breaks off, 507 for a full disk, and 500 with one
log line for anything unexpected: never a dropped connection or a traceback to the client.
"""

from __future__ import annotations

import errno
import logging
import re
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ormb.oci.grammar import is_repository
from ormb.server.access import AccessControl
from ormb.server.authz import CATALOG, Authoriser
from ormb.server.browser import BrowserGuard
from ormb.server.context import Context, Handler
from ormb.server.handlers import blobs, catalog_api, manifests, referrers, tags, token, uploads
from ormb.server.http import ClientGone, Request, Response, SpecError, StartResponse, WSGIApp, send
from ormb.server.names import RegistryNames
from ormb.server.storage_api import Storage
from ormb.signing.keys import PublicKey

access_log = logging.getLogger("ormb.registry.access")
error_log = logging.getLogger("ormb.registry")



# (resource, path pattern, handlers by method); the first match wins, so uploads precede blobs
ROUTES: list[tuple[str, re.Pattern[str], dict[str, Handler]]] = [
    ("upload", re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<arg>[^/]*)\Z"), uploads.HANDLERS),
    ("blob", re.compile(r"/v2/(?P<name>.+)/blobs/(?P<arg>[^/]+)\Z"), blobs.HANDLERS),
    ("manifest", re.compile(r"/v2/(?P<name>.+)/manifests/(?P<arg>[^/]+)\Z"), manifests.HANDLERS),
    ("tags", re.compile(r"/v2/(?P<name>.+)/tags/(?P<arg>list)\Z"), tags.HANDLERS),
    ("referrers", re.compile(r"/v2/(?P<name>.+)/referrers/(?P<arg>[^/]+)\Z"), referrers.HANDLERS),
]
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def action_of(resource: str, method: str) -> str:
    """The policy action a request needs: pull, push or delete."""
    if resource == "upload":
        return "push"
    return {"GET": "pull", "HEAD": "pull", "DELETE": "delete"}.get(method, "push")


def create_app(storage: Storage, access: AccessControl, *, auth_scheme: str = "bearer", ui: bool = True,
               service: str = "ormb-registry", guard: BrowserGuard | None = None, sparse: bool = False,
               names: RegistryNames | None = None, trusted_keys: tuple[PublicKey, ...] = (),
               file_records: Path | None = None) -> WSGIApp:
    """The registry over ``storage``, deciding with ``access``; a plain WSGI callable.  ``guard``
    defaults to a registry on 127.0.0.1 (Host checked when ``access`` asks for no login); ``sparse``
    accepts manifests whose blobs or child manifests were not pushed; ``names`` says what the catalog
    calls the registry (default: a registry on 127.0.0.1, ``localhost``); the catalog shows a model
    "signed" when a signature by one of ``trusted_keys`` matches its files (``file_records``: where the
    files of tar layers hashed for that are remembered)."""
    ctx = Context(storage, Authoriser(access, auth_scheme, service), ui, sparse, names or RegistryNames(),
                  trusted_keys, file_records)
    guard = guard or BrowserGuard.for_address("127.0.0.1", open_registry=not access.enabled)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.monotonic()
        request: Request | None = None
        try:
            request = Request(environ)
            guard.check(request)
            response = dispatch(ctx, request)
        except SpecError as err:
            response = Response.error(err)
        except ClientGone as exc:
            response = Response.error(SpecError(400, "BLOB_UPLOAD_INVALID", str(exc)))
        except Exception as exc:  # the catch-all: an answer and one log line, never a dropped connection
            response = _unexpected(exc, environ)
        request = request or _bare_request(environ)
        body = send(response, request, environ, start_response)
        _log(environ, request, response, time.monotonic() - started)
        return body

    return app


def dispatch(ctx: Context, request: Request) -> Response:
    path = request.path
    if path == "/token":
        return token.handle(ctx, request)  # GET and POST
    if path in ("/v2", "/v2/"):
        ctx.authz.authorise(request, None, "pull")
        return Response(200, b"{}", {"Content-Type": "application/json"})
    if path == "/v2/_catalog":
        ctx.authz.authorise(request, CATALOG, "*")
        return catalog_api.get(ctx, request)
    if path.startswith("/v2/"):
        return _api(ctx, request)
    if ctx.ui:
        from ormb.server import pages  # Jinja2 loads only when a page is asked for

        answer = pages.page(ctx, request)
        if answer is not None:
            return answer
    return Response(404, b"not found\n", {"Content-Type": "text/plain"})


def _api(ctx: Context, request: Request) -> Response:
    found = next(((kind, m, h) for kind, pattern, h in ROUTES if (m := pattern.match(request.path))), None)
    if found is None:
        raise SpecError(404, "NAME_UNKNOWN", "no such API endpoint")
    kind, match, handlers = found
    name = match.group("name")
    if not is_repository(name):
        raise SpecError(400, "NAME_INVALID", f"invalid repository name {name[:300]!r}")
    ctx.authz.authorise(request, name, action_of(kind, request.method))
    handler = handlers.get(request.method)
    if handler is None:
        raise SpecError(405, "UNSUPPORTED", f"{request.method} is not supported here",
                        {"Allow": ", ".join(sorted(handlers))})
    return handler(ctx, request, name, match.group("arg"))


def _unexpected(exc: Exception, environ: dict[str, Any]) -> Response:
    full = (isinstance(exc, OSError) and exc.errno in DISK_FULL) or \
        (isinstance(exc, sqlite3.OperationalError) and "full" in str(exc))
    what = f"{environ.get('REQUEST_METHOD')} {str(environ.get('PATH_INFO', ''))[:200]}"
    if full:
        error_log.error("disk full answering %s: %s", what, exc)
        return Response.error(SpecError(507, "UNKNOWN", "the registry's disk is full (ask the operator to free "
                                                       "space, e.g. 'ormb registry gc')"))
    error_log.error("internal error answering %s: %s: %s", what, type(exc).__name__, exc)
    return Response.error(SpecError(500, "UNKNOWN", "internal error; the registry's log has the details"))


def _bare_request(environ: dict[str, Any]) -> Request:
    """A request to answer with when parsing the real one failed (its method decides HEAD)."""
    safe = {k: v for k, v in environ.items() if k != "QUERY_STRING"}
    return Request(safe)


def _log(environ: dict[str, Any], request: Request, response: Response, seconds: float) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    if response.file is not None:
        size = response.file_range[1]
    else:
        size = len(response.body) if isinstance(response.body, bytes) else 0
    if request.method == "HEAD":
        size = 0
    query = environ.get("QUERY_STRING", "")
    target = str(environ.get("PATH_INFO", ""))[:1000] + (f"?{query[:1000]}" if query else "")
    access_log.info('%s %s "%s %s" %d %d %.3fs', environ.get("REMOTE_ADDR", "-"), request.user or "-",
                    request.method, target, response.status, size, seconds)


from ormb.server.serve import RegistryServer  # noqa: E402 - the Python entry point, where it always was

__all__ = ["RegistryServer", "action_of", "create_app", "dispatch"]
