"""The registry's access decisions in-process: the policy, the login throttle, the browser guard,
token revocation and the catalog's caps, with generated inputs where the promise is general.

The black-box versions (a real ``ormb registry serve``) are in tests/integration/test_registry_access.py.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_registry_app import WSGIClient

from ormb.errors import UsageError
from ormb.server.access import ACTIONS, EVERYONE, AccessControl, Rule
from ormb.server.app import create_app
from ormb.server.browser import BrowserGuard, split_host
from ormb.server.http import Request, SpecError
from ormb.server.store import Store
from ormb.server.throttle import LoginRefused, LoginThrottle

USERS = ("alice", "bob", "carol")
REPOSITORIES = ("alice/m", "bob/m", "public/base", "public/deep/x", "team/a", "other")
PATTERNS = ("*", "alice/*", "bob/*", "public/*", "team/*", "other", "nothing/*")

rules = st.lists(st.builds(
    Rule,
    st.lists(st.sampled_from((*USERS, "*", "anonymous")), min_size=1, max_size=3).map(tuple),
    st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2).map(tuple),
    st.frozensets(st.sampled_from(ACTIONS), min_size=1),
), max_size=5)


@given(policy=st.none() | rules, anonymous_pull=st.booleans(), user=st.sampled_from(USERS),
       repository=st.sampled_from(REPOSITORIES), action=st.sampled_from(ACTIONS))
def test_a_logged_in_user_never_has_fewer_rights_than_an_anonymous_one(
        policy: list[Rule] | None, anonymous_pull: bool, user: str, repository: str, action: str) -> None:
    if policy is not None and anonymous_pull:
        with pytest.raises(UsageError, match="anonymous"):
            AccessControl(users={}, rules=policy, anonymous_pull=True)
        return
    access = AccessControl(users={}, rules=policy, anonymous_pull=anonymous_pull)
    if access.allowed(None, repository, action):
        assert access.allowed(user, repository, action)


@given(policy=rules, repository=st.sampled_from(REPOSITORIES), action=st.sampled_from(ACTIONS))
def test_anonymous_users_get_exactly_the_anonymous_rules(policy: list[Rule], repository: str, action: str) -> None:
    access = AccessControl(users={}, rules=policy)
    expected = any("anonymous" in r.users and action in r.actions and r.grants(None, repository, action) for r in policy)
    assert access.allowed(None, repository, action) == expected


def test_the_throttle_counts_per_user_and_per_address_and_forgets_after_the_window() -> None:
    now = [1000.0]
    throttle = LoginThrottle(per_user=3, per_address=5, window=60, clock=lambda: now[0])
    for i in range(3):
        throttle.check("alice", f"10.0.0.{i}")
        throttle.failed("alice", f"10.0.0.{i}")
    with pytest.raises(LoginRefused) as refused:
        throttle.check("alice", "10.0.0.99")
    assert refused.value.retry_after == 60
    throttle.check("bob", "10.0.0.99")  # another user, another address: free
    now[0] += 30
    with pytest.raises(LoginRefused) as refused:
        throttle.check("alice", "10.0.0.99")
    assert refused.value.retry_after == 30
    now[0] += 31
    throttle.check("alice", "10.0.0.99")  # the window moved past the failures
    for i in range(5):
        throttle.failed(f"nobody{i}", "2001:db8::1")
    with pytest.raises(LoginRefused):
        throttle.check("carol", "2001:db8::2")  # the same /64: the same client
    throttle.check("carol", "2001:db8:0:1::2")


def test_the_throttle_stays_bounded_in_memory() -> None:
    throttle = LoginThrottle(max_keys=1000)
    for i in range(5000):
        throttle.failed(f"user{i}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(throttle._failures) <= 1000


def _request(method: str = "GET", host: str | None = "127.0.0.1:5000", **headers: str) -> Request:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": "/v2/", "wsgi.input": io.BytesIO(),
                               "wsgi.url_scheme": "http", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "5000"}
    if host is not None:
        environ["HTTP_HOST"] = host
    environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()})
    return Request(environ)


label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


@given(name=st.lists(label, min_size=1, max_size=4).map(".".join), port=st.none() | st.integers(1, 65535))
def test_the_open_registry_answers_only_names_it_serves(name: str, port: int | None) -> None:
    guard = BrowserGuard.for_address("127.0.0.1", ("models.example.org",))
    host = name if port is None else f"{name}:{port}"
    served = name in ("localhost", "models.example.org") or name.endswith(".localhost")
    try:
        guard.check(_request(host=host))
    except SpecError as err:
        assert not served and err.status == 421, host
    else:
        assert served, f"Host {host} was answered"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10:5000", "[::1]:5000", "LOCALHOST:5000", "localhost.",
                                  "api.localhost", "models.example.org:443"])
def test_loopback_and_public_names_are_served(host: str) -> None:
    BrowserGuard.for_address("127.0.0.1", ("models.example.org",)).check(_request(host=host))


@pytest.mark.parametrize("host", ["10.1.2.3:5000", "[2001:db8::1]", "evil.example", "localhost.evil.example",
                                  "127.0.0.1.nip.io", "bad host", "a:b:c", "[::1", "x:99999999"])
def test_other_hosts_and_malformed_ones_are_refused(host: str) -> None:
    with pytest.raises(SpecError) as refused:
        BrowserGuard.for_address("127.0.0.1").check(_request(host=host))
    assert refused.value.status == 421


def test_a_wildcard_address_serves_any_ip_and_the_machines_names_and_auth_without_public_hosts_any_host() -> None:
    wildcard = BrowserGuard.for_address("0.0.0.0")
    wildcard.check(_request(host="10.1.2.3:5000"))
    wildcard.check(_request(host="[2001:db8::1]:5000"))
    with pytest.raises(SpecError):
        wildcard.check(_request(host="evil.example:5000"))
    BrowserGuard.for_address("127.0.0.1", open_registry=False).check(_request(host="evil.example"))
    with pytest.raises(SpecError):
        BrowserGuard.for_address("127.0.0.1", ("models.example.org",), open_registry=False).check(
            _request(host="evil.example"))


@pytest.mark.parametrize(("origin", "host", "allowed"), [
    ("http://127.0.0.1:5000", "127.0.0.1:5000", True),
    ("http://localhost:5000", "127.0.0.1:5000", True),  # the same server under a loopback alias
    ("https://models.example.org", "models.example.org", True),  # behind a TLS proxy
    ("http://localhost:5001", "127.0.0.1:5000", False),  # another local port: another origin
    ("http://evil.example:5000", "127.0.0.1:5000", False),
    ("null", "127.0.0.1:5000", False),
    ("http://127.0.0.1:5000/path", "127.0.0.1:5000", False),
    ("file://", "127.0.0.1:5000", False),
    ("https://models.example.org:8443", "models.example.org", False),
])
def test_state_changes_only_from_this_registrys_origin(origin: str, host: str, allowed: bool) -> None:
    guard = BrowserGuard.for_address("127.0.0.1", ("models.example.org",))
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        request = _request(method, host=host, Origin=origin)
        if allowed:
            guard.check(request)
        else:
            with pytest.raises(SpecError) as refused:
                guard.check(request)
            assert refused.value.status == 403
    guard.check(_request("GET", host=host, Origin=origin))  # reading changes nothing (and is same-origin only)


def test_a_browser_marked_cross_site_request_is_refused_without_an_origin() -> None:
    guard = BrowserGuard.for_address("127.0.0.1")
    with pytest.raises(SpecError):
        guard.check(_request("POST", **{"Sec-Fetch-Site": "cross-site"}))
    guard.check(_request("POST", **{"Sec-Fetch-Site": "same-origin"}))
    guard.check(_request("POST", **{"Sec-Fetch-Site": "none"}))  # typed into the address bar


@given(st.text(max_size=40))
def test_split_host_never_raises(value: str) -> None:
    found = split_host(value)
    if found is not None:
        host, port = found
        assert host == host.lower() and (port == "" or port.isdigit())


def test_revoked_tokens_stop_working_and_others_do_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ormb.server.access.REVOCATION_DELAY", 0.0)
    store = Store(tmp_path / "registry")
    users = {u: bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)) for u in ("alice", "bob")}
    access = AccessControl(users=users, secret=store.secret, revocations=store.token_generations)
    alice, _ = access.issue("alice", ["repository:alice/m:pull"])
    bob, _ = access.issue("bob", ["repository:bob/m:pull"])
    refresh = access.issue_refresh("alice")
    anonymous, _ = access.issue(None, [])
    assert access.verify(refresh) is None  # a refresh token is not an access token
    assert access.refresh_user(alice) is None  # nor the other way round
    store.revoke("alice")
    assert access.verify(alice) is None and access.refresh_user(refresh) is None
    assert access.verify(bob) is not None and access.verify(anonymous) is not None
    again, _ = access.issue("alice", ["repository:alice/m:pull"])
    assert access.verify(again) is not None
    store.revoke(EVERYONE)
    assert access.verify(bob) is None and access.verify(again) is None and access.verify(anonymous) is None


def test_an_unknown_user_costs_one_bcrypt_check_at_the_files_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    users = {"alice": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=5))}
    access = AccessControl(users=users)
    assert access._dummy.startswith(b"$2b$05$")
    checked: list[bytes] = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda password, hashed: checked.append(hashed) or real(password, hashed))
    assert not access.check_password("ghost", "pw")
    assert not access.check_password("alice", "x" * 100)  # longer than bcrypt reads: an answer, not a 500
    assert checked == [access._dummy, users["alice"]]


def test_the_catalog_reads_a_huge_listing_only_up_to_its_cap(tmp_path: Path) -> None:
    """A layer listing 30,000 files: the page renders PER_PAGE rows, the store remembers at most
    LISTING_CAP (+1 row saying the listing goes on), and the last page says where it stops."""
    import gzip
    import tarfile

    from ormb.server import model_files, pages

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(30_000):
            tar.addfile(tarfile.TarInfo(f"model/f{i:05d}"))
    layer = gzip.compress(raw.getvalue(), compresslevel=1)
    store = Store(tmp_path / "registry")
    c = WSGIClient(create_app(store, AccessControl()))
    config = json.dumps({"format": "Others"}).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.caicloud.model.config.v1alpha1+json",
                           "digest": c.upload("m/huge", config), "size": len(config)},
                "layers": [{"mediaType": "application/tar+gzip", "digest": c.upload("m/huge", layer), "size": len(layer)}]}
    assert c("PUT", "/v2/m/huge/manifests/v1", json.dumps(manifest).encode(),
             {"Content-Type": manifest["mediaType"]})[0] == 201
    status, body = c("GET", "/model?name=m/huge&ref=v1")[::2]
    assert status == 200 and body.count(b'<td class="mono">model/f') == pages.PER_PAGE and b'id="more"' in body
    remembered = store.layer_files(manifest["layers"][0]["digest"]) or []
    assert len(remembered) == model_files.LISTING_CAP + 1 and model_files.CAPPED in remembered
    last = pages.LISTING_CAP - pages.PER_PAGE
    status, body = c("GET", f"/model?name=m/huge&ref=v1&start={last}")[::2]
    assert status == 200 and b'id="more"' not in body and b'id="listing-capped"' in body


def test_basic_logins_are_throttled_in_the_app_with_a_clear_429(tmp_path: Path) -> None:
    users = {"alice": bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4))}
    app = create_app(Store(tmp_path / "registry"), AccessControl(users=users), auth_scheme="basic")
    wrong = "Basic " + base64.b64encode(b"alice:wrong").decode()
    statuses = [WSGIClient(app, wrong)("GET", "/v2/")[0] for _ in range(12)]
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
    status, headers, body = WSGIClient(app, "Basic " + base64.b64encode(b"alice:right").decode())("GET", "/v2/")
    assert status == 429 and headers["Retry-After"].isdigit()
    assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"


def test_a_token_issued_right_after_a_revocation_carries_the_new_generation(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ormb.server.access.REVOCATION_DELAY", 3600.0)  # verification would read stale numbers
    store = Store(tmp_path / "registry")
    access = AccessControl(users={"alice": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4))}, secret=store.secret,
                           revocations=store.token_generations)
    old, _ = access.issue("alice", [])
    store.revoke("alice")
    new, _ = access.issue("alice", [])  # issuing reads the generations afresh
    assert access.verify(new) is not None and access.verify(old) is None
