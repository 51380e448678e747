"""Training faults: one rank SIGKILLed mid-step fails the job cleanly (the other rank is
stopped, the launcher names the rank), the newest checkpoint truncated on top, and
``--resume`` falls back to the previous checkpoint (checksum) and finishes with the weights
and metrics of an uninterrupted run: no data lost or repeated. Extends
tests/trainer/test_ddp.py, which kills the whole process group at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from trainer_fixtures import (
    assert_resumed_like_uninterrupted,
    hold_after_checkpoint,
    run_cli,
    tabular,
    write_spec,
)

from conveyor.trainer.checkpoint import list_checkpoints, load_latest

_ARGS = (
    "--epochs", "2", "--batch-size", "16", "--hidden", "8", "--checkpoint-every", "5",
    "--keep-checkpoints", "50", "--seed", "4", "--patience", "0", "--progress", "off",
    "--nproc", "2",
)  # fmt: skip


def _args(data: Path, spec: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(data), "--spec", str(spec), "--out", str(out), *_ARGS, *extra]


def _workers(group: int) -> list[int]:
    """PIDs of the spawned rank processes in process group ``group``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != group:
                continue
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ProcessLookupError):
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return sorted(found)


@pytest.mark.slow
def test_one_rank_killed_then_resume_from_a_damaged_checkpoint(tmp_path: Path) -> None:
    table = tabular(2000, seed=6)
    data = tmp_path / "d.parquet"
    pq.write_table(table, data, row_group_size=250)
    spec = write_spec(tmp_path, table)
    ref = run_cli(*_args(data, spec, tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    steps_per_epoch = json.loads((tmp_path / "ref" / "summary.json").read_text())["steps"] // 2

    out = tmp_path / "killed"
    target = steps_per_epoch + 10  # inside the second epoch
    # The run holds after that checkpoint (see test_ddp): a test process descheduled for
    # the rest of the epoch (~0.5 s) found no rank left to kill.
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", *_args(data, spec, out)],
        env=hold_after_checkpoint(target),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    killed = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(int(p.stem.split("-")[1]) >= target for p in list_checkpoints(out)):
            workers = _workers(proc.pid)
            if len(workers) == 2:
                killed = workers[-1]
                os.kill(killed, signal.SIGKILL)  # one rank only
                break
        time.sleep(0.003)
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed is not None, "no rank to kill before the run ended"
    # Failed cleanly: a one-line error naming the rank, non-zero exit, the other rank gone.
    assert proc.returncode == 1, stderr.decode()[-2000:]
    assert "worker rank" in stderr.decode() and "failed" in stderr.decode()
    assert not _workers(proc.pid)
    assert not (out / "summary.json").exists()

    newest = list_checkpoints(out)[0]
    previous_step = int(list_checkpoints(out)[1].stem.split("-")[1])
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    assert load_latest(out)[1]["state"]["step"] == previous_step  # checksum caught it

    resumed = run_cli(*_args(data, spec, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert_resumed_like_uninterrupted(tmp_path / "ref", out, 2 * steps_per_epoch)
