"""Errors that end one request with a gRPC status; the server keeps serving everything else.

Each class carries the :class:`grpc.StatusCode` it is answered with, so the
service layer maps any of them to ``context.abort(code, message)`` in one place.
"""

from __future__ import annotations

import grpc

from conveyor.errors import ConveyorError


class EngineError(ConveyorError):
    """A request failed; ``code`` is the gRPC status, the message says what and which field."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(EngineError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(EngineError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(EngineError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(EngineError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(EngineError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(EngineError):
    code = grpc.StatusCode.CANCELLED


class FailedPrecondition(EngineError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Internal(EngineError):
    code = grpc.StatusCode.INTERNAL


class ModelLoadError(ConveyorError):
    """A model version could not be loaded; the message names the file and the reason."""
