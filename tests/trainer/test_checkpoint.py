"""Checkpoints: atomic files, checksums, fallback to the previous good one, pruning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conveyor.trainer.checkpoint import (
    list_checkpoints,
    load_latest,
    read_checkpoint,
    save_checkpoint,
)
from conveyor.trainer.errors import CheckpointError


def _state(step: int) -> dict:
    return {"step": step, "w": torch.full((4,), float(step)), "rng": torch.get_rng_state()}


def test_round_trip_and_newest_first(tmp_path: Path) -> None:
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, step, _state(step), keep=5)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt-0000000015.pt",
        "ckpt-0000000010.pt",
        "ckpt-0000000005.pt",
    ]
    path, state = load_latest(tmp_path)
    assert path.name == "ckpt-0000000015.pt" and state["step"] == 15
    torch.testing.assert_close(state["w"], torch.full((4,), 15.0))
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_keeps_only_the_newest(tmp_path: Path) -> None:
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, _state(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt-0000000005.pt",
        "ckpt-0000000004.pt",
    ]


@pytest.mark.parametrize("damage", ["truncate", "flip", "header", "empty"])
def test_damaged_newest_falls_back_to_previous(tmp_path: Path, damage: str) -> None:
    save_checkpoint(tmp_path, 1, _state(1))
    newest = save_checkpoint(tmp_path, 2, _state(2))
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        newest.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "header":
        newest.write_bytes(b"X" + data[1:])
    else:
        newest.write_bytes(b"")
    with pytest.raises(CheckpointError):
        read_checkpoint(newest)
    path, state = load_latest(tmp_path)
    assert state["step"] == 1 and path.name == "ckpt-0000000001.pt"


def test_all_corrupt_is_an_error_and_none_is_none(tmp_path: Path) -> None:
    assert load_latest(tmp_path) is None
    save_checkpoint(tmp_path, 1, _state(1)).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="all 1 checkpoints are corrupt"):
        load_latest(tmp_path)


def test_leftover_temporary_file_is_ignored(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 3, _state(3))
    (tmp_path / ".ckpt-0000000004.pt.tmp-123").write_bytes(b"half written")
    assert load_latest(tmp_path)[1]["step"] == 3
