"""The web catalog's pages in-process (no server): one size per model, the names the Copy button
copies, the model card and licence, and what other tools' artifacts show.

The same pages run under gunicorn in tests/browser/test_catalog.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from model_cards import HOSTILE_CARD, LICENCE
from test_registry_app import OCI_MANIFEST, WSGIClient, sha

from conftest import craft_layer
from ormb.server.access import AccessControl
from ormb.server.app import create_app
from ormb.server.store import Store
from ormb.units import human_size

ORMB_CONFIG = "application/vnd.caicloud.model.config.v1alpha1+json"


@pytest.fixture
def c(tmp_path: Path) -> WSGIClient:
    return WSGIClient(create_app(Store(tmp_path / "registry"), AccessControl()))


def push(c: WSGIClient, repo: str, tag: str, config: tuple[str, bytes], layers: list[tuple[str, bytes, dict[str, str]]],
         *, artifact_type: str | None = None, sizes: list[int] | None = None) -> dict[str, Any]:
    """Push an artifact as any tool would (``sizes``: declare these layer sizes instead of the real ones);
    returns the manifest."""
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type:
        manifest["artifactType"] = artifact_type
    manifest["config"] = {"mediaType": config[0], "digest": c.upload(repo, config[1]), "size": len(config[1])}
    manifest["layers"] = []
    for i, (media_type, data, notes) in enumerate(layers):
        entry: dict[str, Any] = {"mediaType": media_type, "digest": c.upload(repo, data),
                                 "size": sizes[i] if sizes else len(data)}
        if notes:
            entry["annotations"] = notes
        manifest["layers"].append(entry)
    status, _, body = c.manifest(repo, tag, json.dumps(manifest).encode())
    assert status == 201, body
    return manifest


def page(c: WSGIClient, target: str, headers: dict[str, str] | None = None) -> str:
    status, _, body = c("GET", target, headers=headers)
    assert status == 200, (status, body[:500])
    return body.decode()


SIZE = r"(\d+(?:\.\d)? (?:B|KiB|MiB|GiB|TiB|PiB))"


def shown_sizes(c: WSGIClient, repo: str, tag: str) -> tuple[str, str]:
    """(the size on the repository page's row for ``tag``, the size on the model page)."""
    repository = page(c, f"/repository?name={repo}")
    row = next(r for r in repository.split("<tr") if f"ref={tag}\"" in r)
    model = page(c, f"/model?name={repo}&ref={tag}")
    found_row = re.search(rf"<td[^>]*>{SIZE}</td>", row)
    found_model = re.search(rf"<dt>Size</dt>\s*<dd[^>]*>{SIZE}</dd>", model)
    assert found_row and found_model, (row, model[:3000])
    return found_row.group(1), found_model.group(1)


# -- one size -----------------------------------------------------------------------------------

def test_the_repository_page_and_the_model_page_show_one_size_the_layers_sum(c: WSGIClient) -> None:
    """The newcomer's 200.7 vs 200.0 KiB: the repository page added the config (and counted a layer
    pushed twice once); ormb inspect and ormb models count the layers."""
    layer = craft_layer([("model/weights.bin", "file", os.urandom(204_000))])  # ~200 KiB
    config = json.dumps({"format": "Others", "description": "d" * 700}).encode()
    push(c, "t/size", "v1", (ORMB_CONFIG, config), [("application/tar+gzip", layer, {})])
    assert shown_sizes(c, "t/size", "v1") == (human_size(len(layer)),) * 2


@given(st.lists(st.integers(0, (1 << 63) - 1), max_size=6), st.lists(st.integers(0, 5), max_size=6))
def test_any_layers_give_one_size_on_both_pages(declared: list[int], repeats: list[int]) -> None:
    """Any declared sizes (registries do not check them against the blobs; ormb inspect adds them up
    as declared), any layer pushed several times: both pages show human_size of the sum."""
    import tempfile

    blobs = [b"layer %d" % (r % 3) for r in repeats[: len(declared)]] + [b"x"] * (len(declared) - len(repeats))
    with tempfile.TemporaryDirectory() as root:
        client = WSGIClient(create_app(Store(Path(root)), AccessControl()))
        layers = [("application/vnd.cncf.model.weight.v1.raw", data, {"org.cncf.model.filepath": f"w{i}.bin"})
                  for i, data in enumerate(blobs)]
        config = json.dumps({"descriptor": {"name": "m"}, "config": {},
                             "modelfs": {"type": "layers", "diffIds": []}}).encode()
        push(client, "t/any", "v1", ("application/vnd.cncf.model.config.v1+json", config), layers,
             artifact_type="application/vnd.cncf.model.manifest.v1+json", sizes=declared)
        assert shown_sizes(client, "t/any", "v1") == (human_size(sum(declared)),) * 2


def test_an_index_has_no_size_of_its_own_on_either_page(c: WSGIClient) -> None:
    member = push(c, "t/idx", "m1", (ORMB_CONFIG, b'{"format":"Others"}'), [("application/tar+gzip", b"x" * 5000, {})])
    data = json.dumps(member).encode()
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha(data), "size": len(data)}]}
    assert c.manifest("t/idx", "multi", json.dumps(index).encode(), index["mediaType"])[0] == 201
    repository = page(c, "/repository?name=t/idx")
    row = next(r for r in repository.split("<tr") if 'ref=multi"' in r)
    assert re.search(SIZE, row) is None and "<td>-</td>" in row
    model = page(c, "/model?name=t/idx&ref=multi")
    assert re.search(rf"<dt>Size</dt>\s*<dd[^>]*>{SIZE}</dd>", model) is None


