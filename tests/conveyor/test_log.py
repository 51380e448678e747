"""Logging set-up: with --log-format json every line on stderr is one JSON object."""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections.abc import Iterator

import pytest

from conveyor.log import setup_logging


@pytest.fixture
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    conveyor, warned = logging.getLogger("conveyor"), logging.getLogger("py.warnings")
    saved = [(log, log.handlers[:], log.level, log.propagate) for log in (conveyor, warned)]
    showwarning = warnings.showwarning
    yield
    logging.captureWarnings(False)
    warnings.showwarning = showwarning
    for log, handlers, level, propagate in saved:
        log.handlers[:], log.level, log.propagate = handlers, level, propagate


def test_json_lines_take_python_warnings_and_quiet_grpc(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # catch_warnings saved showwarning before captureWarnings replaced it: put the
        # logging one back inside, as a program running after set-up sees it.
        logging.captureWarnings(True)
        warnings.warn("input sum is positive", UserWarning, stacklevel=1)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 1 and "input sum is positive" in lines[0]["msg"]
    assert os.environ["GRPC_VERBOSITY"] == "NONE"
    # A value the user set is kept.
    monkeypatch.setenv("GRPC_VERBOSITY", "ERROR")
    setup_logging("info", "json", io.StringIO())
    assert os.environ["GRPC_VERBOSITY"] == "ERROR"


def test_text_format_leaves_warnings_and_grpc_alone(restore_logging: None) -> None:
    setup_logging("info", "text", io.StringIO())
    assert "GRPC_VERBOSITY" not in os.environ
