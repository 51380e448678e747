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


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TorchScript, the engine's format
def test_dropout_may_change_between_zero_and_not(tmp_path: Path, dataset: Path) -> None:
    # nn.Dropout was added only for dropout > 0, shifting the mlp.N names: a resume with the
    # other kind failed in load_state_dict with a traceback.
    import torch

    repo = tmp_path / "repo"
    common = {"patience": 0, "model_repository": str(repo), "model_name": "m"}
    _train(make_config(tmp_path, dataset, epochs=1, dropout=0.0, **common))
    _train(make_config(tmp_path, dataset, epochs=2, dropout=0.3, resume=True, **common))
    summary = _train(make_config(tmp_path, dataset, epochs=3, dropout=0.0, resume=True, **common))
    assert summary["epochs"] == 3 and summary["exported"] == str(repo / "m" / "3")
    program = torch.jit.load(str(repo / "m" / "3" / "model.pt"))
    numeric = torch.tensor([[0.0, 50.0, 1.0, 7.0], [1.0, 40.0, 1.1, 42.0]])  # x0-x2, shop
    probability, _ = program(numeric, ["red", "blue"])
    assert probability.shape == (2, 1) and torch.isfinite(probability).all()


def test_checkpoints_from_before_dropout_was_always_a_layer_still_resume(
    tmp_path: Path, dataset: Path
) -> None:
    """A checkpoint written with dropout 0 by the earlier layout (no Dropout layers: mlp.0,
    mlp.1, mlp.2, mlp.3 for two hidden layers with layer norm) resumes, with any --dropout."""
    from conveyor.trainer.checkpoint import load_latest, save_checkpoint

    common = {"dropout": 0.0, "layer_norm": True, "patience": 0}
    _train(make_config(tmp_path, dataset, epochs=1, **common))
    path, ckpt = load_latest(tmp_path / "run")
    new_names = list(ckpt["model"])
    old = {1: 1, 3: 2, 4: 3}  # today's mlp index -> the earlier one (2 is the dropout)
    for name in ("model", "best_model"):
        ckpt[name] = {
            (f"mlp.{old[int(k.split('.')[1])]}.{k.split('.', 2)[2]}" if k.startswith("mlp.")
             and int(k.split(".")[1]) in old else k): v
            for k, v in ckpt[name].items()
        }  # fmt: skip
    assert list(ckpt["model"]) != new_names
    del ckpt["mlp_layout"]
    path.unlink()
    save_checkpoint(tmp_path / "run", ckpt["state"]["step"], ckpt)
    summary = _train(make_config(tmp_path, dataset, epochs=2, resume=True, **common))
    assert summary["epochs"] == 2
    summary = _train(
        make_config(tmp_path, dataset, epochs=3, resume=True, **{**common, "dropout": 0.2})
    )
    assert summary["epochs"] == 3


def test_resume_over_changed_data_names_the_source_and_checkpoint(tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    from trainer_fixtures import tabular

    data = tmp_path / "d.parquet"
    pq.write_table(tabular(300), data)
    _train(make_config(tmp_path, data, epochs=1))
    pq.write_table(tabular(400), data)  # rows added since
    with pytest.raises(
        CheckpointError,
        match=r"^--resume: .*d.parquet is not the data checkpoint .*ckpt-\d+.pt was taken over "
        r"\(.*rows is .*\); .*another --out$",
    ):
        _train(make_config(tmp_path, data, epochs=2, resume=True))


def test_a_checkpoint_of_another_model_is_a_checkpoint_error(tmp_path: Path, dataset: Path) -> None:
    from conveyor.trainer.checkpoint import load_latest, save_checkpoint

    _train(make_config(tmp_path, dataset, epochs=1))
    path, ckpt = load_latest(tmp_path / "run")
    name = next(k for k in ckpt["model"] if k.startswith("mlp.0."))
    ckpt["model"]["mlp.9." + name[len("mlp.0.") :]] = ckpt["model"].pop(name)
    path.unlink()
    save_checkpoint(tmp_path / "run", ckpt["state"]["step"], ckpt)
    with pytest.raises(CheckpointError, match=r"holds another model .*mlp\.0\."):
        _train(make_config(tmp_path, dataset, epochs=2, resume=True))
