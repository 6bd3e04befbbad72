"""Credentials go only to the registry's own origin (scheme, host, port) and to its token realm.

A hostile registry (tests/hostile.py) sends the client elsewhere: an upload ``Location`` or a
tags ``Link`` on another port or another host, a blob redirect, an ``http`` token realm from an
``https`` registry.  Every request on every origin is recorded with its ``Authorization``
header; none may carry one off-origin.  Pagination must end on a repeated link and at a cap.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import PASSWORD, USER, Answer, HostileRegistry, Origin
from registries import self_signed

from conftest import make_model
from ormb import api
from ormb.cli.main import main
from ormb.config import Settings
from ormb.errors import AuthenticationError, RegistryError
from ormb.oci import grammar
from ormb.registry.credentials import Credential, CredentialStore
from ormb.registry.transport import TransportOptions

pytestmark = pytest.mark.integration
OFF_ORIGIN = ["elsewhere", "other-host"]


@pytest.fixture(params=["basic", "bearer"])
def hostile(request: pytest.FixtureRequest) -> Iterator[HostileRegistry]:
    registry = HostileRegistry(auth=request.param)
    yield registry
    registry.stop()


def _login(settings: Settings, host: str) -> None:
    CredentialStore(settings.home / "config.json").store(host, Credential(USER, PASSWORD))


def _saved(tmp_path: Path, settings: Settings, host: str, tag: str = "v1") -> str:
    ref = f"{host}/team/m:{tag}"
    api.save(make_model(tmp_path / f"m-{tag}", {"w.bin": os.urandom(5000)}), ref, settings=settings)
    _login(settings, host)
    return ref


@pytest.mark.parametrize("where", OFF_ORIGIN)
@pytest.mark.parametrize("chunked", [False, True])
def test_an_upload_location_elsewhere_gets_no_credentials(tmp_path: Path, settings: Settings,
                                                         hostile: HostileRegistry, where: str, chunked: bool) -> None:
    ref = _saved(tmp_path, settings, hostile.host)
    hostile.upload_origin = where
    api.push(ref, settings=settings, options=TransportOptions(chunk_size=1024 if chunked else None))
    assert hostile.requests_to(where), "the client did not follow the Location at all"
    assert hostile.credentials_seen(where) == []
    assert hostile.credentials_seen("home"), "the registry's own origin gets them"


@pytest.mark.parametrize("where", OFF_ORIGIN)
def test_a_blob_redirected_elsewhere_is_fetched_without_credentials(tmp_path: Path, settings: Settings,
                                                                   hostile: HostileRegistry, where: str) -> None:
    ref = _saved(tmp_path, settings, hostile.host)
    api.push(ref, settings=settings)
    hostile.blob_origin = where
    puller = Settings(home=tmp_path / "puller", default_registry="localhost:5000")
    _login(puller, hostile.host)
    api.pull(ref, settings=puller)
    assert [s for s in hostile.requests_to(where) if "/blobs/" in s.path]
    assert hostile.credentials_seen(where) == []


def test_an_answer_401_elsewhere_is_not_answered_with_credentials(tmp_path: Path, settings: Settings,
                                                                 hostile: HostileRegistry) -> None:
    ref = _saved(tmp_path, settings, hostile.host)
    hostile.upload_origin = "elsewhere"

    def challenge(origin: Origin, method: str, path: str, headers: dict[str, str]) -> Answer | None:
        if origin.name != "elsewhere":
            return None
        realm = f"{origin.url}/token"
        scheme = 'Basic realm="give me your password"' if hostile.auth == "basic" else f'Bearer realm="{realm}"'
        return Answer(401, {"WWW-Authenticate": scheme})

    hostile.intercept = challenge
    with pytest.raises((AuthenticationError, RegistryError)):
        api.push(ref, settings=settings)
    assert hostile.credentials_seen("elsewhere") == []


@pytest.mark.parametrize("where", OFF_ORIGIN)
def test_a_tags_link_elsewhere_is_followed_without_credentials(settings: Settings, hostile: HostileRegistry,
                                                              where: str) -> None:
    _login(settings, hostile.host)
    other = hostile.origins[where]

    def pages(origin: Origin, query: dict[str, list[str]]) -> tuple[list[str], str | None]:
        if origin.name == "home":
            return ["v1", "v2"], f"{other.url}/v2/team/m/tags/list?n=2&last=v2"
        return ["v3"], None

    hostile.tags = pages
    assert api.tags(f"{hostile.host}/team/m", settings=settings) == ["v1", "v2", "v3"]
    assert hostile.requests_to(where)
    assert hostile.credentials_seen(where) == []


@pytest.mark.parametrize("link", ["/v2/team/m/tags/list?n=100", "self-absolute", "cycle"])
def test_ormb_tags_stops_on_a_repeated_link(settings: Settings, hostile: HostileRegistry, link: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _login(settings, hostile.host)

    def pages(origin: Origin, query: dict[str, list[str]]) -> tuple[list[str], str | None]:
        if link == "self-absolute":
            return ["v1"], f"{origin.url}/v2/team/m/tags/list?n=100"
        if link == "cycle":  # the first page -> page x -> the first page ...
            if "last" in query:
                return ["v-x"], "/v2/team/m/tags/list?n=100"
            return ["v-first"], "/v2/team/m/tags/list?n=100&last=x"
        return ["v1"], link

    hostile.tags = pages
    assert main(["tags", f"{hostile.host}/team/m"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed in (["v1"], ["v-first", "v-x"])
    pages_read = [s for s in hostile.requests_to("home") if "/tags/list" in s.path and s.authorization]
    assert len(pages_read) <= 3


def test_tag_pagination_has_a_page_cap(settings: Settings, hostile: HostileRegistry,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _login(settings, hostile.host)
    monkeypatch.setattr(grammar, "MAX_TAG_PAGES", 5)

    def endless(origin: Origin, query: dict[str, list[str]]) -> tuple[list[str], str | None]:
        page = int(query.get("last", ["0"])[0])
        return [f"t{page}"], f"/v2/team/m/tags/list?n=1&last={page + 1}"

    hostile.tags = endless
    with pytest.raises(RegistryError, match="more than 5 pages"):
        api.tags(f"{hostile.host}/team/m", settings=settings)
    assert len([s for s in hostile.seen if "/tags/list" in s.path and s.authorization]) <= 6


# -- TLS: an https registry may not send the client to an http realm --------------------------


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path, "hostile", [], ["127.0.0.1", "127.0.0.2"])


def test_an_https_registry_may_not_send_credentials_to_an_http_realm(
        tmp_path: Path, settings: Settings, tls_files: tuple[Path, Path]) -> None:
    registry = HostileRegistry(auth="bearer", tls=tls_files, realm_scheme="http")
    try:
        _login(settings, registry.host)
        options = TransportOptions(plain_http=False, ca_file=str(tls_files[0]))
        with pytest.raises(RegistryError, match="http://") as caught:
            api.tags(f"{registry.host}/team/m", settings=settings, options=options)
        assert "https" in caught.value.hint
        assert registry.requests_to("realm") == []
    finally:
        registry.stop()


def test_an_https_realm_gets_the_credentials_and_the_registry_the_token(
        tmp_path: Path, settings: Settings, tls_files: tuple[Path, Path]) -> None:
    registry = HostileRegistry(auth="bearer", tls=tls_files, realm_scheme="https")
    try:
        ref = _saved(tmp_path, settings, registry.host)
        options = TransportOptions(plain_http=False, ca_file=str(tls_files[0]))
        registry.upload_origin = "other-host"
        api.push(ref, settings=settings, options=options)
        assert registry.credentials_seen("realm") and all(s.authorization.startswith("Basic ")
                                                          for s in registry.credentials_seen("realm"))
        assert registry.credentials_seen("other-host") == []
    finally:
        registry.stop()


def test_a_realm_redirected_elsewhere_loses_the_credentials(settings: Settings) -> None:
    """urllib3 follows the redirect of the token request; it must drop Authorization on the way."""
    registry = HostileRegistry(auth="bearer")
    try:
        _login(settings, registry.host)

        def moved(origin: Origin, method: str, path: str, headers: dict[str, str]) -> Answer | None:
            if origin.name == "realm":
                return Answer(307, {"Location": f"{registry.elsewhere.url}/token"})
            return None

        registry.intercept = moved
        with pytest.raises((RegistryError, AuthenticationError)):
            api.tags(f"{registry.host}/team/m", settings=settings)
        assert registry.requests_to("elsewhere")
        assert registry.credentials_seen("elsewhere") == []
    finally:
        registry.stop()


def test_a_blob_redirect_from_https_to_plain_http_on_another_port_drops_credentials(
        tmp_path: Path, settings: Settings, tls_files: tuple[Path, Path]) -> None:
    """Scheme and port change together: urllib3's own redirect handling must strip Authorization."""
    registry = HostileRegistry(auth="basic", tls=tls_files)
    plain = Origin("plain", registry, "127.0.0.1", 0, None)
    registry.origins["plain"] = plain
    try:
        ref = _saved(tmp_path, settings, registry.host)
        options = TransportOptions(plain_http=False, ca_file=str(tls_files[0]))
        api.push(ref, settings=settings, options=options)
        registry.blob_origin = "plain"
        puller = Settings(home=tmp_path / "puller", default_registry="localhost:5000")
        _login(puller, registry.host)
        api.pull(ref, settings=puller, options=options)
        assert [s for s in registry.requests_to("plain") if "/blobs/" in s.path]
        assert registry.credentials_seen("plain") == []
    finally:
        plain.stop()
        registry.stop()
