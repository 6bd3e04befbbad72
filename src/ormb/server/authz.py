"""Who is asking, and may they: the one decision every API route and the catalog pages use.

:meth:`Authoriser.authorise` reads the request's credentials (a Bearer token of this registry, or
Basic), decides with :meth:`AccessControl.allowed` (policy, users, anonymous rules) and either
returns the user (also recorded on the request for the access log) or raises the spec's 401
(with a challenge) or 403.  :meth:`Authoriser.may` is the same decision for filtering lists.
"""

from __future__ import annotations

from dataclasses import dataclass

from ormb.server.access import AccessControl
from ormb.server.http import Request, SpecError

CATALOG = "registry:catalog"  # the resource name of /v2/_catalog


@dataclass
class Authoriser:
    access: AccessControl
    auth_scheme: str = "bearer"  # or "basic"
    service: str = "ormb-registry"

    def may(self, user: str | None, repository: str, action: str) -> bool:
        return self.access.allowed(user, repository, action)

    def authorise(self, request: Request, resource: str | None, action: str) -> str | None:
        """The user when ``action`` on ``resource`` is allowed (None: the API root); else raise 401/403."""
        access = self.access
        if not access.enabled:
            return None
        header = request.header("Authorization")
        token_access: dict[str, frozenset[str]] | None = None
        user: str | None
        if header.startswith("Bearer "):
            claims = access.verify(header[7:].strip())
            if claims is None:
                raise self.challenge(request, resource, action, "invalid_token", "the token is invalid or expired")
            user, token_access = claims.user, claims.access
        else:
            basic = access.basic_user(header)
            if basic is False:
                raise self.challenge(request, resource, action, None, "invalid username or password")
            user = basic if isinstance(basic, str) else None
        request.user = user
        if resource is None:  # GET /v2/: any valid credentials or token (anonymous tokens too), never none
            if not header:
                raise self.challenge(request, None, action, None, "authentication required")
            return user
        if resource == CATALOG:
            if user is None and not access.anonymous_pull:
                raise self.challenge(request, resource, action, None, "authentication required")
            return user
        permitted = self.may(user, resource, action)
        if token_access is not None:
            if action in token_access.get(resource, frozenset()):
                return user
            if permitted:
                raise self.challenge(request, resource, action, "insufficient_scope", "the token does not cover this request")
        elif permitted:
            return user
        if user is None:
            raise self.challenge(request, resource, action, None, "authentication required")
        raise SpecError(403, "DENIED", f"requested access to {action} {resource} is denied")

    def challenge(self, request: Request, resource: str | None, action: str, error: str | None,
                  message: str) -> SpecError:
        if self.auth_scheme == "basic":
            return SpecError(401, "UNAUTHORIZED", message, {"WWW-Authenticate": 'Basic realm="ormb-registry"'})
        params = [f'realm="{request.scheme}://{request.host}/token"', f'service="{self.service}"']
        if resource == CATALOG:
            params.append('scope="registry:catalog:*"')
        elif resource:
            actions = "pull,push" if action == "push" else action
            params.append(f'scope="repository:{resource}:{actions}"')
        if error:
            params.append(f'error="{error}"')
        return SpecError(401, "UNAUTHORIZED", message, {"WWW-Authenticate": "Bearer " + ",".join(params)})
