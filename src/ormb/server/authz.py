"""Who is asking, and may they: the one decision every API route and the catalog pages use.

:meth:`Authoriser.authorise` reads the request's credentials (a Bearer token of this registry, or
Basic), decides with :meth:`AccessControl.allowed` (policy, users, anonymous rules) and either
returns the user (also recorded on the request for the access log) or raises the spec's 401
(with a challenge), 403, or 429 while logins from this user or address are throttled.
:meth:`Authoriser.may` is the same decision for filtering lists (the catalog API, the pages'
repository list, mounts); :meth:`Authoriser.identify` only reads the credentials.  A browser
(the catalog pages, ``browser=True``) is always challenged with Basic: it cannot fetch tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from ormb.server.access import AccessControl
from ormb.server.http import Request, SpecError
from ormb.server.throttle import LoginRefused

CATALOG = "registry:catalog"  # the resource name of /v2/_catalog


def too_many(refused: LoginRefused) -> SpecError:
    return SpecError(429, "TOOMANYREQUESTS", str(refused), {"Retry-After": str(refused.retry_after)})


@dataclass(frozen=True)
class Identity:
    user: str | None  # None: anonymous
    token_access: dict[str, frozenset[str]] | None  # what a Bearer token grants; None without a token


@dataclass
class Authoriser:
    access: AccessControl
    auth_scheme: str = "bearer"  # or "basic"
    service: str = "ormb-registry"

    def may(self, user: str | None, repository: str, action: str) -> bool:
        return self.access.allowed(user, repository, action)

    def identify(self, request: Request, resource: str | None = None, action: str = "pull", *,
                 browser: bool = False) -> Identity:
        """The caller, from a valid token or Basic credentials (anonymous without either); raises 401
        for credentials that are not valid (challenging for ``action`` on ``resource``), 429 while throttled."""
        access = self.access
        header = request.header("Authorization")
        identity = Identity(None, None)
        if not access.enabled:
            return identity
        if header.startswith("Bearer "):
            claims = access.verify(header[7:].strip())
            if claims is None:
                raise self.challenge(request, resource, action, "invalid_token", "the token is invalid, expired or revoked",
                                     browser=browser)
            identity = Identity(claims.user, claims.access)
        else:
            basic = self.login(request)
            if basic is False:
                raise self.challenge(request, resource, action, None, "invalid username or password", browser=browser)
            identity = Identity(basic if isinstance(basic, str) else None, None)
        request.user = identity.user
        return identity

    def login(self, request: Request) -> str | None | bool:
        """The user of the request's Basic credentials (None: none given, False: wrong); 429 while throttled."""
        try:
            return self.access.basic_user(request.header("Authorization"), request.client)
        except LoginRefused as refused:
            raise too_many(refused) from None

    def password_login(self, request: Request, user: str, password: str) -> bool:
        """``user``'s password checked, throttled by user and by the request's address (429)."""
        try:
            return self.access.login(user, password, request.client)
        except LoginRefused as refused:
            raise too_many(refused) from None

    def authorise(self, request: Request, resource: str | None, action: str, *, browser: bool = False) -> str | None:
        """The user when ``action`` on ``resource`` is allowed (None: the API root); else raise 401/403."""
        access = self.access
        if not access.enabled:
            return None
        identity = self.identify(request, resource, action, browser=browser)
        user, token_access = identity.user, identity.token_access
        if resource is None:  # GET /v2/: any valid credentials or token (anonymous tokens too), never none
            if not request.header("Authorization"):
                raise self.challenge(request, None, action, None, "authentication required", browser=browser)
            return user
        if resource == CATALOG:
            if user is None and not access.anonymous_may_pull:
                raise self.challenge(request, resource, action, None, "authentication required", browser=browser)
            return user
        permitted = self.may(user, resource, action)
        if token_access is not None:
            if action in token_access.get(resource, frozenset()):
                return user
            if permitted:
                raise self.challenge(request, resource, action, "insufficient_scope",
                                     "the token does not cover this request", browser=browser)
        elif permitted:
            return user
        if user is None:
            raise self.challenge(request, resource, action, None, "authentication required", browser=browser)
        raise SpecError(403, "DENIED", f"requested access to {action} {resource} is denied")

    def challenge(self, request: Request, resource: str | None, action: str, error: str | None,
                  message: str, *, browser: bool = False) -> SpecError:
        if self.auth_scheme == "basic" or browser:
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
