"""``/v2/<name>/tags/list``: the tags of a repository, paginated (``n``, ``last``, ``Link``)."""

from __future__ import annotations

import urllib.parse

from ormb.server.context import Context, Handler
from ormb.server.handlers.common import page
from ormb.server.http import Request, Response, SpecError


def get(ctx: Context, request: Request, name: str, _: str) -> Response:
    if not ctx.storage.repository_exists(name):
        raise SpecError(404, "NAME_UNKNOWN", f"repository {name} is not known")
    n, last = page(request)
    tags = ctx.storage.tags(name, last, None if n is None else n + 1)
    shown = tags if n is None else tags[:n]
    headers = {}
    if n is not None and len(tags) > n and shown:
        headers["Link"] = f'</v2/{name}/tags/list?n={n}&last={urllib.parse.quote(shown[-1])}>; rel="next"'
    return Response.json(200, {"name": name, "tags": shown}, headers)


HANDLERS: dict[str, Handler] = {"GET": get}
