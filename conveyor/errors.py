"""Exceptions shared by every stage. The CLI prints these as one clear line and exits non-zero."""


class ConveyorError(Exception):
    """Base class: an error whose message is meant for the user, not a traceback."""

    exit_code = 1
