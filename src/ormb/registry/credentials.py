"""Credentials in Docker's ``config.json`` format, with credential helpers.

ormb writes ``$ORMB_HOME/config.json`` (mode 0600) and reads it first, then Docker's own
config (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``), so a user's
``docker login`` just works.  ``credHelpers`` and ``credsStore`` run
``docker-credential-<name> get`` with the host on standard input.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ormb.errors import AuthenticationError, StorageError


@dataclass(frozen=True)
class Credential:
    username: str = ""
    password: str = ""  # or an identity token when username is "<token>"

    def __repr__(self) -> str:  # never show the secret, not even in a traceback
        return f"Credential(username={self.username!r}, password=***)"

    @property
    def empty(self) -> bool:
        return not self.username and not self.password


ANONYMOUS = Credential()


def docker_config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"


def _host_keys(host: str) -> list[str]:
    return [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]


class CredentialStore:
    """Looks credentials up in ormb's config, then Docker's; stores them in ormb's."""

    def __init__(self, ormb_config: Path, docker_config: Path | None = None) -> None:
        self.path = ormb_config
        self.docker_path = docker_config if docker_config is not None else docker_config_path()

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read {path}: {exc}", "fix or remove the file") from None
        return data if isinstance(data, dict) else {}

    def get(self, host: str) -> Credential:
        for path in (self.path, self.docker_path):
            found = self._lookup(self._read(path), host)
            if found is not None:
                return found
        return ANONYMOUS

    def _lookup(self, config: dict[str, Any], host: str) -> Credential | None:
        helpers = config.get("credHelpers") or {}
        if isinstance(helpers, dict) and host in helpers:
            return _run_helper(str(helpers[host]), host)
        auths = config.get("auths") or {}
        if isinstance(auths, dict):
            for key in _host_keys(host):
                entry = auths.get(key)
                if isinstance(entry, dict) and (entry.get("auth") or entry.get("identitytoken")):
                    return _decode_entry(entry, key)
        store = config.get("credsStore")
        if isinstance(store, str) and store:
            return _run_helper(store, host)
        return None

    def store(self, host: str, credential: Credential) -> None:
        config = self._read(self.path)
        auths = config.setdefault("auths", {})
        token = base64.b64encode(f"{credential.username}:{credential.password}".encode()).decode()
        auths[host] = {"auth": token}
        self._write(config)

    def remove(self, host: str) -> bool:
        config = self._read(self.path)
        auths = config.get("auths") or {}
        removed = [key for key in _host_keys(host) if key in auths]
        for key in removed:
            del auths[key]
        if removed:
            self._write(config)
        return bool(removed)

    def _write(self, config: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=".config.json.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2)
            os.replace(name, self.path)
        finally:
            Path(name).unlink(missing_ok=True)


def _decode_entry(entry: dict[str, Any], key: str) -> Credential:
    if entry.get("identitytoken"):
        return Credential("<token>", str(entry["identitytoken"]))
    try:
        username, _, password = base64.b64decode(str(entry["auth"])).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        raise StorageError(f"the stored credentials for {key} are not valid base64", "log in again") from None
    return Credential(username, password)


def _run_helper(name: str, host: str) -> Credential:
    program = f"docker-credential-{name}"
    try:
        result = subprocess.run([program, "get"], input=host, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise AuthenticationError(
            f"the credential helper {program} configured for {host} is not installed",
            "install it, or remove it from your Docker config.json",
        ) from None
    except subprocess.TimeoutExpired:
        raise AuthenticationError(f"the credential helper {program} did not answer") from None
    if result.returncode != 0:
        if "credentials not found" in (result.stdout + result.stderr).lower():
            return ANONYMOUS
        raise AuthenticationError(f"the credential helper {program} failed for {host}", "log in again")
    try:
        data = json.loads(result.stdout)
        return Credential(str(data.get("Username", "")), str(data.get("Secret", "")))
    except (ValueError, AttributeError):
        raise AuthenticationError(f"the credential helper {program} answered something that is not JSON") from None
