"""The one error type of the data layer: it always names the file and what to change."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A dataset, config or file that cannot be read as asked.

    The message starts with the offending path (or key) so a user reading a stack
    trace from a DataLoader worker sees at once which file is wrong.
    """

    def __init__(self, where: str | Path, problem: str, fix: str | None = None):
        self.where = str(where)
        self.problem = problem
        message = f"{where}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)