def test_sizes_of_manifests_pushed_before_the_size_was_recorded_are_filled_in_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "registry")
    client = WSGIClient(create_app(store, AccessControl()))
    layer = os.urandom(3000)
    push(client, "t/old", "v1", (ORMB_CONFIG, b'{"format":"Others"}'), [("application/tar+gzip", layer, {})])
    store.db.execute("ALTER TABLE manifests DROP COLUMN layers_size")  # the database of an older ormb
    reopened = WSGIClient(create_app(Store(tmp_path / "registry"), AccessControl()))
    assert shown_sizes(reopened, "t/old", "v1") == (human_size(len(layer)),) * 2


def test_a_size_beyond_int64_is_refused_as_distribution_does(c: WSGIClient) -> None:
    """The image spec's size is an int64; distribution (Go) refuses more.  Without the bound a
    declared size of any length reached the database and the pages' arithmetic."""
    layer = c.upload("t/huge", b"x")
    config = c.upload("t/huge", b"{}")
    for size, status in (((1 << 63) - 1, 201), (1 << 63, 400), (10 ** 4000, 400)):
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
                    "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": size}]}
        answer, _, body = c.manifest("t/huge", "v1", json.dumps(manifest).encode())
        assert answer == status, body
        assert status == 201 or json.loads(body)["errors"][0]["code"] == "MANIFEST_INVALID"


# -- the name the Copy button copies ---------------------------------------------------------------

def pull_command(c: WSGIClient, repo: str, ref: str, host: str | None) -> str:
    text = page(c, f"/model?name={repo}&ref={ref}", headers={"Host": host} if host else None)
    found = re.search(r'<code id="pull-command">([^<]*)</code>', text)
    assert found, text[:2000]
    return found.group(1)


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1:5000", "localhost:5000"),  # what the server used to announce: the short form's name instead
    ("localhost:5000", "localhost:5000"),
    ("LOCALHOST:5000", "localhost:5000"),
    ("127.0.0.1:5001", "localhost:5001"),
    ("[::1]:5000", "localhost:5000"),
    ("127.0.0.1", "localhost"),
    (None, "localhost:5000"),  # no Host (HTTP/1.0): the listening address, named the same way
])
def test_the_copy_command_names_a_loopback_registry_localhost(c: WSGIClient, host: str | None, expected: str) -> None:
    """A name without a host means localhost:5000 and the cache and logins are keyed by the name as
    written: 127.0.0.1:5000 would make the same model a second model with a second login."""
    push(c, "t/name", "v1", (ORMB_CONFIG, b'{"format":"Others"}'), [("application/tar+gzip", b"x" * 100, {})])
    assert pull_command(c, "t/name", "v1", host) == f"ormb pull {expected}/t/name:v1"


