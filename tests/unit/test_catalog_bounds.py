"""What a model page may cost the registry, whatever its layers and config hold (the catalog review's
findings, /work/attack-catalog-repro): tar headers read with export's checked reader, each layer listed
once and the files of a model capped across layers, failed listings remembered, only the chosen card and
licence kept, Host checked whenever anonymous users may read, config tables capped, documents only under
names export accepts.  In-process against the app; docs/security.md lists these tests.
"""

from __future__ import annotations

import gzip
import html
import io
import json
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hostile_tars import global_pax_keys, gnu_sparse_map, pax_digits
from hypothesis import given
from hypothesis import strategies as st
from test_catalog_pages import MODELPACK, card_of, files_of, page, push
from test_registry_app import OCI_MANIFEST, WSGIClient, sha

from conftest import craft_tar
from ormb.server import model_files
from ormb.server.access import AccessControl
from ormb.server.app import create_app
from ormb.server.modelcard import CARD_CAP
from ormb.server.store import Store

MANIFEST = "application/vnd.cncf.model.manifest.v1+json"
CODE_ZSTD = "application/vnd.cncf.model.code.v1.tar+zstd"
CODE_GZIP = "application/vnd.cncf.model.code.v1.tar+gzip"
WEIGHT_TAR = "application/vnd.cncf.model.weight.v1.tar"


class Counted:
    """A store whose blob reads are counted (what a view of a page reads)."""

    def __init__(self, root: Path) -> None:
        self.store = Store(root)
        self.opened: list[str] = []
        real = self.store.open_blob

        def open_blob(repository: str, digest: str) -> Any:
            self.opened.append(digest)
            return real(repository, digest)

        self.store.open_blob = open_blob  # type: ignore[method-assign]
        self.client = WSGIClient(create_app(self.store, AccessControl()))

    def view(self, target: str) -> tuple[str, list[str]]:
        """The page, and the blobs it read."""
        self.opened.clear()
        text = page(self.client, target)
        return text, list(self.opened)


@pytest.fixture
def counted(tmp_path: Path) -> Counted:
    return Counted(tmp_path / "registry")


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def modelpack(c: WSGIClient, repo: str, layers: list[tuple[str, bytes, dict[str, str]]]) -> dict[str, Any]:
    return push(c, repo, "v1", MODELPACK, layers, artifact_type=MANIFEST)


def push_manifest(c: WSGIClient, repo: str, layers: list[tuple[str, bytes]]) -> None:
    """A ModelPack manifest naming ``layers`` as given (the same blob as often as it appears)."""
    config = {"mediaType": MODELPACK[0], "digest": c.upload(repo, MODELPACK[1]), "size": len(MODELPACK[1])}
    digests = {data: c.upload(repo, data) for data in dict.fromkeys(data for _, data in layers)}
    descriptors = [{"mediaType": media_type, "digest": digests[data], "size": len(data)} for media_type, data in layers]
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": MANIFEST, "config": config,
                "layers": descriptors}
    status, _, body = c.manifest(repo, "v1", json.dumps(manifest).encode())
    assert status == 201, body


def unreadable(text: str) -> bool:
    return 'id="unreadable"' in text


# -- 1: tar headers through export's checked reader ---------------------------------------------------

HOSTILE = {
    # 512 KiB of digits: about 5 minutes of tarfile's parser on this Python (3.11.7), holding the worker
    "pax header of digits": lambda: pax_digits(512 << 10),
    # 50,000 global keys copied into each of 3,000 entries that r| mode keeps: gigabytes
    "global pax keys": lambda: global_pax_keys(50_000, 3000),
    # 4 million numbers parsed into lists
    "gnu sparse map": lambda: gnu_sparse_map(2_000_000),
}


@pytest.mark.parametrize("shape", list(HOSTILE))
def test_hostile_tar_headers_are_refused_by_the_catalog_as_by_export(counted: Counted, shape: str) -> None:
    c = counted.client
    modelpack(c, "evil/m", [(CODE_ZSTD, zstd(HOSTILE[shape]()), {})])
    text, _ = counted.view("/model?name=evil/m&ref=v1")
    assert unreadable(text)
    assert "README.md" not in files_of(text) and 'id="model-card"' not in text
    assert "f2999" not in text


# -- 2: each layer once, the files of a model capped across its layers -----------------------------------

