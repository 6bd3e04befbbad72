"""A command used wrongly is exit 2 (UsageError) with one clear line, found before anything moves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import make_model
from ormb import api
from ormb.cli.main import main
from ormb.config import Settings
from ormb.content.layout import OCILayout
from ormb.errors import UsageError

pytestmark = pytest.mark.integration


def _one_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> None:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    for fragment in fragments:
        assert fragment in lines[0]


def test_pull_include_on_an_ormb_format_model(tmp_path: Path, settings: Settings, registry: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    ref = f"{registry.host}/usage/tarred:v1"
    pusher = Settings(home=tmp_path / "pusher", default_registry="localhost:5000")
    api.save(make_model(tmp_path / "m", {"w.bin": b"weights"}), ref, settings=pusher)
    api.push(ref, settings=pusher)
    capsys.readouterr()
    assert main(["pull", ref, "--include", "*.bin"]) == 2
    _one_line(capsys, "--include", "ModelPack")
    assert list(OCILayout(settings.cache_dir).references()) == []


def test_copy_referrers_from_a_layout(tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    api.save(make_model(tmp_path / "m", {"w.bin": b"weights"}), "team/m:v1", settings=settings)
    source = f"oci:{settings.cache_dir}:localhost:5000/team/m:v1"
    assert main(["copy", "--referrers", source.replace(":localhost:5000/team/m:v1", ""), f"oci:{tmp_path / 'out'}:v1"]) == 2
    _one_line(capsys, "--referrers")
    assert not (tmp_path / "out").exists()


def test_a_layout_tag_outside_the_grammar(tmp_path: Path, settings: Settings,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    api.save(make_model(tmp_path / "m", {"w.bin": b"weights"}), "team/m:v1", settings=settings)
    assert main(["copy", f"oci:{settings.cache_dir}", f"oci:{tmp_path / 'out'}:v\u00e9"]) == 2
    _one_line(capsys, "not a valid tag")
    assert not (tmp_path / "out").exists()


def test_an_unknown_artifact_format(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(UsageError, match="unknown artifact format"):
        api.save(make_model(tmp_path / "m", {"w.bin": b"w"}), "team/m:v1", artifact_format="tarball",
                 settings=settings)


def test_export_include_on_an_ormb_format_model(tmp_path: Path, settings: Settings,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    api.save(make_model(tmp_path / "m", {"w.bin": b"weights"}), "team/m:v1", settings=settings)
    capsys.readouterr()
    assert main(["export", "team/m:v1", "-d", str(tmp_path / "out"), "--include", "*.bin"]) == 2
    _one_line(capsys, "--include", "ModelPack")
    assert not (tmp_path / "out").exists()
