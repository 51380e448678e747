"""``conveyor serve`` as a child process on a free loopback port, for the CLI tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# Child servers dump every thread's stack on SIGABRT (see stop_cli_server).
FAULTHANDLER_ENV = {**os.environ, "PYTHONFAULTHANDLER": "1"}


def start_cli_server(repo: Path, *flags: str) -> tuple[subprocess.Popen[str], int]:
    """Start ``conveyor serve --model-repository repo --port <free> *flags``; stderr is piped.

    Returns the process and its port. The caller stops it (SIGTERM, then kill).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "serve", "--model-repository", str(repo),
         "--port", str(port), *flags],
        stderr=subprocess.PIPE,
        text=True,
        env=FAULTHANDLER_ENV,
    )  # fmt: skip
    return proc, port


def stop_cli_server(proc: subprocess.Popen[str], timeout: float, sig: int = signal.SIGTERM) -> str:
    """Send ``sig`` and wait up to ``timeout`` s for the server to exit; returns its stderr.

    A server that does not stop in time is sent SIGABRT: started with
    ``FAULTHANDLER_ENV``, it prints where every thread is, and the test fails
    with that dump instead of a bare timeout.
    """
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            err = proc.communicate(timeout=10)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            err = proc.communicate()[1]
        pytest.fail(
            f"conveyor serve did not stop {timeout} s after {sig!r}; stderr:\n{err[-8000:]}"
        )
