"""The ModelPack config schema (tests/data/modelpack-config-schema.json), enforced with format checking."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_PATH = Path(__file__).parent / "data" / "modelpack-config-schema.json"


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    checker = jsonschema.FormatChecker()
    # date-time is checked only when rfc3339-validator is installed: a missing checker would pass anything
    assert "date-time" in checker.checkers, "install rfc3339-validator (the test extra) to check date-time"
    return jsonschema.Draft202012Validator(schema, format_checker=checker)


def check_config(config: dict[str, Any]) -> None:
    """Raise if ``config`` breaks the spec's schema, formats included."""
    validator().validate(config)
