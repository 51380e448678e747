"""Worker bodies for tests of conveyor.engine.workers (imported by spawned children)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path


def _announce(folder: str) -> None:
    Path(folder, str(os.getpid())).touch()


def serve_until_term(folder: str, ready) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ready.set()
    _announce(folder)
    stop.wait(60)
    sys.exit(0 if stop.is_set() else 5)


def fail_before_ready(folder: str, ready) -> None:
    sys.exit(3)  # e.g. a model repository that does not load


def crash_after_ready(folder: str, ready) -> None:
    ready.set()
    _announce(folder)
    os.kill(os.getpid(), signal.SIGKILL)
