"""Who may do what: htpasswd users, a policy of glob patterns, and this registry's own tokens.

Without an htpasswd file the registry is open (the laptop/CI default, loopback only).  With
one, users log in; without a policy file every user may do everything and anonymous users
nothing (``anonymous_pull`` lets them pull).  A policy file grants actions per user and
repository pattern, anonymous users included (then ``anonymous_pull`` is refused: the policy
alone decides)::

    rules:
      - users: [alice]              # names, '*' for any logged-in user, 'anonymous' for everyone else
        repositories: ["alice/*"]   # glob patterns ('*' also matches '/')
        actions: [pull, push, delete]
      - users: ["*"]
        repositories: ["*"]
        actions: [pull]

A logged-in user may always do what an anonymous one may.  Logins are throttled
(:mod:`ormb.server.throttle`) and cost one bcrypt check whether or not the user exists.
Tokens are HMAC-signed; each carries the token generation of its user and of the registry
when issued, and ``ormb registry revoke`` bumps one of them (:meth:`AccessControl.verify`
sees it within :data:`REVOCATION_DELAY` seconds).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from ormb.errors import StorageError, UsageError
from ormb.server.throttle import LoginThrottle

ACTIONS = ("pull", "push", "delete")
ANONYMOUS = "anonymous"
TOKEN_LIFETIME = 300
REFRESH_LIFETIME = 7 * 86400  # a refresh token (OAuth2 ``access_type=offline``) lives a week unless revoked
REVOCATION_DELAY = 1.0  # seconds a running registry may take to see ``ormb registry revoke``
EVERYONE = ":all"  # the revocation key of ``ormb registry revoke --all`` (no user name holds a colon)
ANONYMOUS_KEY = ":anonymous"  # ... and of anonymous tokens
ANONYMOUS_PULL_WITH_POLICY = UsageError(
    "--anonymous-pull does not combine with --policy",
    "the policy decides what anonymous users may do: add a rule with users: [anonymous], "
    "e.g. repositories: ['*'] and actions: [pull]")


@dataclass(frozen=True)
class Rule:
    users: tuple[str, ...]
    repositories: tuple[str, ...]
    actions: frozenset[str]

    def grants(self, user: str | None, repository: str, action: str) -> bool:
        who = user or ANONYMOUS
        user_ok = who in self.users or (user is not None and "*" in self.users)
        return user_ok and action in self.actions and any(fnmatch.fnmatchcase(repository, p) for p in self.repositories)


def load_policy(path: Path) -> list[Rule]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise StorageError(f"cannot read the policy file {path}: {exc}") from None
    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list):
        raise StorageError(f"{path} has no 'rules' list", "see 'ormb registry serve --help' for the format")
    out = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise StorageError(f"{path}: rule {i + 1} is not a mapping")
        users, repositories, actions = (rule.get(k) for k in ("users", "repositories", "actions"))
        for name, value in (("users", users), ("repositories", repositories), ("actions", actions)):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise StorageError(f"{path}: rule {i + 1}: '{name}' must be a list of strings")
        unknown = set(actions) - set(ACTIONS)  # type: ignore[arg-type]
        if unknown:
            raise StorageError(f"{path}: rule {i + 1}: unknown actions {sorted(unknown)}; use {', '.join(ACTIONS)}")
        out.append(Rule(tuple(users), tuple(repositories), frozenset(actions)))  # type: ignore[arg-type]
    return out


def load_htpasswd(path: Path) -> dict[str, bytes]:
    users = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise StorageError(f"cannot read the htpasswd file {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, hashed = line.strip().partition(":")
        if not sep or not hashed.startswith(("$2y$", "$2b$", "$2a$")):
            raise StorageError(f"{path}:{number}: only bcrypt entries are supported", "create them with 'htpasswd -B'")
        users[user] = hashed.encode()
    return users


def bcrypt_cost(hashed: bytes) -> int:
    """The cost (log2 rounds) of a bcrypt hash ``$2b$NN$...``."""
    parts = hashed.split(b"$")
    return int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else 12


@dataclass
class TokenClaims:
    user: str | None
    access: dict[str, frozenset[str]]  # repository (or "registry:catalog") -> actions
    expires: float


@dataclass
class AccessControl:
    users: dict[str, bytes] | None = None  # None: no authentication at all
    rules: list[Rule] | None = None
    anonymous_pull: bool = False
    secret: bytes = b""
    token_lifetime: int = TOKEN_LIFETIME
    refresh_lifetime: int = REFRESH_LIFETIME
    revocations: Callable[[], dict[str, int]] = dict  # user (EVERYONE: all) -> token generation
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    issued: list[tuple[str | None, str]] = field(default_factory=list)  # (user, scope), newest last
    _verified: dict[str, float] = field(default_factory=dict)
    _generations: tuple[float, dict[str, int]] = (-1e18, {})
    _dummy: bytes = b""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.rules is not None and self.anonymous_pull:
            raise ANONYMOUS_PULL_WITH_POLICY
        if self.users:  # unknown users are checked against this, at the file's usual cost
            cost = Counter(bcrypt_cost(h) for h in self.users.values()).most_common(1)[0][0]
            self._dummy = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(rounds=min(max(cost, 4), 31)))

    @property
    def enabled(self) -> bool:
        return self.users is not None

    # -- logins -------------------------------------------------------------------------------
    def check_password(self, user: str, password: str) -> bool:
        """One bcrypt check, for known and unknown users alike (timing tells no user names);
        a success is remembered for a minute (bcrypt stays off the hot path)."""
        if not self.users:
            return False
        key = hashlib.sha256(f"{user}\0{password}".encode()).hexdigest()
        with self._lock:
            if self._verified.get(key, 0) > time.monotonic():
                return True
        hashed = self.users.get(user)
        secret = password.encode()[:72]  # bcrypt reads 72 bytes; htpasswd -B hashed no more
        if hashed is None:
            bcrypt.checkpw(secret, self._dummy)
            return False
        if not bcrypt.checkpw(secret, hashed.replace(b"$2y$", b"$2b$", 1)):
            return False
        with self._lock:
            if len(self._verified) > 10_000:
                now = time.monotonic()
                self._verified = {k: t for k, t in self._verified.items() if t > now}
            self._verified[key] = time.monotonic() + 60
        return True

    def login(self, user: str, password: str, address: str) -> bool:
        """:meth:`check_password`, throttled per user and per ``address``: raises
        :class:`~ormb.server.throttle.LoginRefused` while either has failed too often."""
        self.throttle.check(user, address)
        if self.check_password(user, password):
            self.throttle.succeeded(user)
            return True
        self.throttle.failed(user, address)
        return False

    def basic_user(self, header: str, address: str = "") -> str | None | bool:
        """The user of a Basic header: a name, None for no header, False for bad credentials.
        Raises :class:`~ormb.server.throttle.LoginRefused` while throttled."""
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            self.throttle.check("", address)
            self.throttle.failed("", address)
            return False
        return user if self.login(user, password, address) else False

    # -- the decision -------------------------------------------------------------------------
    def allowed(self, user: str | None, repository: str, action: str) -> bool:
        """May ``user`` (None: anonymous) do ``action`` on ``repository``?  A logged-in user may
        always do what an anonymous one may."""
        if not self.enabled:
            return True
        if self._anonymous_allowed(repository, action):
            return True
        if user is None:
            return False
        if self.rules is None:
            return True
        return any(rule.grants(user, repository, action) for rule in self.rules)

    def _anonymous_allowed(self, repository: str, action: str) -> bool:
        if self.rules is None:
            return self.anonymous_pull and action == "pull"
        return any(rule.grants(None, repository, action) for rule in self.rules)

    @property
    def anonymous_may_pull(self) -> bool:
        """Whether anonymous users may pull anything at all (then they may list what they may pull)."""
        if not self.enabled:
            return True
        if self.rules is None:
            return self.anonymous_pull
        return any(ANONYMOUS in rule.users and "pull" in rule.actions for rule in self.rules)

    @property
    def anonymous_may_act(self) -> bool:
        """Whether anonymous users may do anything at all: then a web page that reaches the registry by
        DNS rebinding would act as one, so the Host must be checked (:class:`~ormb.server.browser.BrowserGuard`)."""
        if not self.enabled:
            return True
        if self.rules is None:
            return self.anonymous_pull
        return any(ANONYMOUS in rule.users and rule.actions and rule.repositories for rule in self.rules)

    # -- tokens -------------------------------------------------------------------------------
    def issue(self, user: str | None, scopes: list[str]) -> tuple[str, int]:
        """An access token for what ``user`` may of ``scopes``, and its lifetime in seconds."""
        access: dict[str, list[str]] = {}
        with self._lock:
            self.issued.extend((user, scope) for scope in scopes)
            del self.issued[:-1000]
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository":
                wanted = {"pull", "push", "delete"} if actions == "*" else set(actions.split(","))
                granted = sorted(a for a in wanted if a in ACTIONS and self.allowed(user, name, a))
                access.setdefault(name, [])
                access[name] = sorted(set(access[name]) | set(granted))
            elif kind == "registry" and name == "catalog" and (user is not None or self.anonymous_may_pull):
                access["registry:catalog"] = ["*"]
        return self._sign({"sub": user, "access": access}, self.token_lifetime), self.token_lifetime

    def issue_refresh(self, user: str) -> str:
        """A refresh token: exchanged at ``/token`` for access tokens until it expires or is revoked."""
        return self._sign({"sub": user, "typ": "refresh"}, self.refresh_lifetime)

    def verify(self, token: str) -> TokenClaims | None:
        """The claims of a valid, unexpired, unrevoked access token; None otherwise."""
        data = self._claims(token)
        if data is None or data.get("typ") is not None or not isinstance(data.get("access") or {}, dict):
            return None
        access = {k: frozenset(v) for k, v in (data.get("access") or {}).items() if isinstance(v, list)}
        return TokenClaims(data.get("sub"), access, float(data["exp"]))

    def refresh_user(self, token: str) -> str | None:
        """The user of a valid refresh token who is still a user; None otherwise."""
        data = self._claims(token)
        if data is None or data.get("typ") != "refresh":
            return None
        user = data.get("sub")
        return user if isinstance(user, str) and self.users and user in self.users else None

    def _sign(self, claims: dict[str, Any], lifetime: int) -> str:
        user = claims["sub"]
        generation = self.generation(user, fresh=True)  # a token issued just after a revocation must survive it
        claims = {**claims, "exp": int(time.time()) + lifetime, "gen": [generation, self.generation(EVERYONE)]}
        payload = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=")
        signature = base64.urlsafe_b64encode(hmac.new(self.secret, payload, hashlib.sha256).digest()).rstrip(b"=")
        return (payload + b"." + signature).decode()

    def _claims(self, token: str) -> dict[str, Any] | None:
        payload, _, signature = token.encode().partition(b".")
        expected = base64.urlsafe_b64encode(hmac.new(self.secret, payload, hashlib.sha256).digest()).rstrip(b"=")
        if not hmac.compare_digest(signature, expected):
            return None
        try:
            data: Any = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("exp"), int) or data["exp"] < time.time():
            return None
        user = data.get("sub")
        if data.get("gen") != [self.generation(user), self.generation(EVERYONE)]:
            return None  # revoked: issued before 'ormb registry revoke'
        return data

    def generation(self, user: str | None, *, fresh: bool = False) -> int:
        """The current token generation of ``user`` (None: anonymous tokens; EVERYONE: all tokens), as read
        at most REVOCATION_DELAY seconds ago (``fresh``: now)."""
        now = time.monotonic()
        read_at, generations = self._generations
        if fresh or now - read_at > REVOCATION_DELAY:
            generations = self.revocations()
            self._generations = (now, generations)
        return generations.get(ANONYMOUS_KEY if user is None else user, 0)
