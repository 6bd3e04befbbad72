"""One registry host: requests with auth challenges answered, and registry errors translated.

Every outside error is translated here, at one boundary, into ormb's error tree; no
credential, token or ``Authorization`` header ever appears in a message.

Credentials stay home: ``Authorization`` goes only to the registry's own origin (scheme,
host and port, as the user named it) and, for the token request, to the realm that origin's
challenge names.  A URL the registry hands out that points elsewhere (an upload
``Location``, a tags ``Link``) is followed without credentials, and a challenge from
elsewhere is not answered.  A registry on https may not send the client to an http realm.
Redirects that urllib3 follows itself drop ``Authorization`` when the origin changes.
"""

from __future__ import annotations

import json
import math
import threading
import urllib.parse
from typing import Any, NamedTuple

import urllib3
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from ormb.errors import (
    AuthenticationError,
    NetworkError,
    NotFoundError,
    OrmbError,
    PermissionDeniedError,
    RegistryError,
)
from ormb.oci.grammar import MAX_ERROR_BODY, MAX_REDIRECTS, MAX_TOKEN_LIFETIME
from ormb.registry.auth import Challenge, TokenCache, basic_header, parse_challenge
from ormb.registry.credentials import ANONYMOUS, Credential, CredentialStore
from ormb.registry.transport import BodyFactory, Transport, TransportOptions

_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_BODY_HEADERS = frozenset({"content-type", "content-length", "content-range", "content-encoding", "digest"})
_NOT_IN_URLS = " \\"  # never in a URL (RFC 3986); a backslash is a '/' to WHATWG parsers and part of a name to others


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def origin_of(url: str) -> Origin:
    """(scheme, host, port) of an absolute http(s) URL, the default port filled in; ValueError otherwise.

    Decided with the parser that connects (urllib3's ``parse_url``, as ``PoolManager.urlopen``
    does), and refused when :func:`urllib.parse.urlsplit` (what ``urljoin`` and the rest of the
    standard library use) reads another origin out of it: ``http://127.0.0.1:1\\@registry/``
    is ``registry`` to one and ``127.0.0.1:1`` to the other, so it names no origin at all.
    """
    try:
        parsed = parse_url(url)
    except LocationParseError:
        raise ValueError(f"not a URL: {url[:200]!r}") from None
    scheme = (parsed.scheme or "").lower()
    host = parsed.host or ""
    if scheme not in _DEFAULT_PORTS or not host or parsed.port == 0:
        raise ValueError(f"not an absolute http(s) URL: {url[:200]!r}")
    if host.startswith("[") and host.endswith("]"):  # the pool connects to the bare IPv6 address
        host = host[1:-1]
    origin = Origin(scheme, host, parsed.port or _DEFAULT_PORTS[scheme])
    try:
        split = urllib.parse.urlsplit(url)
        other = (split.scheme.lower(), split.hostname, split.port or _DEFAULT_PORTS.get(split.scheme.lower()))
    except ValueError:
        other = None
    if other != tuple(origin):
        raise ValueError(f"URL parsers disagree on where {url[:200]!r} leads")
    return origin


def _is_token(value: str) -> bool:
    """A token that can travel in a header: visible ASCII, no spaces, no line breaks (RFC 6750 b64token is stricter)."""
    return bool(value) and all(33 <= ord(c) <= 126 for c in value)


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


