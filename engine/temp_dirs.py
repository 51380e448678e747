"""Temporary directories of a ``conveyor serve --workers N`` parent, swept when stale.

The parent keeps the workers' metric files (``conveyor-metrics-*``) and their start-up
errors (``conveyor-worker-errors-*``) in directories it removes when it stops. A parent
killed with SIGKILL cannot: its workers exit with it (``PR_SET_PDEATHSIG``), but the
directories stay. Each directory therefore carries its creator's pid, and the next
parent of the same user removes those whose creator no longer runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def process_temp_dir(kind: str) -> Path:
    """A new directory ``<tmp>/conveyor-<kind>-<pid>-XXXXXXXX`` for this process, after
    removing this user's ``conveyor-<kind>-<pid>-*`` directories whose process is gone."""
    root = Path(tempfile.gettempdir())
    sweep_stale(root, kind)
    return Path(tempfile.mkdtemp(prefix=f"conveyor-{kind}-{os.getpid()}-", dir=root))


def sweep_stale(root: Path, kind: str) -> list[Path]:
    """Remove ``root/conveyor-<kind>-<pid>-*`` directories owned by this user whose
    ``pid`` is not a running process; returns those removed. A pid reused by another
    process keeps its directory (until that process is gone too): never a live one's."""
    removed = []
    prefix = f"conveyor-{kind}-"
    uid = os.getuid()
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if not entry.name.startswith(prefix):
                continue
            pid_text = entry.name[len(prefix) :].split("-", 1)[0]
            if not pid_text.isdigit():
                continue  # an older conveyor's directory (no pid): cannot tell its owner
            try:
                info = entry.lstat()
            except OSError:
                continue
            if not entry.is_dir() or entry.is_symlink() or info.st_uid != uid:
                continue
            if _running(int(pid_text)):
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    if pid <= 0:
        return True  # not a process id: leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or not a pid this system has): keep it
    return True
