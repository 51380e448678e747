"""Errors raised by conveyor.trainer; the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

from conveyor.errors import ConveyorError


class TrainerError(ConveyorError):
    """Base class: a training run that cannot start or go on (bad option, bad data, bad state)."""


class CheckpointError(TrainerError):
    """No usable checkpoint: missing, corrupt, or from a run with other settings."""


class ExportError(TrainerError):
    """The model repository cannot be written (not a directory, no permission ...)."""


class Interrupted(TrainerError):
    """The run was stopped by a signal (Ctrl-C, SIGTERM); it exits 128 + the signal's number,
    as a shell reports a process killed by it, and continues with ``--resume``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