class Registry:
    """A registry host: auth state shared by all its repositories."""

    def __init__(self, host: str, options: TransportOptions | None = None,
                 credentials: CredentialStore | Credential | None = None, *, login_hint: str | None = None) -> None:
        """``login_hint`` says how the user gives credentials where ``ormb login`` is not the answer
        (the storage initializer in a container reads them from the environment)."""
        self.host = host
        self.login_hint = login_hint
        self.options = options or TransportOptions()
        self.transport = Transport(host, self.options)
        self._credential_source = credentials
        self._credential: Credential | None = credentials if isinstance(credentials, Credential) else None
        self._tokens = TokenCache()
        self._challenge: Challenge | None = None
        self._lock = threading.Lock()
        self.origin = origin_of(self.transport.base_url)
        self._home_prefix = self.transport.base_url + "/"

    @property
    def credential(self) -> Credential:
        if self._credential is None:
            source = self._credential_source
            self._credential = source.get(self.host) if isinstance(source, CredentialStore) else ANONYMOUS
        return self._credential

    def url(self, path: str) -> str:
        """An absolute URL: ``path`` as it is when absolute, else on the registry's own origin."""
        return path if path.startswith(("http://", "https://")) else self.transport.base_url + path

    def resolve_url(self, base: str, given: str, what: str) -> str:
        """A URL the registry handed out (a ``Location``, a ``Link``), made absolute against ``base``;
        a :class:`RegistryError` when it is not an http(s) URL."""
        if any(c in given for c in _NOT_IN_URLS) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in given):
            raise self.bad_answer(what, "the URL holds spaces, backslashes or control characters")
        try:
            url = urllib.parse.urljoin(self.url(base), given)
            origin_of(url)
        except ValueError:
            raise self.bad_answer(what, f"the URL {given[:200]!r} is not an http(s) URL") from None
        return url

    def is_home(self, url: str) -> bool:
        """True when ``url`` is on the registry's own origin: only there do credentials go."""
        if url.startswith(self._home_prefix) and "\\" not in url:  # the authority ends at that '/': no parsing
            return True
        try:
            return origin_of(url) == self.origin
        except ValueError:
            return False

    def read_body(self, response: urllib3.BaseHTTPResponse, limit: int, what: str) -> bytes:
        """Up to ``limit`` bytes of a body, the connection released.  A connection that breaks (or a body
        shorter than its Content-Length) is a :class:`NetworkError`; a body that is not what its
        ``Content-Encoding`` says is the bad-answer error.  Every body ormb reads whole goes through here."""
        try:
            return response.read(limit) or b""
        except urllib3.exceptions.DecodeError:
            raise self.bad_answer(what, "its body is not the Content-Encoding it claims") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise NetworkError(f"the connection to {self.host} broke while reading {what} ({type(exc).__name__})",
                               "run the same command again") from None
        finally:
            release(response)

    def bad_answer(self, what: str, detail: str) -> RegistryError:
        """The registry (or whatever answers in its place) sent something malformed."""
        return RegistryError(f"{self.host} answered {what} badly: {detail}",
                             "the registry, or something in its place, is broken or hostile; check its address, "
                             "or report it to its administrator")

    def _auth_header(self, scope: str) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return basic_header(self.credential) if not self.credential.empty else None
        token = self._tokens.get(challenge.realm, challenge.params.get("service", ""), scope)
        return f"Bearer {token}" if token else None

    def request(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        headers: dict[str, str] | None = None,
        body: BodyFactory | None = None,
        expect: tuple[int, ...] = (200,),
        what: str = "",
    ) -> urllib3.BaseHTTPResponse:
        """Send with auth; return a response whose status is in ``expect`` (body unread), else raise.

        Redirects are followed here, one hop at a time (:meth:`_follow`), so that the origin of
        every hop decides whether it gets credentials, and a 401 is answered only when the hop that
        sent it is the registry's own origin.
        """
        what = what or f"{method} {urllib.parse.urlsplit(self.url(path)).path}"
        for attempt in range(2):
            response, url, had_auth = self._follow(method, self.url(path), scope, headers, body, expect, what)
            if response.status in expect:
                return response
            home = self.is_home(url)
            if response.status == 401 and not home:
                _discard(response)
                raise RegistryError(
                    f"{self.host} sent ormb to {origin_of(url)}, which asks for credentials",
                    f"ormb sends credentials only to {self.origin} and its token service; "
                    "the registry is misconfigured or hostile")
            if response.status == 401:
                challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
                detail = _error_text(_discard(response))
                if attempt == 0 and challenge is not None and self._answer(challenge, scope, had_auth=had_auth):
                    continue
                if challenge is not None and challenge.scheme == "bearer" and scope:
                    if not self.credential.empty:  # a fresh token for exactly this scope, and still no
                        raise PermissionDeniedError(f"denied: requested access to {_describe(scope)} at {self.host}")
                    detail = f"{_describe(scope)} requires logging in"
                raise self._unauthorized(detail or None)
            raise self.error_for(response, what, scope, url)
        raise AssertionError("unreachable")

    def _follow(self, method: str, url: str, scope: str, headers: dict[str, str] | None, body: BodyFactory | None,
                expect: tuple[int, ...], what: str) -> tuple[urllib3.BaseHTTPResponse, str, bool]:
        """Send, following up to ``MAX_REDIRECTS`` redirects; (final response, its URL, whether it had auth).

        Each hop's URL is checked (:meth:`resolve_url`) and gets ``Authorization`` only when it is
        home.  307/308 send the same method and body again (made anew by ``body``, the factory, so a
        file is read again and nothing is buffered); 303, and 301/302 after a POST, become a GET
        without a body, as browsers and urllib3 do.
        """
        request_headers = dict(headers or {})
        for _ in range(MAX_REDIRECTS + 1):
            auth = self._auth_header(scope) if self.is_home(url) else None  # credentials stay home
            sent = {**request_headers, "Authorization": auth} if auth else request_headers
            response = self.transport.request(method, url, sent, body)
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or response.status in expect or not location:
                return response, url, bool(auth)
            _discard(response)
            url = self.resolve_url(url, location, what)
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method = "GET" if method != "HEAD" else method
                body = None
                request_headers = {k: v for k, v in request_headers.items() if k.lower() not in _BODY_HEADERS}
        raise self.bad_answer(what, f"it sent more than {MAX_REDIRECTS} redirects in a row")

    def _answer(self, challenge: Challenge, scope: str, had_auth: bool) -> bool:
        """Get what the challenge asks for; False when there is nothing new to try."""
        with self._lock:
            self._challenge = challenge
        if challenge.scheme == "basic":
            if self.credential.empty:
                raise self._unauthorized("authentication required")
            return not had_auth
        if challenge.scheme == "bearer":
            service = challenge.params.get("service", "")
            with self._lock:  # one fetch per scope, however many threads met the challenge
                if not had_auth and self._tokens.get(challenge.realm, service, scope):
                    return True
                self._tokens.drop(challenge.realm, service, scope)
                self._tokens.put(challenge.realm, service, scope, *self._fetch_token(challenge, scope))
            return True
        raise RegistryError(f"{self.host} asks for unsupported authentication {challenge.scheme!r}")

    def _fetch_token(self, challenge: Challenge, scope: str) -> tuple[str, float | None]:
        realm = challenge.realm
        try:
            realm_origin = origin_of(realm)
        except ValueError:
            raise RegistryError(f"{self.host} sent a Bearer challenge without a usable realm") from None
        if self.origin.scheme == "https" and realm_origin.scheme != "https":
            raise RegistryError(
                f"{self.host} (https) asks ormb to send credentials to the token service {realm_origin}, in clear",
                "refused: a registry on https must have its token service on https; tell its administrator")
        service = challenge.params.get("service")
        credential = self.credential
        headers: dict[str, str] = {}
        if credential.username == "<token>":  # an identity token: OAuth2 refresh-token grant
            form = {"grant_type": "refresh_token", "refresh_token": credential.password, "client_id": "ormb",
                    "scope": scope, **({"service": service} if service else {})}  # OAuth2: space-separated
            encoded = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            response = self.transport.request("POST", realm, headers, lambda: encoded)
        else:
            query = [("service", service)] if service else []
            query += [("scope", one) for one in scope.split()]  # one parameter per scope, as token servers expect
            if not credential.empty:
                headers["Authorization"] = basic_header(credential)
                query.append(("account", credential.username))
            sep = "&" if "?" in realm else "?"
            response = self.transport.request("GET", realm + sep + urllib.parse.urlencode(query), headers)
        if response.status in _REDIRECTS:  # never followed: the password or identity token would go along
            _discard(response)
            raise RegistryError(
                f"the token service of {self.host} ({realm_origin}) answered {response.status}, a redirect to "
                f"{_origin_text(self.resolve_url(realm, response.headers.get('Location') or '', 'the token request'))}",
                "ormb does not follow redirects of token requests (credentials would go along); ask the registry's "
                "administrator to name the token service's own address as the realm")
        body = self.read_body(response, MAX_ERROR_BODY, "the token request")
        if response.status in (401, 403):
            raise self._unauthorized(_error_text(body) or None)
        if response.status != 200:
            raise RegistryError(f"the token service of {self.host} answered {response.status}: {_error_text(body)}")
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
            lifetime = data.get("expires_in")
        except (ValueError, AttributeError, RecursionError):
            token, lifetime = None, None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the token service of {self.host} answered without a token")
        if not _is_token(token):
            raise self.bad_answer("the token request", "the token holds spaces or control characters")
        return token, _lifetime(lifetime)

    def _unauthorized(self, detail: str | None) -> AuthenticationError:
        detail = detail.removeprefix("unauthorized: ").removeprefix("unauthorized") or None if detail else None
        if self.credential.empty:
            return AuthenticationError(
                f"unauthorized: {detail or 'authentication required'} at {self.host} (no credentials given)",
                self.login_hint or f"log in with 'ormb login {self.host}'",
            )
        return AuthenticationError(
            f"unauthorized: {detail or 'the registry rejected the credentials'} for user "
            f"{self.credential.username!r} at {self.host}",
            self.login_hint or f"check the credentials given to 'ormb login {self.host}'",
        )

    def error_for(self, response: urllib3.BaseHTTPResponse, what: str, scope: str = "", url: str = "") -> OrmbError:
        """The error for an answer that is not what was expected; ``url`` is where it came from."""
        body = _discard(response)
        detail = _error_text(body)
        status = response.status
        where = self.host if not url or self.is_home(url) else f"{_origin_text(url)} (where {self.host} sent ormb)"
        if status == 401:
            return self._unauthorized(detail or None)
        if status == 403:
            if scope.startswith("repository:"):
                return PermissionDeniedError(f"denied: requested access to {_describe(scope)} at {where}")
            return PermissionDeniedError(f"denied: {what} at {where}: {detail or 'access denied'}")
        if status == 404:
            return NotFoundError(f"{what}: {detail or 'not found'} at {where}",
                                 "check the repository name and tag; 'ormb tags REPOSITORY' lists the tags")
        return RegistryError(f"{where} answered {status} to {what}: {detail or response.reason or 'no detail'}")

    def ping(self, scope: str = "") -> None:
        """``GET /v2/``: checks that a registry is there and that the credentials work."""
        response = self.request("GET", "/v2/", scope=scope, what="the API check")
        _discard(response)