def test_the_copy_command_uses_the_name_the_browser_used_or_the_public_one(tmp_path: Path) -> None:
    from ormb.server.browser import BrowserGuard
    from ormb.server.names import RegistryNames

    def client(public: tuple[str, ...], addr: str = "0.0.0.0", htpasswd: bool = False) -> WSGIClient:
        guard = BrowserGuard.for_address(addr, public, open_registry=not htpasswd)
        return WSGIClient(create_app(Store(tmp_path / f"r{len(public)}{addr}"), AccessControl(),
                                     guard=guard, names=RegistryNames.for_address(addr, public)))

    anywhere = client(())
    push(anywhere, "t/m", "v1", (ORMB_CONFIG, b'{"format":"Others"}'), [("application/tar+gzip", b"x" * 100, {})])
    assert pull_command(anywhere, "t/m", "v1", "10.1.2.3:5000") == "ormb pull --plain-http 10.1.2.3:5000/t/m:v1"
    assert pull_command(anywhere, "t/m", "v1", "127.0.0.1:5000") == "ormb pull localhost:5000/t/m:v1"
    public = client(("Models.Example.org", "mirror.example.org:8443"))
    push(public, "t/m", "v1", (ORMB_CONFIG, b'{"format":"Others"}'), [("application/tar+gzip", b"x" * 100, {})])
    for host, expected in (("models.example.org", "models.example.org"),  # behind a proxy on 443
                           ("models.example.org:5000", "models.example.org:5000"),  # reached directly
                           ("mirror.example.org:8443", "mirror.example.org:8443"),
                           ("127.0.0.1:5000", "models.example.org"),  # a proxy that passes its own Host
                           ("10.1.2.3:5000", "models.example.org")):
        assert pull_command(public, "t/m", "v1", host) == f"ormb pull {expected}/t/m:v1", host
    ref = "sha256:" + "0" * 64
    assert ref not in pull_command(public, "t/m", "v1", "models.example.org")


@pytest.mark.parametrize("host", ["evil.example;rm -rf ~", "a b", "x" * 300, "models.example.org:99999x", "[zz]:1",
                                  "host\u00e9.example"])
def test_a_host_header_that_is_no_host_name_never_reaches_the_copy_command(tmp_path: Path, host: str) -> None:
    """A registry with logins answers any Host (without --public-host): what the page copies is
    then the listening address, never the header's words."""
    import base64

    import bcrypt

    from ormb.server.access import Rule

    users = {"alice": bcrypt.hashpw(b"pw", bcrypt.gensalt(4))}
    access = AccessControl(users=users, rules=[Rule(("alice",), ("*",), frozenset({"pull", "push"}))])
    app = create_app(Store(tmp_path / "r"), access, auth_scheme="basic")
    c = WSGIClient(app, auth="Basic " + base64.b64encode(b"alice:pw").decode())
    push(c, "t/m", "v1", (ORMB_CONFIG, b'{"format":"Others"}'), [("application/tar+gzip", b"x" * 100, {})])
    assert pull_command(c, "t/m", "v1", host) == "ormb pull localhost:5000/t/m:v1"


def test_the_announced_name_is_localhost_when_localhost_reaches_the_address() -> None:
    from ormb.server.names import RegistryNames, localhost_reaches

    assert localhost_reaches("127.0.0.1") and localhost_reaches("0.0.0.0") and localhost_reaches("::")
    assert not localhost_reaches("127.0.0.2") and not localhost_reaches("10.1.2.3")
    loopback = RegistryNames.for_address("127.0.0.1")
    assert loopback.listening("127.0.0.1", 5000, tls=False).url == "http://localhost:5000"
    assert loopback.listening("127.0.0.1", 5000, tls=False).kind == "loopback"
    anywhere = RegistryNames.for_address("0.0.0.0", ("models.example.org",))
    assert anywhere.listening("0.0.0.0", 5000, tls=True).url == "https://localhost:5000"
    assert anywhere.listening("0.0.0.0", 5000, tls=True).kind == "every address"
    other = RegistryNames.for_address("127.0.0.2")
    assert other.listening("127.0.0.2", 5000, tls=False).url == "http://127.0.0.2:5000"
    assert RegistryNames.for_address("10.1.2.3").listening("10.1.2.3", 80, tls=False).host == "10.1.2.3:80"


