"""The --workers parent's temporary directories: stale ones (a parent killed with SIGKILL)
are removed by the next parent; a live process's never are."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conveyor.engine.metrics import MultiProcessMetrics
from conveyor.engine.temp_dirs import process_temp_dir, sweep_stale


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_directories_of_gone_processes_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / f"conveyor-metrics-{_dead_pid()}-abc123"
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "counter_1.db").write_bytes(b"x")
    live = tmp_path / f"conveyor-metrics-{os.getppid()}-def456"  # a running process
    live.mkdir()
    mine = tmp_path / f"conveyor-metrics-{os.getpid()}-ghi789"
    mine.mkdir()
    other_kind = tmp_path / f"conveyor-worker-errors-{_dead_pid()}-jkl"
    other_kind.mkdir()
    legacy = tmp_path / "conveyor-metrics-abc123"  # no pid: whose it is cannot be told
    legacy.mkdir()
    a_file = tmp_path / f"conveyor-metrics-{_dead_pid()}-file"
    a_file.write_text("not a directory")
    assert sweep_stale(tmp_path, "metrics") == [dead]
    assert not dead.exists()
    for kept in (live, mine, other_kind, legacy, a_file):
        assert kept.exists(), kept


def test_a_symlink_named_like_a_stale_directory_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep").write_text("x")
    link = tmp_path / f"conveyor-metrics-{_dead_pid()}-link"
    link.symlink_to(target, target_is_directory=True)
    assert sweep_stale(tmp_path, "metrics") == []
    assert (target / "keep").exists()


def test_the_workers_metrics_directory_carries_the_pid_and_sweeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    stale = tmp_path / f"conveyor-metrics-{_dead_pid()}-stale"
    stale.mkdir()
    shared = MultiProcessMetrics()
    try:
        assert shared.directory.parent == tmp_path
        assert shared.directory.name.startswith(f"conveyor-metrics-{os.getpid()}-")
        assert not stale.exists()
    finally:
        shared.close()
    assert not shared.directory.exists()
    errors = process_temp_dir("worker-errors")
    assert errors.parent == tmp_path and errors.is_dir()
