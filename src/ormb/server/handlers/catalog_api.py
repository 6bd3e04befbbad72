"""``/v2/_catalog``: the repositories the caller may pull, paginated."""

from __future__ import annotations

import urllib.parse

from ormb.server.context import Context
from ormb.server.handlers.common import page
from ormb.server.http import Request, Response


def get(ctx: Context, request: Request) -> Response:
    n, last = page(request)
    visible = [r for r in ctx.storage.catalog(last) if ctx.authz.may(request.user, r, "pull")]
    shown = visible if n is None else visible[:n]
    headers = {}
    if n is not None and len(visible) > n and shown:
        headers["Link"] = f'</v2/_catalog?n={n}&last={urllib.parse.quote(shown[-1])}>; rel="next"'
    return Response.json(200, {"repositories": shown}, headers)
