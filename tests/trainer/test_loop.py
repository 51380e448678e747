"""The training loop in one process: learning, reporting, accumulation, resume, early stop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from trainer_fixtures import make_config, tabular, write_spec

from conveyor.ingest.spec import FeatureSpec
from conveyor.trainer.checkpoint import list_checkpoints, load_latest, read_checkpoint
from conveyor.trainer.data import prepare
from conveyor.trainer.errors import TrainerError
from conveyor.trainer.launch import DistEnv
from conveyor.trainer.loop import run_worker


def _train(cfg):
    prepare(cfg)
    return run_worker(cfg, DistEnv(), prepared=True)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_latest(run_dir)[1]["model"]


def test_learns_reports_and_exports(tmp_path: Path, dataset: Path) -> None:
    cfg = make_config(
        tmp_path, dataset, model_repository=str(tmp_path / "repo"), model_name="m", lr=1e-2
    )
    summary = _train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    for rec in lines:  # train and validation side by side, every epoch
        assert {"loss", "auc", "accuracy", "logloss"} <= rec["train"].keys() <= rec["val"].keys()
    assert lines[-1]["train"]["loss"] < lines[0]["train"]["loss"]
    assert summary["best"]["val"]["auc"] > 0.85
    assert lines[0]["train"]["rows"] + lines[0]["val"]["rows"] == 600
    assert summary["exported"] == str(tmp_path / "repo" / "m" / "1")
    metrics = json.loads((tmp_path / "repo" / "m" / "1" / "metrics.json").read_text())
    assert metrics["best_epoch"] == summary["best_epoch"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == summary["steps"]


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_other_tasks_train_and_export(tmp_path: Path, task: str) -> None:
    data = tmp_path / "d.parquet"
    pq.write_table(tabular(400, task=task), data)
    spec = write_spec(tmp_path, tabular(400, task=task), task)
    cfg = make_config(
        tmp_path,
        data,
        spec=str(spec),
        label=None,
        epochs=2,
        lr=3e-3,
        model_repository=str(tmp_path / "repo"),
        model_name=task,
    )
    summary = _train(cfg)
    metric = "accuracy" if task == "multiclass" else "rmse"
    assert summary["metric"] == metric
    first, last = summary["history"][0]["val"], summary["history"][-1]["val"]
    assert last["loss"] < first["loss"]
    assert (tmp_path / "repo" / task / "1" / "model.pt").exists()


def test_accumulation_equals_a_bigger_batch(tmp_path: Path) -> None:
    data = tmp_path / "d.parquet"
    pq.write_table(tabular(640), data, row_group_size=64)
    common = {"val_fraction": 0.0, "dropout": 0.0, "epochs": 2, "shuffle_buffer": 128}
    big = make_config(tmp_path / "a", data, batch_size=32, accumulation=1, **common)
    small = make_config(tmp_path / "b", data, batch_size=16, accumulation=2, **common)
    assert _train(big)["steps"] == _train(small)["steps"] == 40
    for name, w in _weights(Path(big.out)).items():
        torch.testing.assert_close(_weights(Path(small.out))[name], w, atol=1e-5, rtol=1e-4)


def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path: Path, dataset: Path) -> None:
    full = make_config(tmp_path / "full", dataset, checkpoint_every=4, keep_checkpoints=100)
    _train(full)
    # A run killed after step 6 of epoch 1 (steps per epoch: 15): keep only what it had written.
    crashed = Path(tmp_path / "crashed" / "run")
    shutil.copytree(full.out, crashed)
    for path in list_checkpoints(crashed):
        if int(path.stem.split("-")[1]) > 21:
            path.unlink()
    (crashed / "summary.json").unlink()
    kept = read_checkpoint(list_checkpoints(crashed)[0])["state"]
    assert (kept["epoch"], kept["micro"]) == (1, 5)  # mid-epoch, not at a boundary
    resumed = make_config(tmp_path / "crashed", dataset, checkpoint_every=4, resume=True)
    summary = _train(resumed)
    for name, w in _weights(Path(full.out)).items():
        torch.testing.assert_close(_weights(crashed)[name], w, atol=1e-6, rtol=1e-6)
    history = json.loads((Path(full.out) / "summary.json").read_text())["history"]
    for a, b in zip(summary["history"], history, strict=True):
        assert a["train"] == pytest.approx(b["train"]) and a["val"] == pytest.approx(b["val"])


def test_early_stopping_and_best_weights(tmp_path: Path, dataset: Path) -> None:
    cfg = make_config(tmp_path, dataset, lr=1e-9, warmup_steps=0, epochs=6, patience=2)
    summary = _train(cfg)
    assert summary["stopped_early"] and summary["epochs"] == 3
    assert summary["best_epoch"] == 0


def test_patience_running_out_on_the_last_epoch_is_no_early_stop(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conveyor.trainer.cli import _print_summary

    # lr 1e-9: the weights do not move, so epochs 1 and 2 are no better than epoch 0 and the
    # patience of 2 runs out exactly when the 3 requested epochs are done.
    common = {"lr": 1e-9, "warmup_steps": 0, "patience": 2}
    summary = _train(make_config(tmp_path, dataset, epochs=3, **common))
    assert summary["epochs"] == 3 and summary["best_epoch"] == 0
    assert not summary["stopped_early"]  # it said "stopped early yes"
    _print_summary(summary)
    assert "stopped early" not in capsys.readouterr().out
    # Resumed with more epochs it stays stopped, as a 5-epoch run would have stopped after
    # 3: that is an early stop.
    again = _train(make_config(tmp_path, dataset, epochs=5, resume=True, **common))
    assert again["epochs"] == 3 and again["stopped_early"]


def test_no_valid_rows_is_an_error_and_nothing_is_exported(tmp_path: Path) -> None:
    # Every row fails validation (NaN in a feature, quarantined by default). It trained on
    # empty batches and published a model.
    bad = tabular(200)
    bad = bad.set_column(1, "x0", pa.array([float("nan")] * 200))
    data = tmp_path / "bad.parquet"
    pq.write_table(bad, data)
    repo = {"model_repository": str(tmp_path / "repo"), "model_name": "m"}
    with pytest.raises(TrainerError, match="no valid rows to train on: all 200 rows"):
        _train(make_config(tmp_path, data, **repo))
    # A spec given with its stats is not profiled again: the epoch finds no rows instead.
    good = tmp_path / "good.parquet"
    pq.write_table(tabular(200), good)
    spec = write_spec(tmp_path, tabular(200))
    prepare(make_config(tmp_path / "first", good, spec=str(spec), label=None))
    given = str(tmp_path / "first" / "run" / "spec.json")  # its stats.json beside it
    cfg = make_config(tmp_path / "second", data, spec=given, label=None, **repo)
    with pytest.raises(TrainerError, match="epoch 0 had no valid training rows"):
        _train(cfg)
    assert not (tmp_path / "repo").exists()


def test_an_undefined_validation_metric_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    from conveyor.trainer.split import holdout_filters

    # Positives only among the training rows: the validation split's AUC is undefined, so
    # early stopping cannot judge an epoch; it said nothing and exported the last one.
    table = tabular(400)
    spec = FeatureSpec.load(write_spec(tmp_path, table))
    train_filter, _ = holdout_filters(spec, table.schema, 0.2)
    train_ids = set(table.filter(train_filter)["id"].to_pylist())
    y = [int(i in train_ids and i % 3 == 0) for i in range(400)]
    data = tmp_path / "one_class_val.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("y"), "y", pa.array(y)), data)
    # Our own handler: earlier tests (CLI runs, libraries' logging.config) may have made
    # the conveyor loggers stop propagating to caplog, or disabled them.
    logger = logging.getLogger("conveyor.trainer")
    said: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    monkeypatch.setattr(logger, "disabled", False)
    monkeypatch.setattr(logger, "level", logging.WARNING)
    logger.addHandler(handler)
    try:
        summary = _train(make_config(tmp_path, data, epochs=2, patience=1))
    finally:
        logger.removeHandler(handler)
    assert summary["best_epoch"] is None and summary["epochs"] == 2
    assert [m for m in said if "validation auc is undefined in epoch 0" in m]


def test_refuses_to_clobber_a_run_without_resume(tmp_path: Path, dataset: Path) -> None:
    cfg = make_config(tmp_path, dataset, epochs=1)
    _train(cfg)
    with pytest.raises(TrainerError, match="pass --resume"):
        _train(cfg)


def test_resuming_a_finished_run_does_not_export_twice(tmp_path: Path, dataset: Path) -> None:
    repo = tmp_path / "repo"
    cfg = make_config(tmp_path, dataset, epochs=1, model_repository=str(repo), model_name="m")
    first = _train(cfg)
    again = _train(
        make_config(
            tmp_path, dataset, epochs=1, resume=True, model_repository=str(repo), model_name="m"
        )
    )
    assert again["exported"] == first["exported"] == str(repo / "m" / "1")
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1"]
    assert again["history"] == first["history"]


@pytest.mark.parametrize("target", ["repository", "name"])
def test_resuming_a_finished_run_exports_to_a_new_target(
    tmp_path: Path, dataset: Path, target: str
) -> None:
    # The resumed run reported the first export (repo/m/1) and wrote nothing to the new
    # target, though the export target applies from the resume point on
    repo = tmp_path / "repo"
    first = _train(
        make_config(tmp_path, dataset, epochs=1, model_repository=str(repo), model_name="m")
    )
    repo2, name2 = (tmp_path / "repo2", "m") if target == "repository" else (repo, "other")
    again = _train(
        make_config(
            tmp_path,
            dataset,
            epochs=1,
            resume=True,
            model_repository=str(repo2),
            model_name=name2,
        )
    )
    assert first["exported"] == str(repo / "m" / "1")
    assert again["exported"] == str(repo2 / name2 / "1")
    assert (repo2 / name2 / "1" / "model.pt").is_file()
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1"]


def test_constant_row_weights_change_nothing(tmp_path: Path) -> None:
    # The loss is normalised by the total weight, so weighting every row by 2 must train
    # exactly as no weights at all: this checks the weighted path's normalisation.
    import pyarrow as pa

    table = tabular(300)
    data = tmp_path / "d.parquet"
    pq.write_table(table.append_column("w", pa.array([2.0] * 300)), data)
    spec = json.loads(write_spec(tmp_path, table).read_text())
    spec["weight"] = "w"
    weighted_spec = tmp_path / "weighted" / "spec.json"
    weighted_spec.parent.mkdir()
    weighted_spec.write_text(json.dumps(spec))
    weighted = make_config(
        tmp_path / "b", data, spec=str(weighted_spec), label=None, epochs=2, dropout=0.0
    )
    spec["ignore"] = ["w"]
    plain_spec = tmp_path / "plain" / "spec.json"
    plain_spec.parent.mkdir()
    plain_spec.write_text(json.dumps({**spec, "weight": None}))
    plain = make_config(
        tmp_path / "a", data, spec=str(plain_spec), label=None, epochs=2, dropout=0.0
    )
    a, b = _train(plain), _train(weighted)
    assert a["history"][-1]["val"] == pytest.approx(b["history"][-1]["val"])
    for name, w in _weights(Path(plain.out)).items():
        torch.testing.assert_close(_weights(Path(weighted.out))[name], w, atol=1e-6, rtol=1e-5)
