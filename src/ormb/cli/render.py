"""How the CLI shows things: sizes, times, tables, JSON, progress bars."""

from __future__ import annotations

import sys
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import click

from ormb.units import human_size as human_size  # the CLI's name for it

if TYPE_CHECKING:
    from rich.progress import TaskID


def plural(count: int, word: str, words: str | None = None) -> str:
    return f"{count} {word if count == 1 else words or word + 's'}"


def human_time(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "-"
    now = now or datetime.now(timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    seconds = int((now - when).total_seconds())
    for size, unit in ((86400 * 365, "year"), (86400 * 30, "month"), (86400 * 7, "week"), (86400, "day"),
                       (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"


def to_jsonable(value: Any) -> Any:
    from pathlib import PurePath  # here: the commands that print no JSON start without them

    from ormb.oci.reference import Reference

    if isinstance(value, (Reference, PurePath)):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "to_json_dict"):
        return value.to_json_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(getattr(value, k)) for k in asdict(value)}
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    code = ord(char)
    if char in _ESCAPES:
        return _ESCAPES[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with everything a terminal could act on escaped, as ``repr()`` writes it: control characters
    (C0 including newline and tab, DEL, C1), format characters (bidi overrides, zero-width), line and
    paragraph separators, surrogates (bytes of a name that were not UTF-8) and other non-printable
    characters.  Every line the CLI prints goes through here, so a name from a layer or a registry is
    shown as data and cannot move the cursor, retitle the terminal or forge a second ``Error:`` line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def say(message: str = "", err: bool = False) -> None:
    """One line of output (stdout, or stderr with ``err``), escaped by :func:`printable`."""
    click.echo(printable(message), err=err)


def say_lines(text: str) -> None:
    """Several lines of output, each escaped by :func:`printable`."""
    click.echo("\n".join(printable(line) for line in text.split("\n")))


def _json_escaped(char: str) -> str:
    code = ord(char)
    if code > 0xFFFF:  # a UTF-16 surrogate pair, as JSON spells characters beyond the BMP
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def to_json(value: Any) -> str:
    """``value`` as JSON that is valid UTF-8 and safe on a terminal: readable Unicode stays as it is,
    anything :func:`printable` would escape (a lone surrogate: a byte of a name that was not UTF-8) is a
    ``\\uXXXX`` escape, which JSON parsers read back as the same string."""
    import json

    text = json.dumps(to_jsonable(value), indent=2, ensure_ascii=False)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\n" else _json_escaped(c) for c in text)  # raw newlines: the indent


def print_json(value: Any) -> None:
    click.echo(to_json(value))


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        click.echo("   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


class RichProgress:
    """A progress bar per task on stderr; used only when stderr is a terminal."""

    def __init__(self) -> None:
        # rich is imported here, when a bar is drawn: every other command starts without it
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(),
            TimeRemainingColumn(), console=Console(file=sys.stderr), transient=True,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, task: str, description: str, total: int | None) -> None:
        from rich.markup import escape

        self._tasks[task] = self._progress.add_task(escape(printable(description)), total=total)

    def advance(self, task: str, amount: int) -> None:
        if task in self._tasks:
            self._progress.advance(self._tasks[task], amount)

    def finish(self, task: str) -> None:
        if task in self._tasks:
            self._progress.remove_task(self._tasks.pop(task))
