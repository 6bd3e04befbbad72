"""Credentials go only to the registry's own origin (scheme, host, port) and to its token realm.

A hostile registry (tests/hostile.py) sends the client elsewhere: an upload ``Location`` or a
tags ``Link`` on another port or another host, a blob redirect, an ``http`` token realm from an
``https`` registry.  Every request on every origin is recorded with its ``Authorization``
header; none may carry one off-origin.  Pagination must end on a repeated link and at a cap.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import IDENTITY_TOKEN, PASSWORD, USER, Answer, HostileRegistry, Origin
from registries import self_signed

from conftest import make_model
from ormb import api
from ormb.cli.main import main
from ormb.config import Settings
from ormb.errors import AuthenticationError, NotFoundError, RegistryError
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


def test_an_error_from_another_origin_names_that_origin(tmp_path: Path, settings: Settings,
                                                         hostile: HostileRegistry) -> None:
    """A 404 from where an upload Location led is not reported as the registry's own."""
    ref = _saved(tmp_path, settings, hostile.host)
    hostile.upload_origin = "elsewhere"

    def gone(origin: Origin, method: str, path: str, headers: dict[str, str]) -> Answer | None:
        return Answer(404, {}, b'{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN"}]}') if origin.name == "elsewhere" else None

    hostile.intercept = gone
    with pytest.raises(NotFoundError, match=f"at http://{hostile.elsewhere.address} \\(where {hostile.host} sent"):
        api.push(ref, settings=settings)


def _two_faced(hostile: HostileRegistry, where: str, rest: str) -> str:
    """A URL that urllib.parse reads as home and urllib3 connects to ``where`` with (the backslash)."""
    return f"http://{hostile.origins[where].address}\\@{hostile.host}{rest}"


@pytest.mark.parametrize("where", OFF_ORIGIN)
def test_an_upload_location_the_url_parsers_disagree_on_is_refused(tmp_path: Path, settings: Settings,
                                                                  hostile: HostileRegistry, where: str) -> None:
    """F1: ``http://127.0.0.1:<other>\\@<home>/upload/x`` was "home" to urlsplit; urllib3 sent it to
    <other>, with the credentials."""
    ref = _saved(tmp_path, settings, hostile.host)

    def bend(origin: Origin, method: str, path: str, answer: Answer) -> Answer:
        if method == "POST" and path.endswith("/blobs/uploads/") and answer.status == 202:
            answer.headers["Location"] = _two_faced(hostile, where, answer.headers["Location"])
        return answer

    hostile.bend = bend
    with pytest.raises(RegistryError, match="answered an upload badly"):
        api.push(ref, settings=settings)
    assert hostile.credentials_seen(*OFF_ORIGIN) == []


@pytest.mark.parametrize("where", OFF_ORIGIN)
def test_a_tags_link_the_url_parsers_disagree_on_is_refused(settings: Settings, hostile: HostileRegistry,
                                                           where: str) -> None:
    _login(settings, hostile.host)

    def pages(origin: Origin, query: dict[str, list[str]]) -> tuple[list[str], str | None]:
        if origin.name == "home" and "last" not in query:
            return ["v1", "v2"], _two_faced(hostile, where, "/v2/team/m/tags/list?n=2&last=v2")
        return ["v3"], None

    hostile.tags = pages
    with pytest.raises(RegistryError, match="answered the tag list of team/m badly"):
        api.tags(f"{hostile.host}/team/m", settings=settings)
    assert hostile.credentials_seen(*OFF_ORIGIN) == []


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


@pytest.mark.parametrize("bound", ["MAX_TAGS", "MAX_TAG_LIST_BYTES"])
def test_tag_pagination_bounds_the_tags_of_all_pages_together(settings: Settings, hostile: HostileRegistry,
                                                              monkeypatch: pytest.MonkeyPatch, bound: str) -> None:
    """F11: every page within its own limit, but no end to them: bounded in tags and in bytes, all pages together."""
    _login(settings, hostile.host)
    monkeypatch.setattr(grammar, "MAX_TAG_PAGES", 50)
    monkeypatch.setattr(grammar, bound, 20 if bound == "MAX_TAGS" else 400, raising=False)

    def endless(origin: Origin, query: dict[str, list[str]]) -> tuple[list[str], str | None]:
        page = int(query.get("last", ["0"])[0])
        return [f"t{page}-{i}" for i in range(5)], f"/v2/team/m/tags/list?n=5&last={page + 1}"

    hostile.tags = endless
    with pytest.raises(RegistryError, match="more than (20 tags|400 bytes)"):
        api.tags(f"{hostile.host}/team/m", settings=settings)


