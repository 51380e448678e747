"""``--resume`` with changed options: more epochs continue; order- and shape-changing options
must match the checkpoint, and a mismatch names the option and both values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainer_fixtures import make_config

from conveyor.trainer.checkpoint import list_checkpoints
from conveyor.trainer.data import prepare
from conveyor.trainer.errors import CheckpointError
from conveyor.trainer.launch import DistEnv
from conveyor.trainer.loop import check_resume, run_worker


def _train(cfg):
    prepare(cfg)
    return run_worker(cfg, DistEnv(), prepared=True)


def test_more_epochs_continue_a_finished_run(tmp_path: Path, dataset: Path) -> None:
    repo = tmp_path / "repo"
    common = {"patience": 0, "model_repository": str(repo), "model_name": "m"}
    first = _train(make_config(tmp_path, dataset, epochs=2, **common))
    again = _train(make_config(tmp_path, dataset, epochs=3, resume=True, **common))
    # It used to train nothing and report the earlier export under the new config.
    assert [h["epoch"] for h in again["history"]] == [0, 1, 2]
    assert again["history"][:2] == first["history"]
    assert again["steps"] == first["steps"] * 3 // 2
    assert again["exported"] == str(repo / "m" / "2") != first["exported"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["config"]["epochs"] == 3
    # Fewer epochs than the run has trained is refused, naming both numbers.
    with pytest.raises(CheckpointError, match=r"--epochs is 2 but checkpoint .* begun 3 epochs"):
        _train(make_config(tmp_path, dataset, epochs=2, resume=True, **common))
    with pytest.raises(CheckpointError, match=r"--epochs is 2 but checkpoint .* begun 3 epochs"):
        check_resume(make_config(tmp_path, dataset, epochs=2, resume=True, **common), 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 64}, r"--batch-size is 64 but checkpoint .* written with 32;"),
        ({"seed": 7}, r"--seed is 7 but checkpoint .* written with 0;"),
        ({"hidden": (8,)}, r"--hidden is 8 but checkpoint .* written with 16 8;"),
        ({"lr": 0.5}, r"--lr is 0.5 but checkpoint .* written with 0.001;"),
    ],
)
def test_order_or_shape_options_must_match(
    tmp_path: Path, dataset: Path, change: dict, message: str
) -> None:
    _train(make_config(tmp_path, dataset, epochs=1, checkpoint_every=4))
    assert list_checkpoints(tmp_path / "run")
    with pytest.raises(CheckpointError, match=message):
        _train(make_config(tmp_path, dataset, epochs=1, checkpoint_every=4, resume=True, **change))
    # The process that starts the workers checks the same, before it starts them.
    with pytest.raises(CheckpointError, match=message):
        check_resume(make_config(tmp_path, dataset, epochs=1, resume=True, **change), 1)
    with pytest.raises(CheckpointError, match=r"--nproc \(world size\) is 2 .* written by 1"):
        check_resume(make_config(tmp_path, dataset, epochs=1, resume=True), 2)
    check_resume(make_config(tmp_path, dataset, epochs=1, resume=True, patience=5), 1)
    # Options that only act from now on may change; the default metric given explicitly is
    # no change either.
    _train(
        make_config(
            tmp_path, dataset, epochs=1, checkpoint_every=9, patience=5, metric="auc", resume=True
        )
    )
