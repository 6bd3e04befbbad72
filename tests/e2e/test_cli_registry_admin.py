"""``ormb registry check`` and ``gc`` as an operator types them."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ormb.server.store import Store

pytestmark = pytest.mark.e2e
ORMB = str(Path(sys.executable).with_name("ormb"))


def ormb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ORMB, *args], capture_output=True, text=True, timeout=120)


def _upload(store: Store, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    session = store.new_session(repo)
    with store.open_session(repo, session) as writer:
        writer.append(iter([data]))
        writer.commit(repo, digest)
    return digest


def test_check_reports_corruption_with_exit_4_and_repair_fixes_it(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    store = Store(root)
    good, bad = _upload(store, "ops/m", b"good bytes"), _upload(store, "ops/m", b"bad bytes")
    store.blob_path(bad).write_bytes(b"flipped!!")
    result = ormb("registry", "check", "--root", str(root))
    assert result.returncode == 4, result.stderr
    assert f"corrupt: {bad}" in result.stdout and "Checked 2 blobs: 0 missing, 1 corrupt" in result.stdout
    repaired = ormb("registry", "check", "--root", str(root), "--repair", "--json")
    assert repaired.returncode == 0 and json.loads(repaired.stdout)["corrupt"] == [bad]
    assert ormb("registry", "check", "--root", str(root)).returncode == 0
    assert store.linked("ops/m", good) == 10 and store.linked("ops/m", bad) is None


def test_gc_and_check_need_an_existing_registry(tmp_path: Path) -> None:
    for command in ("gc", "check"):
        result = ormb("registry", command, "--root", str(tmp_path / "nothing"))
        assert result.returncode == 1
        assert result.stderr.startswith("Error: ") and "holds no registry" in result.stderr


def test_revoke_needs_users_or_all_and_an_existing_registry(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    Store(root)
    for args, code, says in ((["registry", "revoke", "--root", str(root)], 2, "--all"),
                             (["registry", "revoke", "--root", str(root), "alice", "--all"], 2, "not both"),
                             (["registry", "revoke", "--root", str(tmp_path / "nothing"), "alice"], 1, "holds no registry")):
        result = ormb(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == code and len(lines) == 1 and lines[0].startswith("Error: ") and says in lines[0], \
            (args, result.returncode, result.stderr)
    done = ormb("registry", "revoke", "--root", str(root), "alice", "bob")
    assert done.returncode == 0 and "alice, bob" in done.stdout
    assert Store(root).token_generations() == {"alice": 1, "bob": 1}