def test_the_copy_command_says_which_scheme_when_the_client_would_guess_the_other(tmp_path: Path) -> None:
    """ormb talks plain HTTP to loopback names and HTTPS to others: a registry reached otherwise
    needs --tls or --plain-http in the command, or the pasted command fails."""
    from ormb.server.browser import BrowserGuard

    c = WSGIClient(create_app(Store(tmp_path / "r"), AccessControl(), guard=BrowserGuard.for_address("0.0.0.0")))
    push(c, "t/s", "v1", (ORMB_CONFIG, b'{"format":"Others"}'), [("application/tar+gzip", b"x" * 100, {})])
    text = page(c, "/model?name=t/s&ref=v1", headers={"Host": "localhost:5000", "X-Ignored": "1"})
    assert "ormb pull localhost:5000/t/s:v1" in text

    def command(scheme: str, host: str) -> str:
        status, _, body = c("GET", "/model?name=t/s&ref=v1", headers={"Host": host}, scheme=scheme)
        found = re.search(r'<code id="pull-command">([^<]*)</code>', body.decode())
        assert status == 200 and found
        return found.group(1)

    assert command("https", "127.0.0.1:5000") == "ormb pull --tls localhost:5000/t/s:v1"
    assert command("http", "10.1.2.3:5000") == "ormb pull --plain-http 10.1.2.3:5000/t/s:v1"
    assert command("https", "10.1.2.3:5000") == "ormb pull 10.1.2.3:5000/t/s:v1"


# -- the model card and the licence -----------------------------------------------------------------



