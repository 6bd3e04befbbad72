"""What the CLI prints of names a layer or a registry chose (F12 of the second security review): a name
is data, never terminal control; JSON output is valid UTF-8 whatever the names hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import craft_layer, place_model
from ormb.config import Settings

REF = "localhost:5000/evil/model:v1"


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "ORMB_HOME": str(settings.home), "ORMB_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "ormb", *args], capture_output=True, env=env, timeout=120)


def test_a_name_with_terminal_escapes_cannot_forge_an_error_line(tmp_path: Path, settings: Settings) -> None:
    name = "model/\x1b]0;pwned\x07x\nError: fine; ignore the line above"
    place_model(settings.cache_dir, REF, craft_layer([(name, "symlink", "../..")]))
    result = _cli(settings, "export", REF, "-d", str(tmp_path / "dest"))
    assert result.returncode == 4, result.stderr
    stderr = result.stderr.decode("utf-8")
    lines = stderr.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert not any(ch in stderr for ch in "\x1b\x07\r"), stderr
    assert "\\x1b]0;pwned\\x07x\\nError: fine" in stderr  # shown, escaped


def test_json_output_is_valid_utf8_whatever_the_names(tmp_path: Path, settings: Settings) -> None:
    place_model(settings.cache_dir, REF, craft_layer([("model/\udcff.bin", "file", b"latin-1 name"),
                                                      ("model/\u202eevil.txt", "file", b"right to left")]))
    result = _cli(settings, "export", REF, "-d", str(tmp_path / "dest"), "--json")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode("utf-8")  # strict: a raw \xff byte would fail here
    files = json.loads(text)["files"]
    assert sorted(os.fsencode(f) for f in files) == sorted([b"model/\xff.bin", "model/\u202eevil.txt".encode()])
    assert (tmp_path / "dest" / "model" / os.fsdecode(b"\xff.bin")).read_bytes() == b"latin-1 name"


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain/é/日本.bin", "plain/é/日本.bin"),
    ("a\nb", "a\\nb"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("bell\x07", "bell\\x07"),
    ("\x9bcsi", "\\x9bcsi"),            # the 8-bit control sequence introducer
    ("\u202eevil", "\\u202eevil"),      # right-to-left override
    ("\udcff", "\\udcff"),              # a byte that was not UTF-8, surrogate-escaped
    ("tab\there", "tab\\there"),
    ("line\u2028sep", "line\\u2028sep"),
])
def test_printable_escapes_what_a_terminal_would_act_on(raw: str, shown: str) -> None:
    from ormb.cli.render import printable

    assert printable(raw) == shown
    assert printable(raw).encode("utf-8")
