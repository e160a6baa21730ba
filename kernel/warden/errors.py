"""The one exception tree of warden.

WardenError
├── PolicyError          a policy file is malformed (carries file, line, what is wrong)
├── CatalogError         a catalog cannot be read or is malformed
└── AnalysisError        SQL cannot be analysed (carries statement index and SQL position)

Decisions are values, not exceptions: a denied cell is a ``Decision`` with
``action == "deny"``. Exceptions are for inputs that are themselves broken.
"""

from __future__ import annotations


class WardenError(Exception):
    """Base class of every error warden raises on purpose."""


class PolicyError(WardenError):
    """A policy file is malformed. ``str()`` is ``FILE:LINE: message``."""

    def __init__(self, message: str, *, file: str = "<policy>", line: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {message}")


class CatalogError(WardenError):
    """A catalog cannot be loaded or is malformed."""


class AnalysisError(WardenError):
    """SQL cannot be analysed. Carries the position in the cell when known."""

    def __init__(
        self,
        message: str,
        *,
        statement_index: int | None = None,
        line: int | None = None,
        col: int | None = None,
    ) -> None:
        self.message = message
        self.statement_index = statement_index
        self.line = line
        self.col = col
        where = f" (line {line}, column {col})" if line is not None else ""
        super().__init__(f"{message}{where}")