class Tags(__import__("html.parser").parser.HTMLParser):
    """Every start tag of a fragment with its attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


CARD_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6", "p", "ul", "ol", "li", "pre", "code", "table", "thead", "tbody",
             "tr", "th", "td", "a", "em", "strong", "s", "blockquote", "hr", "br"}


def assert_safe(html: str) -> None:
    """Only the tags and attributes Markdown makes, and links a browser cannot run."""
    for tag, attrs in Tags(html).tags:
        assert tag in CARD_TAGS, (tag, html)
        for name, value in attrs.items():
            assert name in ("href", "title", "rel", "class", "style", "start"), (tag, name, html)
            if name == "href":
                assert value is not None and (value.startswith(("https://", "http://", "mailto:", "/file?", "#"))), value
            if name == "style":
                assert value in ("text-align:left", "text-align:right", "text-align:center"), value
            if name == "class":
                assert value is not None and value.startswith("language-"), value  # the info string, escaped


def card_of(text: str) -> str:
    found = re.search(r'<article class="card" id="model-card">(.*?)</article>', text, re.DOTALL)
    assert found, text[:3000]
    return found.group(1)


def test_the_model_card_is_rendered_sanitised_and_the_licence_linked(c: WSGIClient) -> None:
    layer = craft_layer([("model/README.md", "file", HOSTILE_CARD.encode()), ("model/LICENSE", "file", LICENCE.encode()),
                         ("model/weights.bin", "file", b"w" * 100)])
    push(c, "t/card", "v1", (ORMB_CONFIG, b'{"format":"Others"}'), [("application/tar+gzip", layer, {})])
    status, headers, body = c("GET", "/model?name=t/card&ref=v1")
    text = body.decode()
    card = card_of(text)
    assert "<h1>Digits classifier</h1>" in card and card.count("<li>") == 2 and "<table>" in card
    assert '<code class="language-python">print(&quot;hello&quot;)' in card
    assert_safe(card)
    assert "&lt;script&gt;" in card and "onerror" in card  # shown as text, never as markup
    assert "front-matter-tag" not in card
    assert "tracker.example/pixel.png" in card and "<img" not in card  # a link, never loaded
    assert text.count("<script") == text.count("<script nonce=")  # only the page's own scripts
    policy = headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", policy)
    assert nonce and f'<script nonce="{nonce.group(1)}">' in text
    assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0] and "default-src 'none'" in policy
    licence_link = re.search(r'<a id="licence" href="([^"]+)">model/LICENSE</a>', text)
    assert licence_link and f'href="{licence_link.group(1)}">licence</a>' in card  # the card's relative link too
    licence = page(c, licence_link.group(1).replace("&amp;", "&"))
    assert "MIT License" in licence and "&lt;to any person&gt;" in licence
    assert c("GET", licence_link.group(1).replace("&amp;", "&").replace("LICENSE", "weights.bin"))[0] == 404


def _kitfile() -> bytes:
    return json.dumps({"manifestVersion": "1.0.0", "package": {"name": "kit"}, "model": {"path": "m.gguf"}}).encode()


def _tar(files: dict[str, bytes]) -> bytes:
    from conftest import craft_tar

    return craft_tar([(name, "file", data) for name, data in files.items()])


MODELPACK = ("application/vnd.cncf.model.config.v1+json",
             json.dumps({"descriptor": {"name": "m"}, "config": {}, "modelfs": {"type": "layers", "diffIds": []}}).encode())


def _shapes() -> dict[str, tuple[tuple[str, bytes], list[tuple[str, bytes, dict[str, str]]], str | None]]:
    import gzip

    import zstandard

    card = b"# The card\n\ntext\n"
    licence = b"Apache License 2.0\n"
    return {
        "modelpack raw layers": (MODELPACK, [
            ("application/vnd.cncf.model.weight.v1.raw", b"w", {"org.cncf.model.filepath": "model.safetensors"}),
            ("application/vnd.cncf.model.doc.v1.raw", card, {"org.cncf.model.filepath": "README.md"}),
            ("application/vnd.cncf.model.doc.v1.raw", licence, {"org.cncf.model.filepath": "LICENSE"})],
            "application/vnd.cncf.model.manifest.v1+json"),
        "modctl cnai doc tar layers (Harbor 2.13)": (
            ("application/vnd.cnai.model.config.v1+json", MODELPACK[1]), [
                ("application/vnd.cnai.model.weight.v1.raw", b"w", {"org.cnai.model.filepath": "model.safetensors"}),
                ("application/vnd.cnai.model.doc.v1.tar", _tar({"README.md": card}), {"org.cnai.model.filepath": "README.md"}),
                ("application/vnd.cnai.model.doc.v1.tar", _tar({"LICENSE": licence}), {"org.cnai.model.filepath": "LICENSE"})],
            "application/vnd.cnai.model.manifest.v1+json"),
        "kitops docs tar+gzip and raw+zstd": (("application/vnd.kitops.modelkit.config.v1+json", _kitfile()), [
            ("application/vnd.kitops.modelkit.model.v1.raw", b"GGUF", {"org.cncf.model.filepath": "m.gguf"}),
            ("application/vnd.kitops.modelkit.docs.v1.tar+gzip", gzip.compress(_tar({"README.md": card}), mtime=0), {}),
            ("application/vnd.kitops.modelkit.docs.v1.raw+zstd", zstandard.ZstdCompressor().compress(licence),
             {"org.cncf.model.filepath": "LICENSE"})], "application/vnd.kitops.modelkit.manifest.v1+json"),
        "docker model runner v0.2 dir.tar and license": (
            ("application/vnd.docker.ai.model.config.v0.2+json", b'{"config": {"format": "gguf"}}'), [
                ("application/vnd.docker.ai.gguf.v3", b"GGUF", {"org.cncf.model.filepath": "model.gguf"}),
                ("application/vnd.docker.ai.dir.tar", _tar({"README.md": card, "tokenizer.json": b"{}"}), {}),
                ("application/vnd.docker.ai.license", licence, {})], None),
    }


@pytest.mark.parametrize("shape", list(_shapes()))
def test_other_tools_cards_and_licences_show(c: WSGIClient, shape: str) -> None:
    config, layers, artifact_type = _shapes()[shape]
    push(c, "t/other", "v1", config, layers, artifact_type=artifact_type)
    text = page(c, "/model?name=t/other&ref=v1")
    assert "<h1>The card</h1>" in card_of(text)
    link = re.search(r'<a id="licence" href="([^"]+)">LICENSE</a>', text)
    assert link, text[:4000]
    assert "Apache License 2.0" in page(c, link.group(1).replace("&amp;", "&"))
    assert ">README.md</td>" in text  # the file list names the files inside tar layers too


@pytest.mark.parametrize(("files", "shown"), [
    ({"README": b"# plain README\n"}, "plain README"),
    ({"readme.md": b"# lower case\n"}, "lower case"),
    ({"README": b"# not this\n", "README.md": b"# this one\n"}, "this one"),
    ({"docs/README.md": b"# not at the top\n", "Readme.MD": b"# top\n"}, "top"),
])
def test_the_card_is_the_top_level_readme_md_first(c: WSGIClient, files: dict[str, bytes], shown: str) -> None:
    layer = craft_layer([(f"model/{name}", "file", data) for name, data in files.items()])
    push(c, "t/readme", "v1", (ORMB_CONFIG, b'{"format":"Others"}'), [("application/tar+gzip", layer, {})])
    assert f"<h1>{shown}</h1>" in card_of(page(c, "/model?name=t/readme&ref=v1"))


def test_a_long_card_is_cut_at_the_cap_and_says_so(c: WSGIClient) -> None:
    from ormb.server.modelcard import CARD_CAP

    long = b"# Long\n\n" + b"word " * (CARD_CAP // 4)
    push(c, "t/long", "v1", MODELPACK, [
        ("application/vnd.cncf.model.doc.v1.raw", long, {"org.cncf.model.filepath": "README.md"})],
        artifact_type="application/vnd.cncf.model.manifest.v1+json")
    text = page(c, "/model?name=t/long&ref=v1")
    assert 'id="card-cut"' in text and len(card_of(text)) < CARD_CAP + 1000


def test_the_card_is_read_only_from_the_repository_shown(tmp_path: Path) -> None:
    """A manifest of one repository naming another repository's README blob (a sparse push) shows
    no card: the catalog reads through a Fetcher limited to the repository."""
    c = WSGIClient(create_app(Store(tmp_path / "r"), AccessControl(), sparse=True))
    secret = b"# Secret card of another team\n"
    c.upload("other/team", secret)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.cncf.model.manifest.v1+json",
                "config": {"mediaType": MODELPACK[0], "digest": c.upload("t/sparse", MODELPACK[1]), "size": len(MODELPACK[1])},
                "layers": [{"mediaType": "application/vnd.cncf.model.doc.v1.raw", "digest": sha(secret),
                            "size": len(secret), "annotations": {"org.cncf.model.filepath": "README.md"}}]}
    assert c.manifest("t/sparse", "v1", json.dumps(manifest).encode())[0] == 201
    text = page(c, "/model?name=t/sparse&ref=v1")
    assert "Secret card" not in text and 'id="model-card"' not in text
    status, _, body = c("GET", "/file?name=t/sparse&ref=v1&path=README.md")
    assert status == 404 and b"Secret card" not in body


def test_a_listing_remembered_without_documents_reads_the_card_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "r")
    c = WSGIClient(create_app(store, AccessControl()))
    layer = craft_layer([("model/README.md", "file", b"# Remembered\n"), ("model/w.bin", "file", b"w")])
    push(c, "t/old", "v1", (ORMB_CONFIG, b'{"format":"Others"}'), [("application/tar+gzip", layer, {})])
    page(c, "/model?name=t/old&ref=v1")
    store.db.execute("DELETE FROM layer_documents")  # what an older ormb remembered: the listing only
    assert "<h1>Remembered</h1>" in card_of(page(c, "/model?name=t/old&ref=v1"))
    assert store.layer_document(sha(layer), "model/README.md") == b"# Remembered\n"


_FRAGMENTS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<a href='javascript:x'>a</a>",
              "[a](javascript:alert(1))", "[b](JAVASCRIPT:x)", "[c](&#106;avascript:x)", "<javascript:x>",
              "[d](data:text/html;base64,PHNjcmlwdD4=)", "[e](vbscript:x)", "[f](//evil.example)", "![g](x.png)",
              "![h](javascript:x)", "[i](java\tscript:x)", "[j]( javascript:x )", "[k](<javascript:x>)",
              '[l](https://a.example "t\\" onmouseover=\\"x")', "```js\" onload=\"x\n1\n```", "<iframe src=x>",
              "<svg onload=x>", "| a |\n|---|\n| <b onclick=x> |", "# h", "* l", "> q", "`c`", "**b**", "\n\n",
              "[m]: javascript:x\n[m]", "<style>*{}</style>", "&lt;script&gt;", "[n](%6Aavascript:x)",
              "[o](\\javascript:x)", "<!-- x -->", "[p](mailto:a@b.example)", "[q](../x)", "[r](#s)"]


@given(st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=20), max_size=12), st.sampled_from(["", " ", "\n"]))
def test_any_card_renders_to_markdown_tags_and_runnable_nothing(parts: list[str], joiner: str) -> None:
    from ormb.server.modelcard import render_card

    html = render_card(joiner.join(parts), "README.md", "/file?path=")
    assert_safe(str(html))


def test_a_layer_that_decompresses_beyond_what_export_would_unpack_is_listed_only_so_far(
        c: WSGIClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzip or zstd bomb: the listing reads as many decompressed bytes as export would unpack
    (ormb.model.budget: 20 times the compressed bytes read, at least MIN_EXPAND; 1 MiB here to keep the
    test fast), then stops and says so."""
    from ormb.model import budget

    monkeypatch.setattr(budget, "MIN_EXPAND", 1 << 20)
    layer = craft_layer([("model/a.bin", "file", b"a"), ("model/zeros.bin", "file", bytes(4 << 20)),
                         ("model/z.txt", "file", b"z")])
    push(c, "t/bomb", "v1", (ORMB_CONFIG, b'{"format":"Others"}'), [("application/tar+gzip", layer, {})])
    text = page(c, "/model?name=t/bomb&ref=v1")
    assert "model/a.bin" in text and "model/z.txt" not in text and 'id="listing-capped"' in text


