"""Small checks the handlers share: digests from the URL, pagination parameters."""

from __future__ import annotations

from ormb.oci.grammar import MAX_PAGE_ENTRIES, is_decimal, is_digest
from ormb.server.http import Request, SpecError


def digest_param(value: str) -> str:
    if not is_digest(value):
        raise SpecError(400, "DIGEST_INVALID", f"invalid digest {value[:200]!r}")
    return value


def page(request: Request) -> tuple[int | None, str | None]:
    """``n`` and ``last`` of a paginated list; ``n`` is capped at MAX_PAGE_ENTRIES."""
    n = request.query.get("n")
    if n is None:
        return None, (request.query.get("last") or None)
    if not (n.isascii() and n.isdigit()):
        raise SpecError(400, "PAGINATION_NUMBER_INVALID", "n must be a non-negative number")
    number = min(int(n), MAX_PAGE_ENTRIES) if is_decimal(n) else MAX_PAGE_ENTRIES  # a huge n asks for everything
    return number, (request.query.get("last") or None)
