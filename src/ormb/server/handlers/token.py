"""``/token``: this registry's Bearer tokens, for the scopes the caller may have.

Two forms, as Docker's and OAuth2's token specifications define them:

- ``GET /token?service=..&scope=..`` with Basic credentials (or none: anonymous), and
  ``offline_token=true`` for a refresh token too;
- ``POST /token`` with a form: ``grant_type=password`` (``username``, ``password``) or
  ``grant_type=refresh_token`` (``refresh_token``), plus ``scope`` (space-separated), ``service``,
  ``client_id`` and ``access_type=offline`` for a refresh token (containerd and some SDKs use it).

Failed logins count towards the throttle (429 with ``Retry-After``) either way.
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

from ormb.server.context import Context
from ormb.server.http import Request, Response, SpecError

FORM_LIMIT = 64 << 10


def handle(ctx: Context, request: Request) -> Response:
    """``/token``, any method: GET (and HEAD) with Basic credentials, POST with a form."""
    if request.method == "POST":
        return post(ctx, request)
    if request.method not in ("GET", "HEAD"):
        raise SpecError(405, "UNSUPPORTED", f"{request.method} is not supported here", {"Allow": "GET, POST"})
    basic = ctx.authz.login(request)
    if basic is False:
        raise _refused()
    user = basic if isinstance(basic, str) else None
    request.user = user
    scopes = [s for value in request.query_lists.get("scope", []) for s in value.split(" ") if s]
    offline = request.query.get("offline_token", "").lower() == "true" and user is not None
    return _answer(ctx, user, scopes, offline)


def post(ctx: Context, request: Request) -> Response:
    if request.header("Content-Type").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise SpecError(400, "UNSUPPORTED", "POST /token takes an application/x-www-form-urlencoded form")
    try:
        form = dict(urllib.parse.parse_qsl(request.read_all(FORM_LIMIT).decode("utf-8"), max_num_fields=50))
    except (UnicodeDecodeError, ValueError):
        raise SpecError(400, "UNSUPPORTED", "the form is malformed") from None
    access = ctx.authz.access
    grant = form.get("grant_type", "")
    user: str | None
    if grant == "password":
        user = form.get("username", "")
        accepted = ctx.authz.password_login(request, user, form.get("password", "")) if access.enabled else True
        if not accepted:
            raise _refused()
        if not access.enabled:
            user = None  # an open registry has no users: the name proves nothing
    elif grant == "refresh_token":
        user = access.refresh_user(form.get("refresh_token", ""))
        if user is None:
            raise SpecError(401, "UNAUTHORIZED", "the refresh token is invalid, expired or revoked")
    else:
        raise SpecError(400, "UNSUPPORTED", f"unsupported grant_type {grant[:50]!r}; use password or refresh_token")
    request.user = user or None
    scopes = [s for s in form.get("scope", "").split(" ") if s]
    return _answer(ctx, user or None, scopes, form.get("access_type") == "offline" or grant == "refresh_token")


def _answer(ctx: Context, user: str | None, scopes: list[str], offline: bool) -> Response:
    access = ctx.authz.access
    token, lifetime = access.issue(user, scopes)
    body: dict[str, Any] = {"token": token, "access_token": token, "expires_in": lifetime,
                            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if scopes:
        body["scope"] = " ".join(scopes)
    if offline and user is not None and access.enabled:
        body["refresh_token"] = access.issue_refresh(user)
    return Response.json(200, body, {"Cache-Control": "no-store"})


def _refused() -> SpecError:
    return SpecError(401, "UNAUTHORIZED", "invalid username or password",
                     {"WWW-Authenticate": 'Basic realm="ormb-registry"'})