def _lifetime(value: object) -> float | None:
    """A token's ``expires_in`` in seconds, within (0, MAX_TOKEN_LIFETIME]; None (the default) when it is
    not a positive finite number (a bool, NaN, a string; an integer of 400 digits is capped, never a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return float(min(value, MAX_TOKEN_LIFETIME)) if value > 0 else None
    return min(value, float(MAX_TOKEN_LIFETIME)) if math.isfinite(value) and value > 0 else None


def _origin_text(url: str) -> str:
    try:
        return str(origin_of(url))
    except ValueError:
        return "another address"


def _describe(scope: str) -> str:
    """``repository:team/m:pull,push`` -> ``push to repository team/m``."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    verb = "push to" if "push" in actions else "pull from" if actions == "pull" else f"{actions} on"
    return f"{verb} {kind} {name}"


def release(response: urllib3.BaseHTTPResponse) -> None:
    """Give the connection back to the pool, or close it when its answer was not read to the end
    (a connection with unread bytes would hand them to the next request)."""
    if not response.closed:
        response.close()
    response.release_conn()


def _discard(response: urllib3.BaseHTTPResponse) -> bytes:
    """The start of a body that only matters as words for a message (an error, a redirect); never raises."""
    try:
        return response.read(MAX_ERROR_BODY) or b""
    except (urllib3.exceptions.HTTPError, OSError):
        return b""
    finally:
        release(response)


def _error_text(body: bytes) -> str:
    """The registry's own words: the OCI error list when there is one, else the start of the body."""
    try:
        data: Any = json.loads(body)
    except RecursionError:
        return "(an error document nested too deeply to read)"
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace").strip()
        return text[:200] if text and "<html" not in text.lower() else ""
    errors = data.get("errors") if isinstance(data, dict) else None
    if isinstance(errors, list) and errors:
        parts = []
        for error in errors[:3]:
            if isinstance(error, dict):
                code = str(error.get("code", "")).lower().replace("_", " ")
                message = str(error.get("message", ""))
                parts.append(f"{code}: {message}" if code and message and code != message.lower() else code or message)
        return "; ".join(p for p in parts if p)
    if isinstance(data, dict) and isinstance(data.get("details") or data.get("message"), str):
        return str(data.get("details") or data.get("message"))
    return ""


__all__ = ["NetworkError", "Registry", "pull_scope", "push_scope"]
