"""Progress reporting: library code reports to a listener; the CLI decides how to show it."""

from __future__ import annotations

from typing import Protocol


class ProgressListener(Protocol):
    def start(self, task: str, description: str, total: int | None) -> None: ...

    def advance(self, task: str, amount: int) -> None: ...

    def finish(self, task: str) -> None: ...


class NoProgress:
    """The listener used when nobody listens."""

    def start(self, task: str, description: str, total: int | None) -> None:
        pass

    def advance(self, task: str, amount: int) -> None:
        pass

    def finish(self, task: str) -> None:
        pass
