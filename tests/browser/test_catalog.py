"""The model catalog in a real browser: headless Chromium (Debian) driven by Playwright.

Screenshots go to test-output/screenshots/ at the top of the repository.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
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
    assert pull == f"ormb pull {catalog.host}/alice/digits:v1"
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