def test_ormb_tags_prints_each_page_as_it_arrives(settings: Settings, hostile: HostileRegistry,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """F11: the CLI streams the list (memory: one page), so what arrived is shown even when a later page fails."""
    _login(settings, hostile.host)

    def pages(origin: Origin, query: dict[str, list[str]]) -> tuple[list[str], str | None]:
        if "last" not in query:
            return ["v1", "v2"], "/v2/team/m/tags/list?n=2&last=v2"
        return ["not a tag!"], None

    hostile.tags = pages
    tags = api.iter_tags(f"{hostile.host}/team/m", settings=settings)
    assert next(tags) == "v1"
    assert len([s for s in hostile.seen if "/tags/list" in s.path and s.authorization]) == 1, "read ahead"
    assert main(["tags", f"{hostile.host}/team/m"]) == 6
    assert capsys.readouterr().out.split() == ["v1", "v2"]


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


@pytest.mark.parametrize("grant", ["password", "identity token"])
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_token_request_is_never_redirected(settings: Settings, grant: str, status: int) -> None:
    """F3: the token request (Basic user:password, or the identity token in a POST body) followed a
    redirect anywhere, including to http; a 3xx from the realm is now an error and nothing else is asked."""
    registry = HostileRegistry(auth="bearer")
    try:
        store = CredentialStore(settings.home / "config.json")
        store.store(registry.host, Credential("<token>", IDENTITY_TOKEN) if grant == "identity token"
                    else Credential(USER, PASSWORD))

        def moved(origin: Origin, method: str, path: str, headers: dict[str, str]) -> Answer | None:
            if origin.name == "realm":
                return Answer(status, {"Location": f"{registry.other_host.url}/token"})
            return None

        registry.intercept = moved
        with pytest.raises(RegistryError, match="token service .* redirect"):
            api.tags(f"{registry.host}/team/m", settings=settings)
        assert registry.requests_to("other-host") == []
        assert registry.credentials_seen(*OFF_ORIGIN) == []
    finally:
        registry.stop()


def test_the_identity_token_reaches_the_realm_and_nothing_else(settings: Settings) -> None:
    registry = HostileRegistry(auth="bearer")
    try:
        CredentialStore(settings.home / "config.json").store(registry.host, Credential("<token>", IDENTITY_TOKEN))
        registry.tags = lambda origin, query: (["v1"], None)
        assert api.tags(f"{registry.host}/team/m", settings=settings) == ["v1"]
        assert [s.method for s in registry.requests_to("realm") if s.carries(IDENTITY_TOKEN)] == ["POST"]
        assert registry.credentials_seen(*OFF_ORIGIN) == []
    finally:
        registry.stop()


def _challenging_elsewhere(registry: HostileRegistry) -> None:
    """Every off-origin server asks for credentials, naming a realm of its own."""
    def challenge(origin: Origin, method: str, path: str, headers: dict[str, str]) -> Answer | None:
        if origin.name in OFF_ORIGIN:
            return Answer(401, {"WWW-Authenticate": f'Bearer realm="{origin.url}/token",service="cdn"'})
        return None

    registry.intercept = challenge


@pytest.mark.parametrize("where", OFF_ORIGIN)
def test_a_challenge_after_a_redirect_elsewhere_is_not_answered(tmp_path: Path, settings: Settings,
                                                                hostile: HostileRegistry, where: str) -> None:
    """F2: a blob GET redirected to a CDN that answers 401 Bearer: ormb fetched a token from the CDN's
    realm with the user's password (urllib3 followed the redirect; the 401 looked like home's)."""
    ref = _saved(tmp_path, settings, hostile.host)
    api.push(ref, settings=settings)
    hostile.blob_origin = where
    _challenging_elsewhere(hostile)
    puller = Settings(home=tmp_path / "puller", default_registry="localhost:5000")
    _login(puller, hostile.host)
    with pytest.raises(RegistryError, match="asks for credentials"):
        api.pull(ref, settings=puller)
    assert [s for s in hostile.requests_to(where) if "/blobs/" in s.path], "the redirect was not followed"
    assert hostile.credentials_seen(*OFF_ORIGIN) == []


@pytest.mark.parametrize("where", OFF_ORIGIN)
def test_login_sent_elsewhere_by_a_redirect_answers_no_challenge_there(settings: Settings,
                                                                      hostile: HostileRegistry, where: str) -> None:
    """F2 through 'ormb login': its API check (GET /v2/) redirected to a host that asks for credentials."""
    other = hostile.origins[where]

    def moved(origin: Origin, method: str, path: str, headers: dict[str, str]) -> Answer | None:
        if origin.name == "home" and path == "/v2/":
            return Answer(307, {"Location": f"{other.url}/v2/"})
        if origin.name in OFF_ORIGIN:
            return Answer(401, {"WWW-Authenticate": f'Bearer realm="{origin.url}/token"'})
        return None

    hostile.intercept = moved
    with pytest.raises(RegistryError, match="asks for credentials"):
        api.login(hostile.host, USER, PASSWORD, settings=settings)
    assert hostile.requests_to(where)
    assert hostile.credentials_seen(*OFF_ORIGIN) == []


def test_redirects_are_followed_a_bounded_number_of_times(tmp_path: Path, settings: Settings,
                                                          hostile: HostileRegistry) -> None:
    ref = _saved(tmp_path, settings, hostile.host)
    api.push(ref, settings=settings)

    def loop(origin: Origin, method: str, path: str, headers: dict[str, str]) -> Answer | None:
        if "/blobs/sha256:" in path:
            return Answer(302, {"Location": path})  # to itself, forever
        return None

    hostile.intercept = loop
    puller = Settings(home=tmp_path / "puller", default_registry="localhost:5000")
    _login(puller, hostile.host)
    with pytest.raises(RegistryError, match="redirects"):
        api.pull(ref, settings=puller, options=TransportOptions(retries=0))
    per_blob = Counter(s.path for s in hostile.seen if "/blobs/sha256:" in s.path and s.method == "GET")
    assert per_blob and max(per_blob.values()) <= grammar.MAX_REDIRECTS + 2  # + the first, unauthorized, try


@pytest.mark.parametrize("where", ["home", "elsewhere"])
@pytest.mark.parametrize("status", [307, 308])
@pytest.mark.parametrize("chunked", [False, True])
def test_an_upload_redirected_with_its_body_is_sent_again_whole(tmp_path: Path, settings: Settings,
                                                                hostile: HostileRegistry, where: str, status: int,
                                                                chunked: bool) -> None:
    """F9: urllib3 re-sent the consumed generator body of a redirected PUT/PATCH, and the push hung
    until the read timeout.  Followed by hand, the body factory makes the body again."""
    ref = _saved(tmp_path, settings, hostile.host)
    redirected: set[str] = set()
    other = hostile.origins[where]
    method = "PATCH" if chunked else "PUT"

    def moved(origin: Origin, got: str, path: str, headers: dict[str, str]) -> Answer | None:
        if origin.name == "home" and got == method and path.startswith("/upload/") and path not in redirected:
            redirected.add(path)
            return Answer(status, {"Location": f"{other.url}{path}"})
        return None

    hostile.intercept = moved
    api.push(ref, settings=settings, options=TransportOptions(read_timeout=10, retries=0,
                                                              chunk_size=1024 if chunked else None))
    assert redirected
    puller = Settings(home=tmp_path / "puller", default_registry="localhost:5000")
    _login(puller, hostile.host)
    assert api.pull(ref, settings=puller).digest == api.inspect(ref, settings=settings).digest
    assert hostile.credentials_seen(*OFF_ORIGIN) == []


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
