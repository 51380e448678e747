"""``conveyor serve`` as a child process on a free loopback port, for the CLI tests."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


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
    )  # fmt: skip
    return proc, port