def _files_tar(prefix: str, n: int) -> bytes:
    return craft_tar([(f"{prefix}/{i:05d}.bin", "file", b"") for i in range(n)])


def test_a_layer_named_many_times_is_listed_once(counted: Counted) -> None:
    layer = zstd(_files_tar("w", 50))
    push_manifest(counted.client, "t/dup", [(CODE_ZSTD, layer)] * 300)
    text, opened = counted.view("/model?name=t/dup&ref=v1")
    assert len(files_of(text)) == 50 and 'id="more"' not in text
    assert opened.count(sha(layer)) <= 1


def test_the_files_of_a_model_are_capped_across_its_layers(counted: Counted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_files, "LISTING_CAP", 30)
    layers = [zstd(_files_tar(f"l{i}", 20)) for i in range(6)]
    push_manifest(counted.client, "t/many", [(CODE_ZSTD, data) for data in layers])
    text, opened = counted.view("/model?name=t/many&ref=v1")
    assert len(files_of(text)) == 30 and 'id="listing-capped"' in text
    assert "of a model" in text.split('id="listing-capped"')[1][:300]
    assert not {sha(data) for data in layers[2:]} & set(opened)  # the layers past the cap are not read


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 12)), min_size=1, max_size=8), st.integers(1, 25))
def test_any_layers_list_each_file_once_and_no_more_than_the_cap(layers: list[tuple[int, int]], cap: int) -> None:
    """Layers (some the same blob, some empty) named in any order: each distinct layer's files are listed
    once, in the manifest's order, up to the cap of the model; a cut list says so."""
    with tempfile.TemporaryDirectory() as root, pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_files, "LISTING_CAP", cap)
        c = WSGIClient(create_app(Store(Path(root)), AccessControl()))
        blobs = {k: _files_tar(f"l{k}", n) for k, n in layers}
        push_manifest(c, "t/gen", [(WEIGHT_TAR, blobs[k]) for k, _ in layers])
        expected: list[str] = []
        for blob in dict.fromkeys(blobs[k] for k, _ in layers):  # each distinct blob once, in the manifest's order
            names = tarfile.open(fileobj=io.BytesIO(blob)).getnames()
            expected += names or [html.escape(f"<tar layer {sha(blob)[7:19]}>")]
        text = page(c, "/model?name=t/gen&ref=v1")
        assert files_of(text) == expected[:cap]
        assert ('id="listing-capped"' in text) == (len(expected) > cap)


# -- 3: failures remembered, decompressor errors a page, the chosen card and licence always kept -----------

def _truncated_tar_zstd() -> bytes:
    info = tarfile.TarInfo("w/big.bin")
    info.size = 64 << 20
    return zstd(info.tobuf(tarfile.USTAR_FORMAT) + bytes(1 << 20))  # the member stops 63 MiB short


def test_a_layer_that_cannot_be_listed_is_remembered_as_such(counted: Counted) -> None:
    layer = _truncated_tar_zstd()
    push_manifest(counted.client, "t/short", [(CODE_ZSTD, layer)])
    first, opened = counted.view("/model?name=t/short&ref=v1")
    assert unreadable(first) and sha(layer) in opened
    again, opened = counted.view("/model?name=t/short&ref=v1")
    assert unreadable(again) and sha(layer) not in opened


