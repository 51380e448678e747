"""Logging set-up for the CLI and the server: human-readable text or JSON lines."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")

# Attributes every LogRecord has; anything else was passed through `extra=`
# (a request id, a model name) and belongs in the JSON line.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: ts (Unix seconds), level, logger, msg, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``2026-11-27T12:00:00.123Z info conveyor.engine: message key=value``."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        ts = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"
        extra = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        )
        text = f"{ts} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        if extra:
            text += " " + extra
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the ``conveyor`` logger tree.

    Args:
        level: one of ``debug``, ``info``, ``warning``, ``error`` (default ``info``).
        fmt: ``text`` (default) or ``json`` for JSON lines.
        stream: where to write; default standard error.
    """
    if level not in LEVELS:
        raise ValueError(f"log level: expected one of {LEVELS}, got {level!r}")
    if fmt not in ("text", "json"):
        raise ValueError(f"log format: expected 'text' or 'json', got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("conveyor")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    if fmt == "json":
        # JSON lines only: Python warnings (a model's UserWarning, torch's) become
        # records of the same handler instead of plain text on stderr, and gRPC's
        # C core, which writes its own plain-text lines (failed TLS handshakes...),
        # is silenced unless GRPC_VERBOSITY says otherwise. gRPC reads the variable
        # once, when it is imported: here that is later, and child processes
        # (--workers) inherit it.
        logging.captureWarnings(True)
        warned = logging.getLogger("py.warnings")
        warned.handlers[:] = [handler]
        warned.propagate = False
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
