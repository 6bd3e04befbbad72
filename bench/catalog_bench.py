"""The catalog's model page for a layer that lists many files, and for model cards: time and size of the page.

    python bench/catalog_bench.py [--files 200000]

A tar+gzip layer of ``--files`` empty files (1.4 MB for 200,000; the layer of
tests/integration/test_registry_access.py::test_catalog_caps_a_huge_file_list_with_a_more_link) is pushed to the registry
application in-process (no server: the cost measured is the page's own), then its model page is
asked for three times: the first view reads the layer's listing (up to the catalog's cap) and
remembers it, the second reads what was remembered, the third is the last "More" page.

Then model pages with a model card of the catalog's cap (``modelcard.CARD_CAP``) in the same
layer: ordinary prose, and the inputs markdown-it-py is slowest on (a run of ``[``, ``*_``, table
rows); the first view renders the card, the second finds it rendered.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ormb.server import modelcard, pages
from ormb.server.access import AccessControl
from ormb.server.app import create_app
from ormb.server.store import Store

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "integration")]
from test_registry_access import many_files_layer  # noqa: E402 - the layer issue 12's test pushes

from conftest import craft_layer  # noqa: E402 - tests/conftest.py: a tar+gzip layer entry by entry


def call(app: Any, method: str, target: str, body: bytes = b"", content_type: str = "") -> tuple[int, bytes]:
    path, _, query = target.partition("?")
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": "5000", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
               "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": content_type, "REMOTE_ADDR": "127.0.0.1"}
    status: list[int] = []
    data = b"".join(app(environ, lambda s, h: status.append(int(s.split()[0]))))
    return status[0], data


def upload(app: Any, repo: str, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert call(app, "POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data)[0] == 201
    return {"digest": digest, "size": len(data)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=200_000)
    args = parser.parse_args()
    layer = many_files_layer(args.files)
    with tempfile.TemporaryDirectory() as root:
        app = create_app(Store(Path(root)), AccessControl())
        config = json.dumps({"format": "Others"}).encode()
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.caicloud.model.config.v1alpha1+json",
                               **upload(app, "bench/listing", config)},
                    "layers": [{"mediaType": "application/tar+gzip", **upload(app, "bench/listing", layer)}]}
        assert call(app, "PUT", "/v2/bench/listing/manifests/v1", json.dumps(manifest).encode(),
                    manifest["mediaType"])[0] == 201
        print(f"layer: {len(layer):,} bytes listing {args.files:,} files; page cap {pages.PER_PAGE:,} rows, "
              f"listing cap {pages.LISTING_CAP:,} files")
        last = max(0, min(args.files, pages.LISTING_CAP) - pages.PER_PAGE)
        for label, query in (("first view", ""), ("second view", ""), ("last page", f"&start={last}")):
            started = time.perf_counter()
            status, body = call(app, "GET", f"/model?name=bench/listing&ref=v1{query}")
            print(f"{label:12} {status} {time.perf_counter() - started:7.3f} s {len(body):>9,} bytes")
        cap = modelcard.CARD_CAP
        for name, card in (("prose card", b"Lorem ipsum *dolor* sit [amet](https://x.example) `code`.\n\n" * cap),
                           ("[[[ card", b"[" * cap), ("*_ card", b"*_" * cap),
                           ("table card", b"| a | b |\n|---|---|\n" + b"| 1 | 2 |\n" * cap)):
            repo = "bench/" + name.split()[0].strip("[*_") + "card"
            tar_layer = craft_layer([("model/README.md", "file", card[:cap]), ("model/w.bin", "file", b"w")])
            manifest["config"] = {"mediaType": manifest["config"]["mediaType"], **upload(app, repo, config)}
            manifest["layers"] = [{"mediaType": "application/tar+gzip", **upload(app, repo, tar_layer)}]
            assert call(app, "PUT", f"/v2/{repo}/manifests/v1", json.dumps(manifest).encode(),
                        manifest["mediaType"])[0] == 201
            for label in ("first view", "second view"):
                started = time.perf_counter()
                status, body = call(app, "GET", f"/model?name={repo}&ref=v1")
                print(f"{name:11} {label:12} {status} {time.perf_counter() - started:7.3f} s {len(body):>9,} bytes")


if __name__ == "__main__":
    main()
