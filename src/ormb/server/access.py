"""Who may do what: htpasswd users, a policy of glob patterns, and this registry's own tokens.

Without an htpasswd file the registry is open (the laptop/CI default, loopback only).  With
one, users log in; without a policy file every user may do everything and anonymous users
nothing (``anonymous_pull`` lets them pull).  A policy file grants actions per user and
repository pattern::

    rules:
      - users: [alice]              # names, '*' for any logged-in user, 'anonymous' for everyone else
        repositories: ["alice/*"]   # glob patterns ('*' also matches '/')
        actions: [pull, push, delete]
      - users: ["*"]
        repositories: ["*"]
        actions: [pull]
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from ormb.errors import StorageError

ACTIONS = ("pull", "push", "delete")
ANONYMOUS = "anonymous"
TOKEN_LIFETIME = 300


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
    issued: list[tuple[str | None, str]] = field(default_factory=list)  # (user, scope), newest last
    _verified: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def enabled(self) -> bool:
        return self.users is not None

    def check_password(self, user: str, password: str) -> bool:
        if not self.users or user not in self.users:
            return False
        key = hashlib.sha256(f"{user}\0{password}".encode()).hexdigest()
        with self._lock:
            if self._verified.get(key, 0) > time.monotonic():
                return True
        if not bcrypt.checkpw(password.encode(), self.users[user].replace(b"$2y$", b"$2b$", 1)):
            return False
        with self._lock:  # bcrypt is slow on purpose: remember a success for a minute
            self._verified[key] = time.monotonic() + 60
        return True

    def basic_user(self, header: str) -> str | None | bool:
        """The user of a Basic header: a name, None for no header, False for bad credentials."""
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return user if self.check_password(user, password) else False

    def allowed(self, user: str | None, repository: str, action: str) -> bool:
        if not self.enabled:
            return True
        if user is None and self.anonymous_pull and action == "pull":
            return True
        if self.rules is None:
            return user is not None
        return any(rule.grants(user, repository, action) for rule in self.rules)

    # -- tokens -------------------------------------------------------------------------------
    def issue(self, user: str | None, scopes: list[str]) -> tuple[str, int]:
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
            elif kind == "registry" and name == "catalog" and (user is not None or not self.enabled):
                access["registry:catalog"] = ["*"]
        claims = {"sub": user, "exp": int(time.time()) + self.token_lifetime, "access": access}
        payload = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=")
        signature = base64.urlsafe_b64encode(hmac.new(self.secret, payload, hashlib.sha256).digest()).rstrip(b"=")
        return (payload + b"." + signature).decode(), self.token_lifetime

    def verify(self, token: str) -> TokenClaims | None:
        payload, _, signature = token.encode().partition(b".")
        expected = base64.urlsafe_b64encode(hmac.new(self.secret, payload, hashlib.sha256).digest()).rstrip(b"=")
        if not hmac.compare_digest(signature, expected):
            return None
        try:
            data: Any = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(data, dict) or data.get("exp", 0) < time.time():
            return None
        access = {k: frozenset(v) for k, v in (data.get("access") or {}).items()}
        return TokenClaims(data.get("sub"), access, float(data["exp"]))
