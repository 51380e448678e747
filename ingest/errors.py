"""Errors raised by conveyor.ingest. All are :class:`conveyor.errors.ConveyorError`, so the CLI
prints them as one line naming the file (and row, column, rule and value where they apply)."""

from __future__ import annotations

from typing import Any

from conveyor.errors import ConveyorError


class IngestError(ConveyorError):
    """Base class for ingest errors."""


class SourceError(IngestError):
    """A source that cannot be read: not found, corrupt, truncated, empty, or of mixed formats.

    ``file`` is the offending file (or the source string when no single file is at fault).
    """

    def __init__(self, file: str, message: str) -> None:
        self.file = file
        super().__init__(f"{file}: {message}")


class FormatError(SourceError):
    """The format of a file cannot be told from its name. ``hint`` says how to give it: the
    Python API's ``format=`` by default; a command line rewords it (:meth:`with_hint`)."""

    def __init__(self, file: str, problem: str, hint: str) -> None:
        self.problem, self.hint = problem, hint
        super().__init__(file, f"{problem}; {hint}")

    def with_hint(self, hint: str) -> FormatError:
        """The same error, with the way to give the format that fits where it is shown."""
        return FormatError(self.file, self.problem, hint)


class SpecError(IngestError):
    """A feature spec that is malformed or does not fit the data it is used with."""


class ValidationError(IngestError):
    """A rule whose policy is ``reject`` fired.

    ``row`` is the 0-based row index within ``file`` (None for dataset-level rules such as a
    missing column); ``value`` is the offending value as read (None where there is none).
    """

    def __init__(
        self,
        *,
        file: str,
        row: int | None,
        column: str | None,
        rule: str,
        value: Any = None,
        detail: str = "",
    ) -> None:
        self.file, self.row, self.column, self.rule, self.value = file, row, column, rule, value
        where = file if row is None else f"{file}: row {row}"
        col = f", column {column!r}" if column is not None else ""
        val = f", value {value!r}" if value is not None else ""
        more = f": {detail}" if detail else ""
        super().__init__(f"{where}{col}: rule {rule!r} rejected{val}{more}")


class LoaderStateError(IngestError):
    """A state_dict that does not belong to this loader (other dataset, world size, rank ...)."""
