"""``conveyor serve`` started with stdin and stdout closed (``<&- >&-``, as some supervisors
do) serves and stops with exit 0: it aborted in uvloop at the end of a clean stop (its
descriptors took the numbers 0-2) and failed flushing a None ``sys.stdout``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from models import VERSION_IO, Version, write_model


def _close_stdin_and_stdout() -> None:
    os.close(0)
    os.close(1)


def test_serve_with_stdin_and_stdout_closed_stops_cleanly(tmp_path: Path) -> None:
    write_model(tmp_path / "repo", "m", 1, Version(1), VERSION_IO)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "serve", "--model-repository",
             str(tmp_path / "repo"), "--port", str(port), "--metrics-port", "-1"],
            stderr=err,
            preexec_fn=_close_stdin_and_stdout,  # closed in the child: the point of the test
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "serving " not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Assertion" not in log.read_text()
