"""The registry's storage under concurrency and faults, against the served process (issue 12).

- gc runs in a loop (a separate process, as an operator would run it) while clients push,
  mount, re-push and delete; afterwards every manifest that was acknowledged (201) and not
  deleted is pulled whole, byte for byte;
- on a full disk (a small tmpfs this test mounts) an upload is answered 507 with the spec's
  error body, its partial data is removed, the registry keeps serving, and ``gc`` and
  ``check`` work.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from registries import Served, ormb_command

pytestmark = pytest.mark.integration
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_blob(server: Served, repo: str, data: bytes, rng: random.Random) -> bool:
    """Push ``data`` the way clients do: HEAD first, then a mount or an upload; True when the registry has it."""
    digest = sha(data)
    if server.request("HEAD", f"/v2/{repo}/blobs/{digest}")[0] == 200:
        return True
    if rng.random() < 0.3:
        source = f"gc/repo{rng.randrange(4)}"
        status, _, _ = server.request("POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={source}")
        if status == 201:
            return True
    return server.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data)[0] == 201


def test_gc_in_a_loop_never_removes_what_an_acknowledged_manifest_needs(tmp_path: Path) -> None:
    server = Served(tmp_path / "root")
    pool = [os.urandom(64 << 10) for _ in range(12)]  # shared layers: the same digests come back again and again
    acknowledged: dict[tuple[str, str], bytes] = {}  # (repo, manifest digest) -> manifest bytes
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []
    gc_runs = [0]

    def collector() -> None:
        while not stop.is_set():
            argv, env = ormb_command("registry", "gc", "--root", str(server.root), "--grace", "1")
            result = subprocess.run(argv, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                errors.append(result.stderr[-500:])
            gc_runs[0] += 1

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            repo = f"gc/repo{rng.randrange(4)}"
            config, layers = b"{}", rng.sample(pool, 2) + ([os.urandom(1000)] if rng.random() < 0.3 else [])
            if not all(_push_blob(server, repo, blob, rng) for blob in [config, *layers]):
                continue
            if rng.random() < 0.3:
                time.sleep(1.2)  # a slow client: its blobs pass the grace before the manifest comes
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(config), "size": 2},
                "layers": [{"mediaType": "application/octet-stream", "digest": sha(x), "size": len(x)} for x in layers],
                "annotations": {"n": str(rng.random())},
            }).encode()
            status, _, _ = server.request("PUT", f"/v2/{repo}/manifests/{sha(manifest)}", manifest,
                                          {"Content-Type": OCI_MANIFEST})
            if status == 201:
                with lock:
                    acknowledged[(repo, sha(manifest))] = manifest
            if rng.random() < 0.2:
                with lock:
                    if not acknowledged:
                        continue
                    victim = rng.choice(sorted(acknowledged))
                    del acknowledged[victim]
                server.request("DELETE", f"/v2/{victim[0]}/manifests/{victim[1]}")

    threads = [threading.Thread(target=collector)] + [threading.Thread(target=client, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(12)
        stop.set()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert gc_runs[0] >= 3 and len(acknowledged) >= 10, (gc_runs, len(acknowledged))
        for (repo, digest), manifest in sorted(acknowledged.items()):
            status, _, body = server.request("GET", f"/v2/{repo}/manifests/{digest}",
                                             headers={"Accept": OCI_MANIFEST})
            assert (status, body) == (200, manifest), f"{repo}@{digest} was acknowledged, then lost"
            for layer in json.loads(manifest)["layers"] + [json.loads(manifest)["config"]]:
                status, _, blob = server.request("GET", f"/v2/{repo}/blobs/{layer['digest']}")
                assert status == 200 and sha(blob) == layer["digest"], f"{repo}: {layer['digest']} lost or corrupt"
    finally:
        stop.set()
        server.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs mounted for this test (needs root; a failure to mount fails the test)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path) -> None:
    """Write until the disk is full (unbuffered: every write either lands or fails)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


def test_a_full_disk_is_answered_and_the_space_can_be_recovered(small_disk: Path) -> None:
    server = Served(small_disk / "root")
    try:
        kept = os.urandom(1 << 20)
        assert server.request("POST", f"/v2/full/kept/blobs/uploads/?digest={sha(kept)}", kept)[0] == 201
        answers = []
        for _ in range(40):  # 2 MiB at a time until the disk refuses
            data = os.urandom(2 << 20)
            status, _, body = server.request("POST", f"/v2/full/fill/blobs/uploads/?digest={sha(data)}", data)
            answers.append((status, body))
            if status != 201:
                break
        status, body = answers[-1]
        assert status == 507, answers[-1]
        assert json.loads(body)["errors"][0]["code"] == "UNKNOWN"
        assert list((server.root / "uploads").iterdir()) == []  # the partial upload is gone
        # a chunked upload that runs out of space: answered, and its session ends
        _, headers, _ = server.request("POST", "/v2/full/chunked/blobs/uploads/")
        _fill(small_disk / "filler")
        status, _, body = server.request("PATCH", headers["Location"], os.urandom(1 << 20))
        assert (status, json.loads(body)["errors"][0]["code"]) == (507, "UNKNOWN")
        assert server.request("GET", headers["Location"])[0] == 404
        # still serving, and what was acknowledged is intact
        assert server.request("GET", "/v2/")[0] == 200
        assert server.request("GET", f"/v2/full/kept/blobs/{sha(kept)}")[2] == kept
        # the operator's tools work on the full disk
        argv, env = ormb_command("registry", "check", "--root", str(server.root), "--json")
        checked = subprocess.run(argv, env=env, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        assert json.loads(checked.stdout)["corrupt"] == []
        argv, env = ormb_command("registry", "gc", "--root", str(server.root), "--grace", "0", "--json")
        collected = subprocess.run(argv, env=env, capture_output=True, text=True)
        assert collected.returncode == 0, collected.stderr
        assert json.loads(collected.stdout)["bytes"] >= 2 << 20  # the unreferenced fill blobs
        (small_disk / "filler").unlink()
        again = os.urandom(1 << 20)
        assert server.request("POST", f"/v2/full/again/blobs/uploads/?digest={sha(again)}", again)[0] == 201
    finally:
        server.stop()
