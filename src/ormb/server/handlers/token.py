"""``/token``: this registry's Bearer tokens, for the scopes the (Basic-authenticated or anonymous) caller may have."""

from __future__ import annotations

from ormb.server.context import Context
from ormb.server.http import Request, Response, SpecError


def get(ctx: Context, request: Request) -> Response:
    access = ctx.authz.access
    basic = access.basic_user(request.header("Authorization"))
    if basic is False:
        raise SpecError(401, "UNAUTHORIZED", "invalid username or password",
                        {"WWW-Authenticate": 'Basic realm="ormb-registry"'})
    user = basic if isinstance(basic, str) else None
    request.user = user
    scopes = [s for value in request.query_lists.get("scope", []) for s in value.split(" ") if s]
    token, lifetime = access.issue(user, scopes)
    return Response.json(200, {"token": token, "access_token": token, "expires_in": lifetime})
