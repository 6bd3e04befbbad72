"""Basic and Bearer auth against real registries; credentials files and helpers; no secret ever shown."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from registries import USERS, Distribution

from conftest import make_model
from ormb import api
from ormb.cache import cache_key, open_cache
from ormb.config import Settings
from ormb.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from ormb.oci.descriptor import Descriptor
from ormb.oci.reference import parse_reference
from ormb.registry.client import Registry
from ormb.registry.credentials import Credential
from ormb.registry.remote import RemoteRepository
from ormb.transfer import copy

pytestmark = pytest.mark.integration
ORMB = str(Path(sys.executable).with_name("ormb"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))  # never the user's own
    return Settings(home=tmp_path / "home", default_registry="localhost:5000")


def _saved(tmp_path: Path, settings: Settings, ref: str) -> str:
    api.save(make_model(tmp_path / "m", {"w.bin": os.urandom(100_000)}), ref, settings=settings)
    return ref


def test_basic_auth_login_push_pull_logout(tmp_path: Path, home: Settings, basic_registry: Distribution) -> None:
    ref = _saved(tmp_path, home, f"{basic_registry.host}/team/basic:v1")
    with pytest.raises(AuthenticationError, match="log in with 'ormb login"):
        api.push(ref, settings=home)
    api.login(basic_registry.host, "alice", USERS["alice"], settings=home)
    config = home.home / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert basic_registry.host in json.loads(config.read_text())["auths"]
    api.push(ref, settings=home)
    api.remove(ref, settings=home)
    api.pull(ref, settings=home)
    api.logout(basic_registry.host, settings=home)
    with pytest.raises(AuthenticationError):
        api.pull(ref, settings=home)
    with pytest.raises(NotFoundError, match="not logged in"):
        api.logout(basic_registry.host, settings=home)


def test_wrong_password_is_refused_at_login(home: Settings, basic_registry: Distribution) -> None:
    with pytest.raises(AuthenticationError) as info:
        api.login(basic_registry.host, "alice", "wrong-password", settings=home)
    assert f"check the credentials given to 'ormb login {basic_registry.host}'" in str(info.value)
    assert "wrong-password" not in str(info.value)
    assert not (home.home / "config.json").exists()


def test_docker_config_and_credential_helpers_are_used(
    tmp_path: Path, home: Settings, basic_registry: Distribution, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref = _saved(tmp_path, home, f"{basic_registry.host}/team/helper:v1")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-ormbtest"
    helper.write_text(
        "#!/bin/sh\nread host\n"
        f"[ \"$host\" = \"{basic_registry.host}\" ] || {{ echo 'credentials not found'; exit 1; }}\n"
        f"echo '{{\"Username\": \"alice\", \"Secret\": \"{USERS['alice']}\"}}'\n"
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"credHelpers": {basic_registry.host: "ormbtest"}}))
    api.push(ref, settings=home)  # no 'ormb login': docker's helper answers
    (docker / "config.json").write_text(json.dumps({"credsStore": "ormbtest"}))
    api.push(ref, settings=home)
    import base64

    auth = base64.b64encode(f"bob:{USERS['bob']}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {basic_registry.host: {"auth": auth}}}))
    assert api.tags(f"{basic_registry.host}/team/helper", settings=home) == ["v1"]


def test_bearer_tokens_per_scope_and_denied_push(
    tmp_path: Path, home: Settings, token_registry: Any,
) -> None:
    ref = _saved(tmp_path, home, f"{token_registry.host}/alice/model:v1")
    api.login(token_registry.host, "alice", USERS["alice"], settings=home)
    api.push(ref, settings=home)
    # bob may pull but not push
    bob = Settings(home=tmp_path / "bob", default_registry="localhost:5000")
    api.login(token_registry.host, "bob", USERS["bob"], settings=bob)
    api.pull(ref, settings=bob)
    api.tag(ref, f"{token_registry.host}/alice/model:bob", settings=bob)
    with pytest.raises(PermissionDeniedError) as info:
        api.push(f"{token_registry.host}/alice/model:bob", settings=bob)
    assert "denied: requested access to push to repository alice/model" in str(info.value)


def test_a_push_without_any_rights_says_push_not_pull(
    tmp_path: Path, home: Settings, token_registry: Any,
) -> None:
    """Anonymous users may not even pull alice/*: the first request of a push (HEAD before upload) used to fail
    with "pull from repository ... requires logging in", which reads as if the user had asked to pull."""
    ref = _saved(tmp_path, home, f"{token_registry.host}/alice/nobody:v1")
    with pytest.raises(AuthenticationError) as info:
        api.push(ref, settings=home)
    assert "push to repository alice/nobody" in str(info.value)
    assert "pull" not in str(info.value).replace("pull,push", "")


def test_a_pull_token_is_never_reused_for_a_push(
    tmp_path: Path, home: Settings, token_registry: Any,
) -> None:
    ref = _saved(tmp_path, home, f"{token_registry.host}/alice/scopes:v1")
    registry = Registry(token_registry.host, credentials=Credential("alice", USERS["alice"]))
    repo = RemoteRepository(registry, "alice/scopes")
    cache, key = open_cache(home), cache_key(parse_reference(ref, "localhost:5000"))
    start = len(token_registry.issued)
    assert not repo.exists(cache.resolve(key))  # a read: pull scope
    pusher = RemoteRepository(registry, "alice/scopes", pushing=True)  # what push uses: pull,push to look too
    copy(cache, key, pusher, "v1")
    scopes = [scope for _, scope in token_registry.issued[start:]]
    assert "repository:alice/scopes:pull" in scopes
    assert "repository:alice/scopes:pull,push" in scopes
    assert scopes.count("repository:alice/scopes:pull") == 1  # one token per scope, reused while valid


def test_tokens_are_fetched_again_when_they_expire(
    tmp_path: Path, token_registry: Any,
) -> None:
    registry = Registry(token_registry.host, credentials=Credential("alice", USERS["alice"]))
    repo = RemoteRepository(registry, "alice/expiry")
    token_registry.expires_in = 11  # ormb renews 10 s before expiry: this token is stale after 1 s
    try:
        start = len(token_registry.issued)
        assert not repo.exists(_fake_blob())
        assert not repo.exists(_fake_blob())
        assert len(token_registry.issued) - start == 1
        time.sleep(1.5)
        assert not repo.exists(_fake_blob())
        assert len(token_registry.issued) - start == 2
    finally:
        token_registry.expires_in = 300


def _fake_blob() -> Descriptor:
    return Descriptor.of_bytes("application/octet-stream", b"nothing here")


def test_anonymous_pull_where_the_policy_allows_it(
    tmp_path: Path, home: Settings, token_registry: Any,
) -> None:
    with pytest.raises(NotFoundError):  # anonymous got a token: the answer is 'unknown', not 'unauthorized'
        api.pull(f"{token_registry.host}/public/nothing:v1", settings=home)
    with pytest.raises(AuthenticationError):
        api.pull(f"{token_registry.host}/alice/model:v1", settings=home)


def test_no_secret_ever_appears_in_output(tmp_path: Path, home: Settings, basic_registry: Distribution) -> None:
    env = {**os.environ, "ORMB_HOME": str(home.home), "ORMB_NO_PROGRESS": "1"}
    secret = USERS["alice"]
    runs = [
        subprocess.run([ORMB, "--debug", "login", basic_registry.host, "-u", "alice", "--password-stdin"],
                       input="not-the-" + secret, capture_output=True, text=True, env=env),
        subprocess.run([ORMB, "--debug", "login", basic_registry.host, "-u", "alice", "-p", secret],
                       capture_output=True, text=True, env=env),
    ]
    _saved(tmp_path, home, f"{basic_registry.host}/team/secret:v1")
    runs.append(subprocess.run([ORMB, "--debug", "push", f"{basic_registry.host}/team/secret:v1"],
                               capture_output=True, text=True, env=env))
    runs.append(subprocess.run([ORMB, "--debug", "pull", f"{basic_registry.host}/team/nothing:v1"],
                               capture_output=True, text=True, env=env))
    assert runs[0].returncode == 5 and "Error: unauthorized" in runs[0].stderr
    assert runs[1].returncode == 0 and "insecure" in runs[1].stderr
    assert runs[2].returncode == 0, runs[2].stderr
    import base64

    basic = base64.b64encode(f"alice:{secret}".encode()).decode()
    for run in runs:
        for leak in (secret, basic, "Authorization"):
            assert leak not in run.stdout + run.stderr