# -- other tools' artifacts --------------------------------------------------------------------------

def fields_of(text: str) -> dict[str, str]:
    """The model page's fields, label -> text (tags stripped)."""
    found = re.search(r'<dl class="fields" id="fields">(.*?)</dl>', text, re.DOTALL)
    assert found, text[:3000]
    pairs = re.findall(r"<dt>(.*?)</dt>\s*<dd[^>]*>(.*?)</dd>", found.group(1), re.DOTALL)
    return {label: re.sub(r"<[^>]+>", "", value).strip() for label, value in pairs}


def files_of(text: str) -> list[str]:
    return re.findall(r'<tr><td class="mono">([^<]*)</td>', text.split('<table id="files">')[1])


def test_a_kitops_modelkit_shows_its_kind_kitfile_fields_and_every_file(c: WSGIClient) -> None:
    import zstandard

    from conftest import craft_tar

    kitfile = {"manifestVersion": "1.0.0",
               "package": {"name": "kit-llm", "version": "1.2.0", "description": "a ModelKit", "license": "Apache-2.0",
                           "authors": ["Kit Author"]},
               "model": {"name": "kit-llm", "path": "models/llm.gguf", "framework": "llama.cpp", "format": "GGUF",
                         "license": "MIT"}}
    data = zstandard.ZstdCompressor().compress(craft_tar([("data/eval.csv", "file", b"q,a\n")]))
    push(c, "kit/llm", "v1", ("application/vnd.kitops.modelkit.config.v1+json", json.dumps(kitfile).encode()), [
        ("application/vnd.kitops.modelkit.model.v1.raw", b"GGUF" + b"w" * 3000,
         {"org.cncf.model.filepath": "models/llm.gguf"}),
        ("application/vnd.kitops.modelkit.dataset.v1.tar+zstd", data, {}),
        ("application/vnd.kitops.modelkit.docs.v1.tar", craft_tar([("README.md", "file", b"# Kit\n")]), {})],
        artifact_type="application/vnd.kitops.modelkit.manifest.v1+json")
    text = page(c, "/model?name=kit/llm&ref=v1")
    fields = fields_of(text)
    assert fields["Artifact"].startswith("KitOps ModelKit"), fields
    assert (fields["Name"], fields["Version"], fields["Licences"]) == ("kit-llm", "1.2.0", "Apache-2.0, MIT")
    assert (fields["Format"], fields["Framework"], fields["Author"]) == ("GGUF", "llama.cpp", "Kit Author")
    assert files_of(text) == ["models/llm.gguf", "data/eval.csv", "README.md"]