def _corrupt(packing: str) -> bytes:
    good = craft_tar([("README.md", "file", b"# card\n"), ("w.bin", "file", bytes(100_000))])
    data = bytearray(zstd(good) if packing == "zstd" else gzip.compress(good))
    data[len(data) // 2] ^= 0xFF
    data[len(data) // 2 + 1] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("packing", ["zstd", "gzip"])
def test_a_corrupt_compressed_layer_is_a_page_that_says_so_not_a_500(counted: Counted, packing: str) -> None:
    c = counted.client
    media_type = CODE_ZSTD if packing == "zstd" else CODE_GZIP
    modelpack(c, "t/bad", [(media_type, _corrupt(packing), {}),
                           ("application/vnd.cncf.model.doc.v1.raw", b"MIT", {"org.cncf.model.filepath": "LICENSE"})])
    text, _ = counted.view("/model?name=t/bad&ref=v1")
    assert unreadable(text) and 'id="licence"' in text
    assert "MIT" in page(c, "/file?name=t/bad&ref=v1&path=LICENSE")
    assert c("GET", "/file?name=t/bad&ref=v1&path=README.md")[0] == 404


def test_a_corrupt_zstd_raw_document_is_not_a_500(counted: Counted) -> None:
    c = counted.client
    bad = bytearray(zstd(b"Apache License " * 1000))
    bad[len(bad) // 2] ^= 0xFF
    push(c, "kit/bad", "v1", ("application/vnd.kitops.modelkit.config.v1+json",
                              json.dumps({"manifestVersion": "1.0.0", "package": {"name": "k"}}).encode()),
         [("application/vnd.kitops.modelkit.docs.v1.raw+zstd", bytes(bad), {"org.cncf.model.filepath": "LICENSE"})],
         artifact_type="application/vnd.kitops.modelkit.manifest.v1+json")
    assert c("GET", "/model?name=kit/bad&ref=v1")[0] == 200
    assert c("GET", "/file?name=kit/bad&ref=v1&path=LICENSE")[0] in (200, 404)


LICENCES = ["LICENSE", "license", "License", "LICENCE", "licence", "COPYING", "copying", "Copying"]


def _documents_layer(seed: int, files: int = 0) -> bytes:
    members = [(name, "file", f"{name} {seed}\n".encode() + b"A" * CARD_CAP) for name in LICENCES]
    members.append(("README.md", "file", f"# card {seed}\n".encode()))
    members += [(f"s{seed}/{i:05d}", "file", b"") for i in range(files)]
    return zstd(craft_tar(members))


def test_the_card_after_many_licence_files_is_shown_and_kept(counted: Counted) -> None:
    layer = _documents_layer(0)
    push_manifest(counted.client, "t/docs", [(CODE_ZSTD, layer)])
    for _ in range(3):
        text, opened = counted.view("/model?name=t/docs&ref=v1")
        assert "<h1>card 0</h1>" in card_of(text)
        assert re.search(r'<a id="licence" href="[^"]+">LICENSE</a>', text), text[:3000]
    assert sha(layer) not in opened  # the third view read nothing from the layer
    assert "LICENSE 0" in page(counted.client, "/file?name=t/docs&ref=v1&path=LICENSE")
    assert counted.client("GET", "/file?name=t/docs&ref=v1&path=COPYING")[0] == 404  # only the chosen one is kept


# -- 4: what the database keeps per model ------------------------------------------------------------------

def test_the_database_keeps_only_the_chosen_card_and_licence_and_capped_rows(
        counted: Counted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_files, "LISTING_CAP", 200)
    layers = [_documents_layer(i, files=100) for i in range(8)]
    push_manifest(counted.client, "t/db", [(CODE_ZSTD, data) for data in layers])
    for _ in range(2):
        counted.view("/model?name=t/db&ref=v1")
    db = counted.store.db
    documents = db.execute("SELECT count(*), coalesce(sum(length(data)), 0) FROM layer_documents").fetchone()
    assert documents[0] <= 2 and documents[1] <= 2 * (CARD_CAP + 1), documents
    rows = db.execute("SELECT count(*) FROM layer_files").fetchone()[0]
    assert rows <= 2 * 200 + 8, rows


def test_file_names_are_capped_in_length_and_in_total(counted: Counted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_files, "LISTING_BYTES", 64 << 10)
    names = [f"{i:03d}" + "n" * 20_000 for i in range(20)]  # PAX names of 20 KB each: 400 KB in all
    push_manifest(counted.client, "t/long", [(WEIGHT_TAR, craft_tar([(n, "file", b"") for n in names]))])
    text, _ = counted.view("/model?name=t/long&ref=v1")
    shown = files_of(text)
    assert 0 < len(shown) < 20 and 'id="listing-capped"' in text
    assert all(len(name) <= model_files.MAX_NAME_SHOWN + 1 for name in shown)
    stored = counted.store.db.execute("SELECT coalesce(sum(length(path)), 0) FROM layer_files").fetchone()[0]
    assert stored <= (64 << 10) + model_files.MAX_NAME_SHOWN + 1


# -- 7: only names export accepts ----------------------------------------------------------------------------

def test_documents_under_names_export_refuses_are_neither_card_nor_licence(counted: Counted) -> None:
    c = counted.client
    layer = craft_tar([("../LICENSE", "file", b"DOTDOT LICENCE"), ("/LICENSE.txt", "file", b"ABS LICENCE"),
                       ("../README.md", "file", b"# escaped card"), ("w.bin", "file", b"w")])
    modelpack(c, "t/names", [(CODE_GZIP, gzip.compress(layer), {})])
    text, _ = counted.view("/model?name=t/names&ref=v1")
    assert 'id="licence"' not in text and 'id="model-card"' not in text
    for path in ("LICENSE", "LICENSE.txt", "../LICENSE", "/LICENSE.txt", "README.md"):
        status, _, body = c("GET", f"/file?name=t/names&ref=v1&path={path}")
        assert status == 404 and b"LICENCE" not in body and b"escaped" not in body, path


# -- 6: the config's tables --------------------------------------------------------------------------------

def test_the_config_tables_are_capped_and_say_how_many_rows_are_left_out(counted: Counted) -> None:
    from ormb.server.pages import PER_PAGE

    n = PER_PAGE * 3
    config = {"format": "ONNX", "hyperParameters": [{"name": f"h{i}", "value": i} for i in range(n)],
              "metrics": {"train": [{"name": f"m{i}", "value": i} for i in range(n)]},
              "signature": {"inputs": [{"name": f"t{i}", "dType": "FP32", "size": [1]} for i in range(n)],
                            "outputs": [{"name": f"o{i}", "dType": "FP32", "size": [1]} for i in range(n)]}}
    push(counted.client, "t/cfg", "v1", ("application/vnd.caicloud.model.config.v1alpha1+json",
                                         json.dumps(config).encode()), [("application/tar+gzip", b"x" * 10, {})])
    text, _ = counted.view("/model?name=t/cfg&ref=v1")
    for table, more in (("hyper-parameters", n - PER_PAGE), ("metrics", n - PER_PAGE), ("signature", 2 * n - PER_PAGE)):
        body = text.split(f'<table id="{table}">')[1].split("</table>")[0]
        assert body.count("<tr>") <= PER_PAGE + 1, table
        assert re.search(rf'id="{table}-left-out"[^>]*>[^<]*{more:,}', text), table
    again, opened = counted.view("/model?name=t/cfg&ref=v1")
    assert again.count("<tr>") == text.count("<tr>") and opened == []  # the config is not read again



# -- 5: DNS rebinding wherever anonymous users may read ----------------------------------------------------

RULES = st.lists(st.tuples(st.sampled_from([("alice",), ("*",), ("anonymous",), ("alice", "anonymous")]),
                           st.sampled_from([("*",), ("public/*",)]),
                           st.sets(st.sampled_from(["pull", "push", "delete"]), min_size=1)), max_size=3)


@given(st.one_of(st.just("open"), st.just("logins"), st.just("anonymous-pull"), RULES))
def test_a_foreign_host_is_refused_whenever_anonymous_users_may_do_anything(setup: Any) -> None:
    """``ormb registry serve`` as an operator starts it (build_app): the open registry, logins only, logins
    with --anonymous-pull, or logins with any policy.  A page on evil.example rebound to the registry's
    address reads as anonymous: its Host is refused (421) whenever anonymous users may do anything; a
    registry whose every action needs a login answers any Host (a rebinding page has no credentials)."""
    import yaml

    from ormb.server.serve import ServeOptions, build_app

    with tempfile.TemporaryDirectory() as root:
        directory = Path(root)
        options = ServeOptions(root=directory / "registry", auth_scheme="basic")
        if setup != "open":
            hashed = bcrypt_hash("pw")
            (directory / "htpasswd").write_text(f"alice:{hashed}\n")
            options.htpasswd = directory / "htpasswd"
        if setup == "anonymous-pull":
            options.anonymous_pull = True
        if isinstance(setup, list):
            rules = [{"users": list(u), "repositories": list(r), "actions": sorted(a)} for u, r, a in setup]
            (directory / "policy.yaml").write_text(yaml.safe_dump({"rules": rules}))
            options.policy = directory / "policy.yaml"
        anonymous = setup in ("open", "anonymous-pull") or (
            isinstance(setup, list) and any("anonymous" in users for users, _, _ in setup))
        app, _ = build_app(options)
        client = WSGIClient(app)
        for target in ("/", "/v2/_catalog", "/v2/"):
            status = client("GET", target, headers={"Host": "evil.example:5000"})[0]
            assert (status == 421) == anonymous, (setup, target, status)
        assert client("GET", "/v2/", headers={"Host": "localhost:5000"})[0] != 421


def bcrypt_hash(password: str) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
