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