def test_a_docker_model_runner_model_shows_its_kind_fields_and_runner_file_names(c: WSGIClient) -> None:
    config = {"config": {"format": "gguf", "architecture": "llama", "parameters": "8.03 B", "quantization": "Q4_K_M",
                         "size": "4.58 GiB"}, "descriptor": {"created": "2025-01-01T00:00:00Z"}}
    push(c, "ai/llama", "v1", ("application/vnd.docker.ai.model.config.v0.1+json", json.dumps(config).encode()), [
        ("application/vnd.docker.ai.gguf.v3", b"GGUF1", {}), ("application/vnd.docker.ai.gguf.v3", b"GGUF2", {}),
        ("application/vnd.docker.ai.license", b"Llama licence\n", {}),
        ("application/vnd.docker.ai.chat.template.jinja", b"{{ messages }}", {})])
    text = page(c, "/model?name=ai/llama&ref=v1")
    fields = fields_of(text)
    assert fields["Artifact"].startswith("Docker Model Runner (v0.1)"), fields
    assert (fields["Format"], fields["Architecture"], fields["Parameters"], fields["Quantization"]) == (
        "GGUF", "llama", "8.03 B", "Q4_K_M")
    assert files_of(text) == ["model-00001-of-00002.gguf", "model-00002-of-00002.gguf", "LICENSE", "template.jinja"]
    assert fields["Licence file"] == "LICENSE"


