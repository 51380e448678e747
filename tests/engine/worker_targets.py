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
    if stop.is_set():  # a graceful stop, for the tests to see
        Path(folder, f"{os.getpid()}.stopped").touch()
    sys.exit(0 if stop.is_set() else 5)


def fail_before_ready(folder: str, ready) -> None:
    sys.exit(3)  # e.g. a model repository that does not load


def crash_after_ready(folder: str, ready) -> None:
    ready.set()
    _announce(folder)
    os.kill(os.getpid(), signal.SIGKILL)


def report_sigint_after_unblock(folder: str, ready) -> None:
    """Announces itself with SIGINT still blocked, waits for one to be pending, then
    installs a handler and unblocks it, and says in ``handled`` whether the handler
    saw that signal; then serves until SIGTERM."""
    import time

    _announce(folder)
    deadline = time.monotonic() + 20
    while signal.SIGINT not in signal.sigpending() and time.monotonic() < deadline:
        time.sleep(0.01)
    got = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: got.set())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    got.wait(5)
    Path(folder, "handled").write_text("SIGINT" if got.is_set() else "nothing")
    serve_until_term(folder, ready)


def serve_until_term_tagged(folder: str, tag: str, ready) -> None:
    """``serve_until_term`` that also leaves ``<pid>.tag`` holding ``tag`` (a per-worker
    argument of ``run_workers``)."""
    Path(folder, f"{os.getpid()}.tag").write_text(tag)
    serve_until_term(folder, ready)
