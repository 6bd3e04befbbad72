"""The exit codes agree everywhere a user or a script reads them: the README table, ``ormb --help``
and the error classes (plus the CLI's own 70 and 130)."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from ormb import errors
from ormb.cli.main import EXIT_INTERNAL, EXIT_INTERRUPTED, cli

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_codes() -> dict[int, str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("### Errors and exit codes", 1)[1].split("\n### ", 1)[0]
    return {int(code): meaning.strip() for code, meaning in re.findall(r"^\| (\d+) \| (.+?) \|$", section, re.M)}


def _help_codes() -> dict[int, str]:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    paragraph = " ".join(result.output.split("Exit codes:", 1)[1].split("\n\n", 1)[0].split())
    return {int(code): meaning.strip() for code, meaning in
            (part.strip().rstrip(".").split(" ", 1) for part in paragraph.split(";"))}


def _class_codes() -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for name in dir(errors):
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, errors.OrmbError):
            found.setdefault(value.exit_code, []).append(name)
    return found


def test_readme_help_and_error_classes_name_the_same_exit_codes() -> None:
    readme, help_text, classes = _readme_codes(), _help_codes(), _class_codes()
    expected = {0, EXIT_INTERNAL, EXIT_INTERRUPTED} | set(classes)
    assert set(readme) == expected, f"README table: {sorted(readme)}, expected {sorted(expected)}"
    assert set(help_text) == expected, f"ormb --help: {sorted(help_text)}, expected {sorted(expected)}"


def test_usage_errors_share_exit_code_2_with_click() -> None:
    assert errors.UsageError.exit_code == 2 == errors.InvalidReferenceError.exit_code
    assert "usage" in _readme_codes()[2] and "usage" in _help_codes()[2]