def test_a_modelpack_shows_its_descriptor_and_links_only_web_addresses(c: WSGIClient) -> None:
    config = {"descriptor": {"name": "m", "version": "2.0", "title": "A <b>bold</b> title", "vendor": "ACME",
                             "licenses": ["MIT"], "sourceURL": "javascript:alert(1)", "docURL": "https://docs.example/m"},
              "config": {"architecture": "transformer", "precision": "bf16", "paramSize": "1B"},
              "modelfs": {"type": "layers", "diffIds": []}}
    for names, artifact_type, expected in (("cncf", "application/vnd.cncf.model.manifest.v1+json", "CNCF ModelPack"),
                                           ("cnai", "application/vnd.cnai.model.manifest.v1+json", "cnai")):
        push(c, f"t/{names}", "v1", (f"application/vnd.{names}.model.config.v1+json", json.dumps(config).encode()), [
            (f"application/vnd.{names}.model.weight.v1.raw", b"w", {f"org.{names}.model.filepath": "w.bin"})],
            artifact_type=artifact_type)
        text = page(c, f"/model?name=t/{names}&ref=v1")
        fields = fields_of(text)
        assert expected in fields["Artifact"], fields
        assert (fields["Title"], fields["Vendor"], fields["Precision"], fields["Parameters"]) == (
            "A &lt;b&gt;bold&lt;/b&gt; title", "ACME", "bf16", "1B")
        assert '<a href="https://docs.example/m" rel="nofollow noopener noreferrer">' in text
        assert "javascript:alert(1)" in fields["Source"] and 'href="javascript' not in text
