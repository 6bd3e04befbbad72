"""The model catalog in a real browser: headless Chromium (Debian) driven by Playwright.

Screenshots go to test-output/screenshots/ at the top of the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from model_cards import HOSTILE_CARD, LICENCE
from registries import USERS, EmbeddedRegistry

from conftest import make_model
from ormb import api
from ormb.config import Settings
from ormb.registry.credentials import Credential

pytestmark = pytest.mark.browser
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]

ORMBFILE = """\
author: Ada Lovelace
description: Handwritten digits, 8x8 grey images
format: ONNX
framework: scikit-learn
metrics:
  test:
    - name: accuracy
      value: 0.9722
hyperParameters:
  - name: hidden_layer_sizes
    value: "64"
signature:
  inputs:
    - name: pixels
      size: [-1, 64]
      dType: float32
  outputs:
    - name: label
      size: [-1]
      dType: int64
"""


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRegistry]:
    registry = EmbeddedRegistry(tmp_path_factory.mktemp("catalog"), auth="bearer")
    home = tmp_path_factory.mktemp("catalog-home")
    settings = Settings(home=home / "ormb", default_registry=registry.host)
    for repo in ("alice/digits", "alice/iris", "alice/hello"):
        src = make_model(home / repo, {"model.onnx": os.urandom(30_000), "labels.txt": b"0\n1\n"}, ormbfile=ORMBFILE)
        api.save(src, f"{registry.host}/{repo}:v1", settings=settings)
        api.login(registry.host, "alice", USERS["alice"], settings=settings)
        api.push(f"{registry.host}/{repo}:v1", settings=settings)
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed; run scripts/test, which installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def expect(locator: object) -> object:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)  # type: ignore[arg-type]


def _shot(page: object, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)  # type: ignore[attr-defined]


def test_a_person_finds_a_model_reads_its_metadata_and_copies_the_pull_command(catalog: EmbeddedRegistry,
                                                                               browser: object) -> None:
    context = browser.new_context(  # type: ignore[attr-defined]
        http_credentials={"username": "alice", "password": USERS["alice"]}, viewport={"width": 1200, "height": 900},
    )
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=f"http://{catalog.host}")
    page = context.new_page()
    page.goto(f"http://{catalog.host}/")  # the policy lets anonymous users pull public/*: the list shows those
    assert page.locator("#repositories tbody tr").count() == 0
    page.click("#sign-in")  # asks the browser for credentials, then back to the list
    rows = page.locator("#repositories tbody tr")
    assert sorted(rows.all_inner_texts())[0].startswith("alice/digits")
    assert rows.count() == 3
    assert "signed in as alice" in page.locator("header").inner_text()
    _shot(page, "catalog-index.png")
    page.fill("#search", "dig")
    assert [r.inner_text().split("\t")[0] for r in rows.all() if r.is_visible()] == ["alice/digits"]
    page.fill("#search", "nothing-like-this")
    assert page.locator("#no-match").is_visible()
    page.fill("#search", "")
    page.click("text=alice/digits")
    assert page.locator("h1").inner_text() == "alice/digits"
    tag_row = page.locator("#tags tbody tr").first.inner_text()
    assert tag_row.startswith("v1") and "KiB" in tag_row
    _shot(page, "catalog-repository.png")
    page.click("#tags >> text=v1")
    assert page.locator("h1").inner_text() == "alice/digits:v1"
    fields = page.locator("#fields").inner_text()
    for expected in ("ONNX", "scikit-learn", "Ada Lovelace", "Handwritten digits, 8x8 grey images", "sha256:"):
        assert expected in fields
    signature = page.locator("#signature").inner_text()
    assert "pixels" in signature and "float32" in signature and "[-1, 64]" in signature and "label" in signature
    assert "accuracy" in page.locator("#metrics").inner_text() and "0.9722" in page.locator("#metrics").inner_text()
    assert "hidden_layer_sizes" in page.locator("#hyper-parameters").inner_text()
    files = page.locator("#files").inner_text()
    assert "model/model.onnx" in files and "29.3 KiB" in files and "model/labels.txt" in files
    pull = page.locator("#pull-command").inner_text()
    assert pull == f"ormb pull localhost:{catalog.port}/alice/digits:v1"  # the name the short form means
    page.click("#copy")
    expect(page.locator("#copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == pull
    _shot(page, "catalog-model.png")
    context.close()


def test_the_page_obeys_the_same_auth_as_the_api(catalog: EmbeddedRegistry, browser: object) -> None:
    from playwright.sync_api import Error

    anonymous = browser.new_context()  # type: ignore[attr-defined]
    page = anonymous.new_page()
    page.goto(f"http://{catalog.host}/")  # what anonymous users may pull (public/*: nothing here), and a way in
    assert "alice/" not in page.content() and page.locator("#repositories tbody tr").count() == 0
    sign_in = page.locator("#sign-in").get_attribute("href")
    with pytest.raises(Error, match="ERR_INVALID_AUTH_CREDENTIALS"):  # Chromium would ask for a login
        page.goto(f"http://{catalog.host}{sign_in}")
    response = anonymous.request.get(f"http://{catalog.host}/model?name=alice/digits&ref=v1")
    assert response.status == 401 and "Ada Lovelace" not in response.text()
    assert response.headers["www-authenticate"].startswith("Basic")
    anonymous.close()
    wrong = browser.new_context(http_credentials={"username": "alice", "password": "wrong"})  # type: ignore[attr-defined]
    response = wrong.request.get(f"http://{catalog.host}/model?name=alice/digits&ref=v1")
    assert response.status == 401 and "Ada Lovelace" not in response.text()
    wrong.close()


def test_users_see_only_what_they_may_pull(tmp_path: Path, browser: object) -> None:
    registry = EmbeddedRegistry(tmp_path / "registry", auth="bearer")
    policy = tmp_path / "registry" / "policy.yaml"
    policy.write_text("rules:\n  - users: [alice]\n    repositories: ['*']\n    actions: [pull, push]\n"
                      "  - users: [bob]\n    repositories: ['shared/*']\n    actions: [pull]\n")
    registry.stop()
    registry.start()  # picks the policy file up again
    try:
        settings = Settings(home=tmp_path / "home", default_registry=registry.host)
        api.login(registry.host, "alice", USERS["alice"], settings=settings)
        for repo in ("secret/model", "shared/model"):
            api.save(make_model(tmp_path / repo, {"w.bin": b"w"}), f"{registry.host}/{repo}:v1", settings=settings)
            api.push(f"{registry.host}/{repo}:v1", settings=settings)
        bob = browser.new_context(http_credentials={"username": "bob", "password": USERS["bob"]})  # type: ignore[attr-defined]
        page = bob.new_page()
        page.goto(f"http://{registry.host}/")
        assert page.locator("#repositories tbody tr").all_inner_texts()[0].startswith("shared/model")
        assert page.locator("#repositories tbody tr").count() == 1
        assert page.goto(f"http://{registry.host}/model?name=secret/model&ref=v1").status == 404
        assert "secret" not in page.content().replace("secret/model:", "").split("<main>")[1].split("There is no")[0]
        bob.close()
    finally:
        registry.stop()
    assert Credential("x", "y")  # the public type is importable by tests of the page too
    shutil.rmtree(tmp_path / "registry", ignore_errors=True)


def test_the_copied_pull_command_works_when_pasted_into_a_shell(catalog: EmbeddedRegistry, browser: object,
                                                               tmp_path: Path) -> None:
    """Whichever loopback name the browser used, the Copy button copies the name the registry
    announced, and that command, pasted into a shell, pulls the model under the name its short form
    means (ORMB_REGISTRY stands for the default localhost:5000: a test may not take port 5000)."""
    announced = catalog.server.host  # from the "ormb registry listening on" line
    assert announced == f"localhost:{catalog.port}"
    copied = set()
    for origin in (f"http://127.0.0.1:{catalog.port}", f"http://localhost:{catalog.port}"):
        context = browser.new_context(http_credentials={"username": "alice", "password": USERS["alice"]})  # type: ignore[attr-defined]
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
        page = context.new_page()
        page.goto(f"{origin}/model?name=alice/digits&ref=v1")
        page.click("#copy")
        expect(page.locator("#copy")).to_have_text("Copied")
        copied.add(page.evaluate("navigator.clipboard.readText()"))
        context.close()
    assert copied == {f"ormb pull {announced}/alice/digits:v1"}
    pasted = copied.pop()
    env = {**os.environ, "ORMB_HOME": str(tmp_path / "home"), "ORMB_REGISTRY": announced, "ORMB_NO_PROGRESS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def shell(line: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, input=stdin,
                              stdin=None if stdin is not None else subprocess.DEVNULL, timeout=120, cwd=tmp_path)

    login = shell(f"ormb login {announced} -u alice --password-stdin", stdin=USERS["alice"])
    assert login.returncode == 0, login.stderr
    pulled = shell(pasted)
    assert pulled.returncode == 0 and f"Downloaded newer model for {announced}/alice/digits:v1" in pulled.stdout, \
        (pulled.stdout, pulled.stderr)
    exported = shell("ormb export alice/digits:v1 -d out")  # the short form names the same model
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "out" / "model" / "model.onnx").stat().st_size == 30_000
    assert len(shell("ormb models").stdout.splitlines()) == 2  # a header and one model




def test_the_model_card_renders_and_nothing_in_it_runs(tmp_path: Path, browser: object) -> None:
    registry = EmbeddedRegistry(tmp_path / "registry")  # open: no login
    try:
        settings = Settings(home=tmp_path / "home", default_registry=registry.host)
        src = make_model(tmp_path / "m", {"README.md": HOSTILE_CARD.encode(), "LICENSE": LICENCE.encode(),
                                          "model.onnx": os.urandom(1000)}, ormbfile="format: ONNX\n")
        api.save(src, f"{registry.host}/team/card:v1", settings=settings)
        api.push(f"{registry.host}/team/card:v1", settings=settings)
        context = browser.new_context(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
        page = context.new_page()
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"http://{registry.host}/model?name=team/card&ref=v1")
        card = page.locator("#model-card")
        assert card.locator("h1").inner_text() == "Digits classifier"
        assert card.locator("li").all_inner_texts() == ["fast", "small"]
        assert card.locator("pre code").inner_text().strip() == 'print("hello")'
        assert card.locator("table td").all_inner_texts() == ["accuracy", "0.97"]
        assert "license: mit" not in card.inner_text()  # the front matter is metadata, not text
        page.click("text=click me")  # plain text now: nothing happens
        page.click("text=again")
        assert page.evaluate("typeof window.pwned") == "undefined"
        assert page.title() == "team/card:v1 · ormb registry"
        assert page.evaluate("document.querySelectorAll('#model-card script, #model-card img, [onerror]').length") == 0
        assert page.evaluate("[...document.querySelectorAll('a')].filter(a => !/^(https?:|mailto:)/.test(a.href)"
                             " && a.hasAttribute('href')).length") == 0
        assert "<script>" in card.inner_text() and "onerror" in card.inner_text()  # shown as the text it is
        assert all(url.startswith(f"http://{registry.host}/") for url in requested), requested  # no tracker loaded
        _shot(page, "catalog-model-card.png")
        page.click("#licence")
        assert page.locator("#document").inner_text().startswith("MIT License")
        page.go_back()
        page.click("#model-card >> text=licence")  # the card's relative link leads to the same file
        assert page.locator("h1").inner_text() == "model/LICENSE"
        context.close()
    finally:
        registry.stop()


def test_a_signed_model_shows_its_badge_and_fingerprint_and_its_referrers(tmp_path: Path, browser: object) -> None:
    """ormb registry serve --trust-key team.pub: a model signed with the team's key shows "signed files", that
    the signature covers the files only (the metadata sections are marked "not covered"), and the key's
    fingerprint; a model signed with another key shows "not verified" with the reason on hover and in the page
    (no such marks); both list their signature referrer."""
    from ormb.signing import generate_key_pair

    keys = tmp_path / "keys"
    keys.mkdir()
    team = generate_key_pair(keys / "team.pem", keys / "team.pub")
    generate_key_pair(keys / "other.pem", keys / "other.pub")
    registry = EmbeddedRegistry(tmp_path / "registry", trust_keys=(keys / "team.pub",))
    try:
        settings = Settings(home=tmp_path / "home", default_registry=registry.host)
        for repo, key in (("team/signed", "team.pem"), ("team/other", "other.pem")):
            ref = f"{registry.host}/{repo}:v1"
            api.save(make_model(tmp_path / repo, {"model.onnx": os.urandom(5000)}), ref, artifact_format="modelpack",
                     settings=settings)
            api.sign(ref, keys / key, settings=settings)
            api.push(ref, settings=settings)
        context = browser.new_context(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
        page = context.new_page()
        page.goto(f"http://{registry.host}/model?name=team/signed&ref=v1")
        expect(page.locator("#signed")).to_have_text("signed files")
        assert page.locator("#signed-covers").inner_text().startswith(
            "The signature covers the files only (their paths and SHA-256 digests), not the description")
        assert "not covered by the signature" in page.locator("#model-heading").inner_text()
        assert page.locator("#signed-by").inner_text() == f"key {team.public.fingerprint}"
        assert page.locator("#unsigned").count() == 0
        referrers = page.locator("#referrers tbody tr")
        assert referrers.count() == 1 and "application/vnd.dev.sigstore.bundle.v0.3+json" in referrers.inner_text()
        _shot(page, "catalog-signed-model.png")
        page.goto(f"http://{registry.host}/model?name=team/other&ref=v1")
        expect(page.locator("#unsigned")).to_have_text("not verified")
        assert page.locator("#signed").count() == 0 and page.locator("#signed-covers").count() == 0
        assert "not covered by the signature" not in page.locator("#model-heading").inner_text()
        assert "unknown key" in (page.locator("#unsigned").get_attribute("title") or "")
        assert "unknown key" in page.locator("#unsigned-because").inner_text()
        assert page.locator("#referrers tbody tr").count() == 1
        context.close()
    finally:
        registry.stop()
