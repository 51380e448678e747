"""benchmarks/fuzz_serve.py: a bad --examples is refused before the server starts, so no
``conveyor serve`` outlives the script (it used to start one, fail, and leave it orphaned)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.benchmarks.scripts import BENCHMARKS


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # exited meanwhile
            continue
    return pids


def test_examples_0_is_a_usage_error_and_leaves_no_server(tmp_path) -> None:
    # The script's model folder is a TemporaryDirectory: under tmp_path here, so a server
    # it started is found by its --model-repository argument.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    cmd = [sys.executable, str(BENCHMARKS / "fuzz_serve.py"), "--examples", "0"]
    # Output to files, not pipes: an orphaned server would hold a pipe open, and wait for it.
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        try:
            done = subprocess.run(cmd, env=env, stdout=out, stderr=err, timeout=180)
        finally:
            left = processes_mentioning(str(tmp_path))
            for pid in left:  # clean up after a failing script before failing
                os.kill(pid, signal.SIGKILL)
    assert not left, f"conveyor serve left running: {left}"
    stderr = (tmp_path / "err").read_text()
    assert done.returncode == 2, stderr
    assert stderr.strip().splitlines()[-1] == (
        "fuzz_serve.py: error: --examples must be >= 1, got 0"
    )


def test_seconds_0_is_a_usage_error(tmp_path) -> None:
    cmd = [sys.executable, str(BENCHMARKS / "fuzz_serve.py"), "--seconds", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    assert "error: --seconds must be > 0, got 0" in done.stderr
